//! The node lifecycle controller (upstream's node-lifecycle-controller and
//! taint-eviction-controller): a node whose kubelet has not renewed its
//! Lease in kube-node-lease, nor posted status, for the grace period (40 s
//! by default) gets its conditions set to Unknown and its pods marked not
//! ready; a node that is not ready gets the `node.kubernetes.io/unreachable`
//! (or `not-ready`) taints, NoSchedule and NoExecute, taken off again when
//! it is back. A pod on a node with a NoExecute taint it does not tolerate
//! is deleted, and one that tolerates it for `tolerationSeconds` (300 s by
//! the DefaultTolerationSeconds admission) is deleted that long after the
//! taint was added, so its controller makes it again elsewhere.
//!
//! Silence is timed on this controller's clock, as upstream's probe
//! timestamps: a node is heard when what it reported (its Lease's renewTime,
//! its Ready heartbeat) changes, whatever time its own clock wrote there, so
//! nodes whose clocks are off are judged by when they last spoke.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type, pod_reference};
use serde_json::json;

use crate::{Context, Error, is_not_found};

pub const COMPONENT: &str = "node-controller";

/// How often node health is checked (upstream's --node-monitor-period).
const MONITOR_PERIOD: Duration = Duration::from_secs(5);

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The conditions a kubelet posts, set to Unknown when it goes quiet.
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    grace: SignedDuration,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
}

pub async fn run(ctx: Arc<Context>) {
    let nodes = ctx.informers.get::<Node>();
    let leases = ctx.informers.get::<Lease>();
    let pods = ctx.informers.get::<Pod>();
    nodes.synced().await;
    leases.synced().await;
    pods.synced().await;
    let shared = Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        grace: SignedDuration::try_from(ctx.config.node_monitor_grace_period)
            .unwrap_or(SignedDuration::from_secs(40)),
        nodes: nodes.store(),
        leases: leases.store(),
        pods: pods.store(),
    };
    let mut tick = tokio::time::interval(MONITOR_PERIOD);
    let mut heard = Heard::default();
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in shared.pods.state() {
            if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                by_node.entry(n).or_default().push(pod);
            }
        }
        let nodes = shared.nodes.state();
        heard.retain(&nodes.iter().map(|n| n.name_any()).collect());
        for node in nodes {
            let pods = by_node.remove(&node.name_any()).unwrap_or_default();
            if let Err(e) = monitor(&shared, &mut heard, &node, &pods, now).await {
                tracing::warn!(controller = COMPONENT, node = %node.name_any(), "{e}");
            }
        }
    }
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// When each node was last heard of, on this controller's clock: what it
/// last reported, and when that was first seen.
#[derive(Default)]
struct Heard(HashMap<String, (Option<Timestamp>, Timestamp)>);

impl Heard {
    /// Whether `name`, which reports `reported` at `now`, has been silent
    /// for longer than `grace`. A node first seen counts as just heard.
    fn silent(
        &mut self,
        name: &str,
        reported: Option<Timestamp>,
        now: Timestamp,
        grace: SignedDuration,
    ) -> bool {
        let (last, at) = self.0.entry(name.to_owned()).or_insert((reported, now));
        if *last != reported {
            (*last, *at) = (reported, now);
        }
        at.checked_add(grace).is_ok_and(|deadline| deadline < now)
    }

    /// Forgets nodes no longer in `names`.
    fn retain(&mut self, names: &HashSet<String>) {
        self.0.retain(|name, _| names.contains(name));
    }
}

/// What the node last reported of itself: its Lease renewed, its status
/// posted, or, if never, its registration.
fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let posted = condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let registered = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    [renewed, posted, registered].into_iter().flatten().max()
}

/// The node's conditions once its kubelet has been silent past the grace
/// period, if that changes them.
fn silenced(node: &Node, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    for type_ in KUBELET_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == *type_) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                conditions.push(NodeCondition {
                    type_: (*type_).into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conditions)
}

/// The node's taints with those its readiness calls for, if that changes
/// them: `unreachable` while Ready is Unknown, `not-ready` while False.
fn tainted(node: &Node, ready: Option<&str>, now: Timestamp) -> Option<Vec<Taint>> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let wanted_key = match ready {
        Some("Unknown") => Some(UNREACHABLE),
        Some("False") => Some(NOT_READY),
        _ => None,
    };
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| {
            let ours = t.key == UNREACHABLE || t.key == NOT_READY;
            !ours || Some(t.key.as_str()) == wanted_key
        })
        .cloned()
        .collect();
    if let Some(key) = wanted_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                    value: None,
                });
            }
        }
    }
    (next != current).then_some(next)
}

