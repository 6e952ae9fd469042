//! The DaemonSet controller (upstream's daemonset-controller): one pod on
//! every node the pod template fits (node selector, required node
//! affinity, taints it tolerates with the DaemonSet tolerations added),
//! pinned there by node affinity on `metadata.name` for the scheduler to
//! bind, a ControllerRevision per template (`<name>-<hash>`, the hash in the
//! pods' `controller-revision-hash`), RollingUpdate (maxUnavailable,
//! maxSurge) or OnDelete, and the status `kubectl rollout status` reads.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};

use crate::deployment::util::{compute_hash, scaled_value};
use crate::expectations::Expectations;
use crate::history::{self, REVISION_HASH};
use crate::ownerref::{self, Claimer};
use crate::podowners::{self, OwnsPods, Selecting, key};
use crate::{Context, Error, api_message, is_not_found, pods, runner};

pub const COMPONENT: &str = "daemonset-controller";

impl Selecting for DaemonSet {
    fn selector(&self) -> Result<Selector, String> {
        let s = self.spec.selector.clone();
        Selector::try_from(s).map_err(|e| e.to_string())
    }
}

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    expectations: Expectations,
    sets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
}

impl OwnsPods for Shared {
    type Owner = DaemonSet;

    fn owners(&self) -> &Store<DaemonSet> {
        &self.sets
    }

    fn expectations(&self) -> &Expectations {
        &self.expectations
    }
}

pub async fn run(ctx: Arc<Context>) {
    let sets = ctx.informers.get::<DaemonSet>();
    let pod_informer = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    sets.synced().await;
    pod_informer.synced().await;
    nodes.synced().await;
    revisions.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        expectations: Expectations::default(),
        sets: sets.store(),
        pods: pod_informer.store(),
        nodes: nodes.store(),
        revisions: revisions.store(),
    });
    // Any node change may change where every DaemonSet runs.
    let on_node = shared.clone();
    let node_triggers = nodes.changes().flat_map(move |_| {
        futures::stream::iter(
            on_node
                .sets
                .state()
                .into_iter()
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>(),
        )
    });
    let controller =
        podowners::controller(&shared, &sets, &pod_informer).reconcile_on(node_triggers);
    runner::run(COMPONENT, controller, reconcile, shared).await;
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The pod a DaemonSet runs on `node`: its template with the DaemonSet
/// tolerations, required node affinity to the node alone, and the
/// revision's hash.
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let mut template = ds.spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_HASH.into(), hash.into());
    let spec = template.spec.get_or_insert_with(Default::default);
    let mut wanted = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in wanted {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    let by_name = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.into()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    let mut terms = std::mem::take(&mut required.node_selector_terms);
    if terms.is_empty() {
        terms.push(NodeSelectorTerm::default());
    }
    for term in &mut terms {
        term.match_fields = Some(vec![by_name.clone()]);
    }
    required.node_selector_terms = terms;
    pods::from_template(&template, &ds.name_any(), ownerref::controller_ref(ds))
}

