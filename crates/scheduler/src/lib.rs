//! kubox's scheduler: an API client that watches pods and nodes (kube-rs
//! watchers, keeping only what it reads of each), picks a node for each
//! pod by upstream's filters and scores, and binds it through
//! `pods/binding`; pods that fit nowhere get upstream's FailedScheduling
//! event and PodScheduled condition.

mod affinity;
mod cache;
mod domains;
mod filters;
mod metrics;

pub use metrics::Metrics;
mod node_info;
mod preemption;
mod queue;
mod resources;
mod scores;
mod slim;
mod spread;
mod volumes;
mod workloads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kubox_client::events::{Recorder, Type, pod_reference};
use rand::Rng;

use crate::cache::Cache;
pub use crate::filters::{node_fits, tolerates};
use crate::metrics::Outcome;
use crate::node_info::{NodeInfo, bound_node, occupies_node};
use crate::queue::{Key, Queue};
pub use crate::volumes::{
    BIND_COMPLETED, SELECTED_NODE, bound_to, capacity, class_of, is_bound, may_take, request,
    volume_class,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// A running scheduler; dropping it stops it.
pub struct Scheduler {
    _tasks: kubox_client::Tasks,
}

/// Why a pod fits nowhere, and where it may once victims are evicted.
struct Unschedulable {
    message: String,
    preempt: Option<preemption::Candidate>,
}

struct Context {
    client: kube::Client,
    /// For affinity terms' namespaceSelector.
    namespaces: Store<Namespace>,
    /// For the system default spread constraints.
    workloads: workloads::Workloads,
    /// For preemption, which breaks as few of them as it can.
    budgets: Store<PodDisruptionBudget>,
    volumes: volumes::Volumes,
    /// What the watches saw, for the scheduling task that owns the cache:
    /// a watch never waits for a decision to finish.
    updates: mpsc::UnboundedSender<Update>,
    queue: Arc<Queue>,
    metrics: metrics::Metrics,
    events: Recorder,
    /// Each pending pod as last seen: what its scheduling cycle decides on,
    /// and what a new version is compared with, so that status-only updates
    /// (our own condition patches among them) do not retry it. Bound pods
    /// are in the cache only: no pod is held twice.
    pending: Mutex<HashMap<Key, Arc<Pod>>>,
    /// The pods whose PreBind waits for their claims to be bound: what
    /// cancels the wait once the pod is deleted (or bound by another), as
    /// upstream's volume binder gives up on a pod that no longer exists.
    prebinding: Mutex<HashMap<Key, CancellationToken>>,
    /// Where the next pod's filtering starts, so that successive pods are
    /// tried against different nodes when not all are looked at.
    next_start: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(pod: &Pod) -> Key {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn is_pending_for_us(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    bound_node(pod).is_none()
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

/// Whether a pod asks to be scheduled as it did: compared field by field,
/// which costs less than serialising each pending pod's every event.
fn same_request(a: &Pod, b: &Pod) -> bool {
    a.spec == b.spec && a.metadata.labels == b.metadata.labels
}

/// How many feasible nodes to look for before scoring, as upstream's
/// adaptive percentageOfNodesToScore: all of a small cluster, a shrinking
/// share of a large one, never fewer than 100.
fn feasible_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(MIN)
}

impl Scheduler {
    /// Starts scheduling, recording into `metrics`.
    pub fn start(client: kube::Client, metrics: Metrics) -> Self {
        let queue = Arc::new(Queue::default());
        metrics.follow(&queue);
        // Nothing waits on these stores' changes: they are read per pod.
        use kubox_client::follow;
        let (namespaces, namespace_events) = follow(client.clone(), Arc::default());
        let (services, service_events) = follow(client.clone(), Arc::default());
        let (replication_controllers, rc_events) = follow(client.clone(), Arc::default());
        let (replica_sets, rs_events) = follow(client.clone(), Arc::default());
        let (stateful_sets, statefulset_events) = follow(client.clone(), Arc::default());
        let (budgets, budget_events) = follow(client.clone(), Arc::default());
        let (claims, claim_events) = volumes::follow(client.clone(), slim::claim, queue.clone());
        let (pvs, pv_events) = volumes::follow(client.clone(), slim::volume, queue.clone());
        let (classes, class_events) = volumes::follow(client.clone(), slim::class, queue.clone());
        let (updates, mut updates_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Context {
            namespaces,
            budgets,
            volumes: volumes::Volumes::new(claims, pvs, classes),
            workloads: workloads::Workloads {
                services,
                replication_controllers,
                replica_sets,
                stateful_sets,
            },
            events: Recorder::new(client.clone(), DEFAULT_SCHEDULER, None),
            client: client.clone(),
            updates,
            queue,
            metrics,
            pending: Mutex::default(),
            prebinding: Mutex::default(),
            next_start: AtomicUsize::new(0),
        });
        let (nodes_listed, mut nodes_ready) = tokio::sync::watch::channel(false);
        let (pods_listed, mut pods_ready) = tokio::sync::watch::channel(false);
        let pod_events = {
            let ctx = ctx.clone();
            let stream = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .modify(slim::pod);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                            ctx.on_pod(pod)
                        }
                        Ok(watcher::Event::Delete(pod)) => {
                            let k = key(&pod);
                            ctx.update(Update::PodGone(k.clone()));
                            ctx.forget(&k);
                            ctx.queue.move_all_to_active();
                        }
                        Ok(watcher::Event::InitDone) => {
                            let _ = pods_listed.send(true);
                        }
                        Ok(watcher::Event::Init) => {}
                        Err(e) => tracing::warn!("watching pods: {e}"),
                    }
                }
            })
        };
        let node_events = {
            let ctx = ctx.clone();
            let stream = watcher(Api::<Node>::all(client), watcher::Config::default())
                .default_backoff()
                .modify(slim::node);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                            ctx.update(Update::Node(Arc::new(node)));
                            ctx.queue.move_all_to_active();
                        }
                        Ok(watcher::Event::Delete(node)) => {
                            ctx.update(Update::NodeGone(node.name_any()));
                            ctx.queue.move_all_to_active();
                        }
                        Ok(watcher::Event::InitDone) => {
                            let _ = nodes_listed.send(true);
                            ctx.queue.move_all_to_active();
                        }
                        Ok(watcher::Event::Init) => {}
                        Err(e) => tracing::warn!("watching nodes: {e}"),
                    }
                }
            })
        };
        let scheduling = tokio::spawn(async move {
            let _ = pods_ready.wait_for(|listed| *listed).await;
            let _ = ctx.namespaces.wait_until_ready().await;
            let w = &ctx.workloads;
            let _ = w.services.wait_until_ready().await;
            let _ = w.replication_controllers.wait_until_ready().await;
            let _ = w.replica_sets.wait_until_ready().await;
            let _ = w.stateful_sets.wait_until_ready().await;
            let _ = ctx.budgets.wait_until_ready().await;
            let v = &ctx.volumes;
            let _ = v.claims.wait_until_ready().await;
            let _ = v.volumes.wait_until_ready().await;
            let _ = v.classes.wait_until_ready().await;
            let _ = nodes_ready.wait_for(|listed| *listed).await;
            let mut cache = Cache::default();
            loop {
                tokio::select! {
                    Some(update) = updates_rx.recv() => update.apply(&mut cache),
                    key = ctx.queue.pop() => {
                        // Everything the watches saw before the pod was queued.
                        while let Ok(update) = updates_rx.try_recv() {
                            update.apply(&mut cache);
                        }
                        ctx.schedule_one(&mut cache, &key).await;
                    }
                }
            }
        });
        Self {
            _tasks: kubox_client::Tasks::new(vec![
                pod_events,
                node_events,
                namespace_events,
                service_events,
                rc_events,
                rs_events,
                statefulset_events,
                budget_events,
                claim_events,
                pv_events,
                class_events,
                scheduling,
            ]),
        }
    }
}

