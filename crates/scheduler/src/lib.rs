//! kubox's scheduler: an API client that watches pending pods and nodes
//! (kube-rs reflectors), picks a node for each pod by upstream's filters and
//! scores, and binds it through `pods/binding`; pods that fit nowhere get
//! upstream's FailedScheduling event and PodScheduled condition.

mod filters;
mod node_info;
mod queue;
mod resources;
mod scores;

use std::collections::{HashMap, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kubox_client::events::{Recorder, Type, pod_reference};
use rand::Rng;

pub use crate::filters::{node_fits, tolerates};
use crate::node_info::{NodeInfo, occupies_node};
use crate::queue::{Key, Queue};

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// A running scheduler; dropping it stops it.
pub struct Scheduler {
    _tasks: kubox_client::Tasks,
}

struct Context {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    queue: Queue,
    events: Recorder,
    /// Pods bound by this scheduler that the pod store does not show bound yet.
    assumed: Mutex<HashMap<Key, (String, Arc<Pod>)>>,
    /// What each pending pod looked like when queued, so status-only updates
    /// (our own condition patches among them) do not retry it.
    seen: Mutex<HashMap<Key, u64>>,
}

fn key(pod: &Pod) -> Key {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn is_pending_for_us(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(DEFAULT_SCHEDULER)
            == DEFAULT_SCHEDULER
        && pod.metadata.deletion_timestamp.is_none()
        && spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_none_or(Vec::is_empty)
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn fingerprint(pod: &Pod) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(&(&pod.spec, &pod.metadata.labels, &pod.metadata.annotations))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

impl Scheduler {
    pub fn start(client: kube::Client) -> Self {
        let (pods, pods_writer) = reflector::store::<Pod>();
        let (nodes, nodes_writer) = reflector::store::<Node>();
        let ctx = Arc::new(Context {
            events: Recorder::new(client.clone(), DEFAULT_SCHEDULER, None),
            client: client.clone(),
            pods,
            nodes,
            queue: Queue::default(),
            assumed: Mutex::default(),
            seen: Mutex::default(),
        });
        let pod_events = {
            let ctx = ctx.clone();
            let stream = reflector::reflector(
                pods_writer,
                watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
            );
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream.default_backoff());
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                            ctx.on_pod(&pod)
                        }
                        Ok(watcher::Event::Delete(pod)) => {
                            ctx.forget(&key(&pod));
                            ctx.queue.move_all_to_active();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("watching pods: {e}"),
                    }
                }
            })
        };
        let node_events = {
            let ctx = ctx.clone();
            let stream = reflector::reflector(
                nodes_writer,
                watcher(Api::<Node>::all(client), watcher::Config::default()),
            );
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream.default_backoff());
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(
                            watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitDone,
                        ) => {
                            ctx.queue.move_all_to_active();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("watching nodes: {e}"),
                    }
                }
            })
        };
        let scheduling = tokio::spawn(async move {
            let _ = ctx.pods.wait_until_ready().await;
            let _ = ctx.nodes.wait_until_ready().await;
            loop {
                let key = ctx.queue.pop().await;
                ctx.schedule_one(&key).await;
            }
        });
        Self {
            _tasks: kubox_client::Tasks::new(vec![pod_events, node_events, scheduling]),
        }
    }
}

/// Keeps the assumptions about pods the store still shows pending: a pod
/// seen bound is counted from the store, and one already gone (deleted,
/// even before its binding was seen) must not hold its node's room.
fn prune_assumed(assumed: &mut HashMap<Key, (String, Arc<Pod>)>, pods: &[Arc<Pod>]) {
    let pending: std::collections::HashSet<Key> = pods
        .iter()
        .filter(|p| is_pending_for_us(p))
        .map(|p| key(p))
        .collect();
    assumed.retain(|k, _| pending.contains(k));
}

