//! Events as kubelet and kube-scheduler record them (core/v1, shown by
//! `kubectl describe` and `kubectl get events`).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// Who records: upstream's component name (`kubelet`, `default-scheduler`)
/// and, for node components, the node.
///
/// As client-go's recorder (its EventCorrelator's logger), an event equal
/// to one recorded before (same object, type, reason, message and source)
/// is not created again: the first one's `count` goes up and its
/// `lastTimestamp` moves, so `kubectl get events` shows `(x3 over 2m)`.
/// Events are written in order by one task per recorder.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Event>>>,
}

/// What makes two events the same, as client-go's `getEventKey`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    api_version: Option<String>,
    field_path: Option<String>,
    type_: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

impl Key {
    fn of(e: &Event) -> Self {
        let o = &e.involved_object;
        Self {
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
            api_version: o.api_version.clone(),
            field_path: o.field_path.clone(),
            type_: e.type_.clone(),
            reason: e.reason.clone(),
            message: e.message.clone(),
        }
    }
}

/// client-go's cache of events seen (an LRU of this size; here it starts
/// over when full).
const SEEN_MAX: usize = 4096;

/// The event already stored for a key: its name and count.
struct Seen {
    name: String,
    count: i32,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Self {
        Self {
            client,
            component: component.to_owned(),
            host: host.map(str::to_owned),
            queue: Arc::default(),
        }
    }

    /// Records an event about `object` in the background; failing to record
    /// is logged, never fatal.
    pub fn record(&self, object: ObjectReference, type_: Type, reason: &str, message: String) {
        let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    object.name.as_deref().unwrap_or_default(),
                    now.0.as_nanosecond()
                )),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(format!("{type_:?}")),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_events(self.client.clone(), rx));
            tx
        });
        let _ = queue.send(event);
    }
}

/// Writes each event: a new one is created, a repeat patches the first.
async fn write_events(client: kube::Client, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut seen: HashMap<Key, Seen> = HashMap::new();
    while let Some(mut event) = events.recv().await {
        let key = Key::of(&event);
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        if let Some(s) = seen.get_mut(&key) {
            let patch = serde_json::json!({
                "count": s.count + 1,
                "lastTimestamp": event.last_timestamp,
                "message": event.message,
            });
            match api
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    s.count += 1;
                    continue;
                }
                // Expired (the event TTL) or deleted: record it afresh.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    tracing::debug!("updating an event: {e}");
                    continue;
                }
            }
        }
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        let name = event.metadata.name.clone().unwrap_or_default();
        event.count = Some(1);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                seen.insert(key, Seen { name, count: 1 });
            }
            Err(e) => tracing::debug!("recording an event: {e}"),
        }
    }
}

/// A reference to a pod, optionally to one of its containers by field path.
pub fn pod_reference(
    pod: &k8s_openapi::api::core::v1::Pod,
    field_path: Option<String>,
) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}