/// What the binding cycle of one pod carries over from its scheduling cycle.
struct BindingCycle {
    key: Key,
    pod: Arc<Pod>,
    chosen: String,
    bindings: Vec<volumes::Binding>,
    /// Cancelled when the pod is deleted while PreBind waits.
    cancel: CancellationToken,
    started: Instant,
}

/// A change the cache is to take in.
enum Update {
    Pod(Key, Arc<Pod>),
    PodGone(Key),
    Node(Arc<Node>),
    NodeGone(String),
    /// A pod assumed on a node could not be bound there.
    BindingFailed(Key),
}

impl Update {
    fn apply(self, cache: &mut Cache) {
        match self {
            Self::Pod(key, pod) => cache.set_pod(key, pod),
            Self::PodGone(key) => cache.remove_pod(&key),
            Self::Node(node) => cache.set_node(node),
            Self::NodeGone(name) => cache.remove_node(&name),
            Self::BindingFailed(key) => cache.forget_assumed(&key),
        }
    }
}

impl Context {
    fn update(&self, update: Update) {
        // Only a stopped scheduling task drops the receiver.
        let _ = self.updates.send(update);
    }

    fn on_pod(&self, pod: Pod) {
        let k = key(&pod);
        let pending = is_pending_for_us(&pod);
        let freed = !pending && !occupies_node(&pod) && bound_node(&pod).is_some();
        let priority = priority(&pod);
        let pod = Arc::new(pod);
        self.update(Update::Pod(k.clone(), pod.clone()));
        if !pending {
            self.forget(&k);
            if freed {
                // A finished pod freed its node.
                self.queue.move_all_to_active();
            }
            return;
        };
        let changed = lock(&self.pending)
            .insert(k.clone(), pod.clone())
            .is_none_or(|old| !same_request(&old, &pod));
        if changed {
            self.queue.add(k, priority);
        }
    }