/// The node a DaemonSet pod is on, or is pinned to before it is bound.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Whether the DaemonSet should run on the node, and whether a pod
/// already there should stay (only NoExecute taints evict).
fn should_run(ds: &DaemonSet, node: &Arc<Node>) -> (bool, bool) {
    let pod = pod_for(ds, &node.name_any(), "");
    (
        kubox_scheduler::node_fits(&pod, node.clone(), &["NoSchedule", "NoExecute"]),
        kubox_scheduler::node_fits(&pod, node.clone(), &["NoExecute"]),
    )
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn min_ready(ds: &DaemonSet) -> i32 {
    ds.spec.min_ready_seconds.unwrap_or(0)
}

async fn reconcile(ds: Arc<DaemonSet>, shared: Arc<Shared>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let ds_key = key(&ds.metadata);
    let selector = match ds.selector() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(controller = COMPONENT, "{ds_key}: {e}");
            return Ok(Action::await_change());
        }
    };
    let pod_api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let sets: Api<DaemonSet> = Api::namespaced(shared.client.clone(), &ns);
    let revision_api: Api<ControllerRevision> = Api::namespaced(shared.client.clone(), &ns);
    let satisfied = shared.expectations.satisfied(&ds_key);

    // The current revision: the one holding this template, else a new one.
    let template = ds.spec.template.clone();
    let patch = history::template_patch(&template);
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let revisions = history::owned(&shared.revisions, &ns, &uid);
    let next = history::next_number(&revisions);
    let current = match revisions.iter().find(|r| history::holds(r, &patch)) {
        Some(r) if r.revision.unwrap_or(0) + 1 < next => {
            history::renumber(&revision_api, r, next).await?
        }
        Some(r) => (**r).clone(),
        None => {
            let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
            let hash = compute_hash(&template, collisions);
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.clone());
            let revision = history::new_revision(
                format!("{}-{hash}", ds.name_any()),
                &ns,
                labels,
                ownerref::controller_ref(&*ds),
                patch,
                next,
            );
            history::create(&revision_api, revision).await?
        }
    };
    let hash = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .cloned()
        .unwrap_or_default();

    let candidates: Vec<Arc<Pod>> = shared
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let claimed = Claimer::new(&*ds, &selector, sets.clone())
        .claim(candidates, &pod_api)
        .await?;
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in &claimed {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p.clone());
        }
    }
    let now = Timestamp::now();
    let nodes = shared.nodes.state();
    if satisfied {
        let (create, delete) = plan(&ds, &nodes, &by_node, &hash, now);
        sync_nodes(&shared, &ds, &pod_api, create, delete, &hash).await?;
    }
    let status = status_of(&ds, &nodes, &by_node, &hash, now);
    if ds.status.as_ref() != Some(&status) {
        let mut updated = (*ds).clone();
        updated.status = Some(status);
        sets.replace_status(&ds.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    let limit = ds.spec.revision_history_limit.unwrap_or(10);
    let live = |r: &ControllerRevision| {
        let h = r
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_HASH));
        r.metadata.name == current.metadata.name
            || claimed
                .iter()
                .any(|p| h.is_some_and(|h| hash_of(p) == Some(h)))
    };
    history::truncate(
        &revision_api,
        &history::owned(&shared.revisions, &ns, &uid),
        live,
        limit,
    )
    .await?;
    Ok(Action::await_change())
}

/// The nodes to create a pod on and the pods to delete: missing pods,
/// failed or surplus ones, pods on nodes the DaemonSet no longer fits,
/// and the old pods a rolling update replaces now.
fn plan(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &HashMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    now: Timestamp,
) -> (Vec<String>, Vec<Arc<Pod>>) {
    let mut create = Vec::new();
    let mut delete = Vec::new();
    let strategy = ds.spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
    let rolling_update = strategy.and_then(|s| s.rolling_update.as_ref());
    let desired = nodes.iter().filter(|n| should_run(ds, n).0).count() as i32;
    let scaled = |v: Option<&IntOrString>, default: i32| {
        v.map_or(default, |v| scaled_value(v, desired, true))
    };
    let max_surge = scaled(rolling_update.and_then(|r| r.max_surge.as_ref()), 0);
    let mut max_unavailable = scaled(rolling_update.and_then(|r| r.max_unavailable.as_ref()), 1);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let min_ready = min_ready(ds);
    let mut unavailable = 0;
    let mut replaceable = Vec::new();
    let mut surge_nodes = Vec::new();
    for node in nodes {
        let name = node.name_any();
        let (run, keep) = should_run(ds, node);
        let here: Vec<Arc<Pod>> = by_node.get(&name).cloned().unwrap_or_default();
        if !keep {
            delete.extend(
                here.into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none()),
            );
            continue;
        }
        let (failed, live): (Vec<_>, Vec<_>) = here
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .partition(|p| pods_phase(p) == "Failed");
        delete.extend(failed);
        if !run && live.is_empty() {
            continue;
        }
        let (new, old): (Vec<_>, Vec<_>) = live.into_iter().partition(|p| hash_of(p) == Some(hash));
        match (new.first(), old.first()) {
            (None, None) => {
                create.push(name);
                unavailable += 1;
            }
            (Some(n), _) if !pods::is_available(n, min_ready, now) => {
                unavailable += 1;
                // Old pods stay while the new one is not ready yet (surge).
                if max_surge == 0 {
                    delete.extend(old.iter().cloned());
                }
            }
            (Some(_), _) => delete.extend(old.iter().cloned()),
            (None, Some(o)) if rolling => {
                if !pods::is_available(o, min_ready, now) {
                    delete.push(o.clone());
                    unavailable += 1;
                } else if max_surge > 0 {
                    surge_nodes.push(name);
                } else {
                    replaceable.push(o.clone());
                }
            }
            (None, Some(_)) => {}
        }
        // Never more than one new and one old pod on a node.
        delete.extend(new.iter().skip(1).cloned());
        if old.len() > 1 {
            delete.extend(old.iter().skip(1).cloned());
        }
    }
    let room = (max_unavailable - unavailable).max(0) as usize;
    delete.extend(replaceable.into_iter().take(room));
    create.extend(surge_nodes.into_iter().take(max_surge.max(0) as usize));
    (create, delete)
}