impl Context {
    fn on_pod(&self, pod: &Pod) {
        let k = key(pod);
        if !is_pending_for_us(pod) {
            self.forget(&k);
            if !occupies_node(pod)
                && pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some()
            {
                // A finished pod freed its node.
                self.queue.move_all_to_active();
            }
            return;
        }
        let fp = fingerprint(pod);
        let changed = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k.clone(), fp)
            != Some(fp);
        if changed {
            self.queue.add(k, priority(pod));
        }
    }

    fn forget(&self, key: &str) {
        self.queue.forget(key);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Node infos from the stores, with the pods this scheduler has bound
    /// but not yet seen bound.
    fn snapshot(&self) -> Vec<NodeInfo> {
        let mut infos: HashMap<String, NodeInfo> = self
            .nodes
            .state()
            .into_iter()
            .map(|n| (n.name_any(), NodeInfo::new(n)))
            .collect();
        let pods = self.pods.state();
        let mut assumed = self.assumed.lock().unwrap_or_else(|e| e.into_inner());
        prune_assumed(&mut assumed, &pods);
        for pod in &pods {
            if !occupies_node(pod) {
                continue;
            }
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if let Some(info) = infos.get_mut(&node) {
                info.add(pod);
            }
        }
        for (node, pod) in assumed.values() {
            if let Some(info) = infos.get_mut(node) {
                info.add(pod);
            }
        }
        let mut infos: Vec<NodeInfo> = infos.into_values().collect();
        infos.sort_by(|a, b| a.name().cmp(b.name()));
        infos
    }

    async fn schedule_one(&self, key: &str) {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(pod) = self.pods.get(&ObjectRef::new(name).within(ns)) else {
            self.forget(key);
            return;
        };
        if !is_pending_for_us(&pod) {
            self.forget(key);
            return;
        }
        let nodes = self.snapshot();
        let requests = resources::pod_requests(&pod);
        let mut feasible = Vec::new();
        let mut rejections = Vec::new();
        for info in &nodes {
            match filters::filter(&pod, &requests, info) {
                Ok(()) => feasible.push(info),
                Err(r) => rejections.push(r),
            }
        }
        if feasible.is_empty() {
            let message = if nodes.is_empty() {
                "no nodes available to schedule pods".to_owned()
            } else {
                filters::fit_error(nodes.len(), &rejections)
            };
            self.unschedulable(&pod, message).await;
            self.queue.unschedulable(key.to_owned(), priority(&pod));
            return;
        }
        let scores = scores::score(&pod, &feasible);
        let best = scores.iter().copied().max().unwrap_or(0);
        let top: Vec<&NodeInfo> = feasible
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(n, _)| *n)
            .collect();
        let chosen = top[rand::rng().random_range(0..top.len())]
            .name()
            .to_owned();
        self.assumed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), (chosen.clone(), pod.clone()));
        match self.bind(&pod, &chosen).await {
            Ok(()) => {
                self.forget(key);
                self.events.record(
                    pod_reference(&pod, None),
                    Type::Normal,
                    "Scheduled",
                    format!("Successfully assigned {key} to {chosen}"),
                );
            }
            Err(e) => {
                self.assumed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                match e {
                    // Bound meanwhile, or gone: nothing left to do.
                    kube::Error::Api(s) if s.code == 409 || s.code == 404 => self.forget(key),
                    e => {
                        tracing::warn!(pod = key, "binding to {chosen}: {e}");
                        self.queue.retry(key.to_owned(), priority(&pod));
                    }
                }
            }
        }
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
        let ns = pod.namespace().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name_any()),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                ..Default::default()
            },
        };
        Api::<Pod>::namespaced(self.client.clone(), &ns)
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await
            .map(drop)
    }

    /// Tells the user why, as upstream does: an event, and the PodScheduled
    /// condition (written only when its message changes).
    async fn unschedulable(&self, pod: &Pod, message: String) {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        self.events.record(
            pod_reference(pod, None),
            Type::Warning,
            "FailedScheduling",
            message.clone(),
        );
        if current
            .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message.as_str()))
        {
            return;
        }
        let condition = serde_json::json!({
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now()),
        });
        let patch = serde_json::json!({"status": {"conditions": [condition]}});
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::warn!(pod = %key(pod), "reporting unschedulable: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn assumptions_end_when_the_pod_is_seen_bound_or_is_gone() {
        let mut assumed: HashMap<Key, (String, Arc<Pod>)> = ["lagging", "bound", "deleted"]
            .iter()
            .map(|n| (format!("default/{n}"), ("node".to_owned(), pod(n, None))))
            .collect();
        let store = [pod("lagging", None), pod("bound", Some("node"))];
        prune_assumed(&mut assumed, &store);
        assert_eq!(assumed.keys().collect::<Vec<_>>(), ["default/lagging"]);
    }
}