/// When a pod on a node with these NoExecute taints is to be deleted: now
/// if it does not tolerate one, after the shortest tolerationSeconds of
/// those it uses, or never.
fn eviction_time(pod: &Pod, taints: &[&Taint], now: Timestamp) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut at: Option<Timestamp> = None;
    for taint in taints {
        let used: Vec<_> = tolerations
            .iter()
            .filter(|t| kubox_scheduler::tolerates(std::slice::from_ref(*t), taint))
            .collect();
        if used.is_empty() {
            return Some(now);
        }
        let Some(seconds) = used.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        // The shortest limit of the tolerations used counts, even beside
        // one without a limit (upstream's getMinTolerationTime).
        let since = taint.time_added.as_ref().map_or(now, |t| t.0);
        let when = since
            .checked_add(SignedDuration::from_secs(seconds.max(0)))
            .unwrap_or(now);
        at = Some(at.map_or(when, |a| a.min(when)));
    }
    at
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn monitor(
    shared: &Shared,
    heard: &mut Heard,
    node: &Node,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Result<(), Error> {
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let lease = shared
        .leases
        .get(&kube::runtime::reflector::ObjectRef::new(&name).within("kube-node-lease"));
    let silent = heard.silent(&name, last_heard(node, lease.as_deref()), now, shared.grace);
    let mut ready = condition(node, "Ready").map(|c| c.status.clone());
    if silent && let Some(conditions) = silenced(node, now) {
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await?;
        if ready.as_deref() != Some("Unknown") {
            shared.recorder.record(
                node.object_ref(&()),
                Type::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        ready = Some("Unknown".into());
    }
    if let Some(taints) = tainted(node, ready.as_deref(), now) {
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": taints}})),
            )
            .await?;
    }
    if ready.as_deref() != Some("True") {
        mark_pods_not_ready(shared, pods, now).await?;
    }
    let no_execute: Vec<&Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoExecute")
        .collect();
    if !no_execute.is_empty() {
        evict(shared, pods, &no_execute, now).await?;
    }
    Ok(())
}

async fn mark_pods_not_ready(
    shared: &Shared,
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Result<(), Error> {
    for pod in pods.iter().filter(|p| pod_ready(p)) {
        let mut conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
            c.status = "False".into();
            c.last_transition_time = Some(Time(now));
        }
        let api: Api<Pod> =
            Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await
        {
            Ok(_) => shared.recorder.record(
                pod_reference(pod, None),
                Type::Warning,
                "NodeNotReady",
                "Node is not ready".into(),
            ),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn evict(
    shared: &Shared,
    pods: &[Arc<Pod>],
    taints: &[&Taint],
    now: Timestamp,
) -> Result<(), Error> {
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if eviction_time(pod, taints, now).is_none_or(|at| at > now) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
        shared.recorder.record(
            pod_reference(pod, None),
            Type::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
        );
        match api.delete(&pod.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn silence_is_timed_on_the_controllers_clock_whatever_the_nodes_say() {
        let grace = SignedDuration::from_secs(40);
        let mut heard = Heard::default();
        let t = |s: i64| at("2026-07-01T10:00:00Z") + SignedDuration::from_secs(s);
        // A node whose clock is ten minutes behind, renewing every 10 s.
        for s in (0..300).step_by(10) {
            assert!(!heard.silent("slow", Some(t(s - 600)), t(s), grace));
        }
        // One ten minutes ahead that stops: silent once the grace has
        // passed here, not ten minutes later.
        assert!(!heard.silent("fast", Some(t(600)), t(0), grace));
        assert!(!heard.silent("fast", Some(t(600)), t(40), grace));
        assert!(heard.silent("fast", Some(t(600)), t(41), grace));
        // Heard again: not silent.
        assert!(!heard.silent("fast", Some(t(650)), t(45), grace));
        heard.retain(&["slow".to_owned()].into());
        assert_eq!(heard.0.len(), 1);
    }

    #[test]
    fn a_silent_node_goes_unknown_and_is_tainted_unreachable_until_it_is_ready() {
        let now = at("2026-07-01T10:01:00Z");
        let fresh =
            node(json!({"metadata": {"name": "n", "creationTimestamp": "2026-07-01T10:00:00Z"}}));
        let conditions = silenced(&fresh, now).unwrap();
        assert_eq!(conditions.len(), 4);
        assert!(conditions.iter().all(
            |c| c.status == "Unknown" && c.reason.as_deref() == Some("NodeStatusNeverUpdated")
        ));
        let posted = node(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "MemoryPressure", "status": "False"},
                                      {"type": "DiskPressure", "status": "False"},
                                      {"type": "PIDPressure", "status": "False"}]}}));
        let conditions = silenced(&posted, now).unwrap();
        assert_eq!(conditions[0].reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            conditions[0].message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );

        let taints = tainted(&posted, Some("Unknown"), now).unwrap();
        assert_eq!(
            taints
                .iter()
                .map(|t| (t.key.as_str(), t.effect.as_str()))
                .collect::<Vec<_>>(),
            [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
        );
        let mut unreachable = posted.clone();
        unreachable.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        assert_eq!(tainted(&unreachable, Some("Unknown"), now), None);
        assert_eq!(tainted(&unreachable, Some("True"), now), Some(vec![]));
        let not_ready = tainted(&unreachable, Some("False"), now).unwrap();
        assert!(not_ready.iter().all(|t| t.key == NOT_READY));
    }

    #[test]
    fn pods_are_evicted_after_the_shortest_toleration_of_the_taints() {
        let now = at("2026-07-01T10:01:00Z");
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(at("2026-07-01T10:00:00Z"))),
            value: None,
        };
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}))
                .unwrap()
        };
        assert_eq!(eviction_time(&pod(json!([])), &[&taint], now), Some(now));
        let default = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        assert_eq!(
            eviction_time(&default, &[&taint], now),
            Some(at("2026-07-01T10:05:00Z"))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &[&taint], now), None);
    }
}