fn pods_phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

async fn sync_nodes(
    shared: &Shared,
    ds: &DaemonSet,
    api: &Api<Pod>,
    create: Vec<String>,
    delete: Vec<Arc<Pod>>,
    hash: &str,
) -> Result<(), Error> {
    let ds_key = key(&ds.metadata);
    let reference = ds.object_ref(&());
    if !delete.is_empty() {
        shared
            .expectations
            .expect_deletions(&ds_key, delete.iter().map(|p| key(&p.metadata)).collect());
        let results = join_all(delete.iter().map(|p| async move {
            (p, api.delete(&p.name_any(), &DeleteParams::default()).await)
        }))
        .await;
        for (p, r) in results {
            match r {
                Ok(_) => shared.recorder.record(
                    reference.clone(),
                    Type::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", p.name_any()),
                ),
                Err(e) => {
                    shared
                        .expectations
                        .deletion_observed(&ds_key, &key(&p.metadata));
                    if !is_not_found(&e) {
                        return Err(Error::Failed(api_message(&e)));
                    }
                }
            }
        }
    }
    if !create.is_empty() {
        shared.expectations.expect_creations(&ds_key, create.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (created, result) =
            pods::slow_start(create.len(), || {
                let node = &create[next.fetch_add(1, std::sync::atomic::Ordering::SeqCst)];
                let reference = reference.clone();
                async move {
                    pods::create(api, &shared.recorder, reference, &pod_for(ds, node, hash)).await
                }
            })
            .await;
        for _ in created..create.len() {
            shared.expectations.creation_observed(&ds_key);
        }
        result?;
    }
    Ok(())
}

fn status_of(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    by_node: &HashMap<String, Vec<Arc<Pod>>>,
    hash: &str,
    now: Timestamp,
) -> DaemonSetStatus {
    let mut s = DaemonSetStatus {
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    let min_ready = min_ready(ds);
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    for node in nodes {
        let here: Vec<&Arc<Pod>> = by_node
            .get(&node.name_any())
            .into_iter()
            .flatten()
            .filter(|p| pods::is_active(p))
            .collect();
        if should_run(ds, node).0 {
            s.desired_number_scheduled += 1;
            let Some(oldest) = here
                .iter()
                .min_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
            else {
                continue;
            };
            s.current_number_scheduled += 1;
            if pods::is_ready(oldest) {
                ready += 1;
                if pods::is_available(oldest, min_ready, now) {
                    available += 1;
                }
            }
            if hash_of(oldest) == Some(hash) {
                updated += 1;
            }
        } else if !here.is_empty() {
            s.number_misscheduled += 1;
        }
    }
    s.number_ready = ready;
    s.number_available = (available > 0).then_some(available);
    s.updated_number_scheduled = (updated > 0).then_some(updated);
    let unavailable = s.desired_number_scheduled - available;
    s.number_unavailable = (unavailable > 0).then_some(unavailable);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_pods_are_pinned_to_their_node_and_tolerate_node_conditions() {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let pod = pod_for(&ds, "n1", "abc");
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[REVISION_HASH], "abc");
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 6);
        let node = |taint: Option<&str>| -> Arc<Node> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "n1"},
                    "spec": {"taints": taint.map(|e| vec![serde_json::json!({"key": "k", "effect": e})])}
                }))
                .unwrap(),
            )
        };
        assert_eq!(should_run(&ds, &node(None)), (true, true));
        assert_eq!(should_run(&ds, &node(Some("NoSchedule"))), (false, true));
        assert_eq!(should_run(&ds, &node(Some("NoExecute"))), (false, false));
    }
}
