//! Events as kubelet and kube-scheduler record them (core/v1, shown by
//! `kubectl describe` and `kubectl get events`).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// Who records: upstream's component name (`kubelet`, `default-scheduler`)
/// and, for node components, the node.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Self {
        Self {
            client,
            component: component.to_owned(),
            host: host.map(str::to_owned),
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
                namespace: Some(ns.clone()),
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
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::debug!("recording an event: {e}");
            }
        });
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