    fn forget(&self, key: &str) {
        self.queue.forget(key);
        lock(&self.pending).remove(key);
        if let Some(waiting) = lock(&self.prebinding).remove(key) {
            waiting.cancel();
        }
    }

    /// Runs the filters over the nodes, as many as needed to find enough
    /// feasible ones, then scores those: the chosen node's name, or why none
    /// fits and whom to preempt for it; with what binds the pod's claims there.
    fn decide(
        &self,
        pod: &Pod,
        cache: &mut Cache,
    ) -> Result<(String, Vec<volumes::Binding>), Unschedulable> {
        let total = cache.len();
        if total == 0 {
            return Err(Unschedulable {
                message: "no nodes available to schedule pods".to_owned(),
                preempt: None,
            });
        }
        let claims = volumes::State::new(pod, &self.volumes).map_err(|reason| Unschedulable {
            message: filters::pre_filter_error(total, &reason),
            preempt: None,
        })?;
        let namespaces = affinity::State::needed(pod, cache)
            .then(|| affinity::namespace_labels(&self.namespaces.state()));
        let workload_pods = self.workloads.selector(pod);
        let mut queries = spread::State::queries(pod, workload_pods.as_ref());
        if let Some(namespaces) = &namespaces {
            queries.extend(affinity::State::queries(pod, namespaces));
        }
        cache.prepare(&queries);
        let cache = &*cache;
        let pre = filters::PreFilter {
            affinity: namespaces.map(|namespaces| affinity::State::new(pod, cache, &namespaces)),
            spread: spread::State::new(pod, cache, workload_pods.as_ref()),
            volumes: claims,
            ..filters::PreFilter::new(pod)
        };
        let want = feasible_to_find(total);
        let start = self.next_start.load(Ordering::Relaxed) % total;
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut rejected = Vec::new();
        let mut visited = 0;
        let (before, after) = cache.nodes_from(start);
        for info in after.chain(before) {
            visited += 1;
            match filters::filter(pod, &pre, info) {
                Ok(()) => {
                    feasible.push(info);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(r) => rejected.push((info, r)),
            }
        }
        self.next_start
            .store((start + visited) % total, Ordering::Relaxed);
        if feasible.is_empty() {
            let preempt = preemption::eligible(pod)
                .then(|| {
                    let budgets = preemption::Budgets::new(&self.budgets.state());
                    preemption::find(pod, &pre, &rejected, &budgets)
                })
                .flatten();
            let rejections: Vec<_> = rejected.into_iter().map(|(_, r)| r).collect();
            return Err(Unschedulable {
                message: filters::fit_error(total, &rejections, preempt.is_some()),
                preempt,
            });
        }
        let scores = scores::score(pod, &pre, &feasible, &cache.image_spread());
        let best = scores.iter().copied().max().unwrap_or(0);
        let top: Vec<&NodeInfo> = feasible
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(n, _)| *n)
            .collect();
        let chosen = top[rand::rng().random_range(0..top.len())];
        // The filter just found them on this node.
        let bindings = pre
            .volumes
            .as_ref()
            .and_then(|v| v.find(chosen).ok())
            .unwrap_or_default();
        Ok((chosen.name().to_owned(), bindings))
    }

    async fn schedule_one(self: &Arc<Self>, cache: &mut Cache, key: &str) {
        let started = Instant::now();
        let Some(pod) = lock(&self.pending).get(key).cloned() else {
            self.forget(key);
            return;
        };
        let decision = self.decide(&pod, cache);
        let (chosen, bindings) = match decision {
            Ok(decided) => decided,
            Err(Unschedulable { message, preempt }) => {
                let nominated = preempt.as_ref().map(|c| c.node.as_str());
                self.unschedulable(&pod, "Unschedulable", message, nominated)
                    .await;
                if let Some(candidate) = &preempt {
                    self.preempt(&pod, candidate).await;
                }
                self.metrics.attempt(Outcome::Unschedulable, started);
                self.queue.unschedulable(key.to_owned(), priority(&pod));
                return;
            }
        };
        cache.assume(key.to_owned(), chosen.clone(), pod.clone());
        // Registered before the check below, so that a delete after it
        // finds the wait to cancel.
        let cancel = CancellationToken::new();
        if !bindings.is_empty() {
            lock(&self.prebinding).insert(key.to_owned(), cancel.clone());
        }
        // Deleted while we decided: its delete event may have come and gone.
        if !lock(&self.pending).contains_key(key) {
            cache.forget_assumed(key);
            self.forget(key);
            return;
        }
        self.volumes.assume(&bindings);
        // The binding cycle runs on its own, as upstream's: the next pod's
        // scheduling cycle need not wait for this pod's API round trip.
        let cycle = BindingCycle {
            key: key.to_owned(),
            pod,
            chosen,
            bindings,
            cancel,
            started,
        };
        tokio::spawn(self.clone().binding_cycle(cycle));
    }

    async fn binding_cycle(self: Arc<Self>, cycle: BindingCycle) {
        let _running = self.metrics.binding();
        let BindingCycle {
            key,
            pod,
            chosen,
            bindings,
            cancel,
            started,
        } = cycle;
        let key = key.as_str();
        if !bindings.is_empty() {
            let bound = tokio::select! {
                bound = self.volumes.bind(&self.client, &bindings, &chosen) => Some(bound),
                () = cancel.cancelled() => None,
            };
            lock(&self.prebinding).remove(key);
            self.volumes.forget(&bindings);
            let Some(bound) = bound else {
                // The pod is gone: nothing to bind, retry or report.
                self.update(Update::BindingFailed(key.to_owned()));
                return;
            };
            if let Err(e) = bound {
                self.update(Update::BindingFailed(key.to_owned()));
                self.metrics.attempt(Outcome::Error, started);
                let message = format!("running PreBind plugin \"VolumeBinding\": {e}");
                self.unschedulable(&pod, "SchedulerError", message, None)
                    .await;
                self.queue.retry(key.to_owned(), priority(&pod));
                return;
            }
        }
        match self.bind(&pod, &chosen).await {
            Ok(()) => {
                self.metrics.attempt(Outcome::Scheduled, started);
                self.forget(key);
                self.events.record(
                    pod_reference(&pod, None),
                    Type::Normal,
                    "Scheduled",
                    format!("Successfully assigned {key} to {chosen}"),
                );
            }
            Err(e) => {
                self.update(Update::BindingFailed(key.to_owned()));
                match e {
                    // Bound meanwhile, or gone: nothing left to do.
                    kube::Error::Api(s) if s.code == 409 || s.code == 404 => self.forget(key),
                    e => {
                        self.metrics.attempt(Outcome::Error, started);
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

    /// Evicts the victims for `pod`, each told why with an event, as
    /// upstream's preemption does (their graceful deletion frees the node).
    async fn preempt(&self, pod: &Pod, candidate: &preemption::Candidate) {
        for (_, victim) in &candidate.victims {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &victim.namespace().unwrap_or_default());
            let params = kube::api::DeleteParams {
                preconditions: victim.uid().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&victim.name_any(), &params).await {
                Ok(_) => self.events.record(
                    pod_reference(victim, None),
                    Type::Normal,
                    "Preempted",
                    format!(
                        "Preempted by pod {} on node {}",
                        pod.uid().unwrap_or_default(),
                        candidate.node
                    ),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(pod = %key(victim), "preempting: {e}"),
            }
        }
    }

    /// Tells the user why, as upstream does: an event, and the PodScheduled
    /// condition (written only when its message changes), with the node the
    /// pod waits for when it preempted.
    async fn unschedulable(
        &self,
        pod: &Pod,
        reason: &str,
        message: String,
        nominated: Option<&str>,
    ) {
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
        if nominated.is_none()
            && current.is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message.as_str())
            })
        {
            return;
        }
        let condition = serde_json::json!({
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now()),
        });
        let mut patch = serde_json::json!({"status": {"conditions": [condition]}});
        if let Some(node) = nominated {
            patch["status"]["nominatedNodeName"] = node.into();
        }
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

    #[test]
    fn large_clusters_are_filtered_in_part() {
        assert_eq!(feasible_to_find(50), 50);
        assert_eq!(feasible_to_find(150), 100);
        assert_eq!(feasible_to_find(1000), 420);
        assert_eq!(feasible_to_find(5000), 500);
    }
}
