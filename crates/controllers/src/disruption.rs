//! The disruption controller, as upstream's: each PodDisruptionBudget's
//! status says how many of its pods are healthy, how many must stay so, and
//! so how many the eviction API may take now (`disruptionsAllowed`). The API
//! server's eviction subresource decrements that count and records the pod
//! in `disruptedPods` until this controller sees the pod go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::{Context, Error, ownerref, pods, runner};

const COMPONENT: &str = "disruption";
/// How long an evicted pod not yet gone stays counted as disrupted.
const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    replica_sets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    replication_controllers: Store<ReplicationController>,
}

pub async fn run(ctx: Arc<Context>) {
    let budgets = ctx.informers.get::<PodDisruptionBudget>();
    let pods = ctx.informers.get::<Pod>();
    let replica_sets = ctx.informers.get::<ReplicaSet>();
    let deployments = ctx.informers.get::<Deployment>();
    let stateful_sets = ctx.informers.get::<StatefulSet>();
    let replication_controllers = ctx.informers.get::<ReplicationController>();
    let budget_store = budgets.store();
    budgets.synced().await;
    let controller = Controller::for_shared_stream(budgets.stream(), budgets.store())
        .watches_shared_stream(pods.stream(), move |pod: Arc<Pod>| {
            budgets_of(&budget_store, &pod)
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        replica_sets: replica_sets.store(),
        deployments: deployments.store(),
        stateful_sets: stateful_sets.store(),
        replication_controllers: replication_controllers.store(),
    });
    // The workloads' scales only feed percentages and maxUnavailable; a
    // change of scale changes pods too, which wakes the budgets.
    let _ = tokio::join!(
        replica_sets.synced(),
        deployments.synced(),
        stateful_sets.synced(),
        replication_controllers.synced()
    );
    runner::run(COMPONENT, controller, reconcile, state).await;
}

/// policy/v1: an empty selector selects every pod of the namespace.
fn selector(pdb: &PodDisruptionBudget) -> Result<Selector, String> {
    let s = pdb
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    Selector::try_from(s).map_err(|e| e.to_string())
}

fn budgets_of(
    budgets: &Store<PodDisruptionBudget>,
    pod: &Pod,
) -> Vec<ObjectRef<PodDisruptionBudget>> {
    let labels = pods::labels(&pod.metadata);
    budgets
        .state()
        .iter()
        .filter(|b| b.namespace() == pod.namespace())
        .filter(|b| selector(b).is_ok_and(|s| s.matches(labels)))
        .map(|b| ObjectRef::from_obj(&**b))
        .collect()
}

impl State {
    /// The replicas the controllers of `selected` ask for, each controller
    /// once (a ReplicaSet of a Deployment counts as its Deployment), or why
    /// they cannot be known.
    fn expected_scale(&self, selected: &[Arc<Pod>]) -> Result<i32, String> {
        let mut scales: BTreeMap<String, i32> = BTreeMap::new();
        for pod in selected {
            let Some(owner) = ownerref::controller_of(&pod.metadata) else {
                return Err(format!("found no controllers for pod {:?}", pod.name_any()));
            };
            let ns = pod.namespace().unwrap_or_default();
            let scale = |uid: &Option<String>, replicas: Option<i32>| {
                (uid.clone().unwrap_or_default(), replicas.unwrap_or(1))
            };
            let found = if let Some(rs) = ownerref::resolve(&self.replica_sets, &ns, owner) {
                // A Deployment's ReplicaSets count as the Deployment.
                match ownerref::controller_of(&rs.metadata)
                    .and_then(|d| ownerref::resolve(&self.deployments, &ns, d))
                {
                    Some(d) => Some(scale(&d.metadata.uid, d.spec.replicas)),
                    None => Some(scale(&rs.metadata.uid, rs.spec.replicas)),
                }
            } else if let Some(s) = ownerref::resolve(&self.stateful_sets, &ns, owner) {
                Some(scale(&s.metadata.uid, s.spec.replicas))
            } else {
                ownerref::resolve(&self.replication_controllers, &ns, owner)
                    .map(|rc| scale(&rc.metadata.uid, rc.spec.as_ref().and_then(|s| s.replicas)))
            };
            let (uid, replicas) = found.ok_or_else(|| {
                format!(
                    "found no controllers for pod {:?}: {} {:?} has no scale known here",
                    pod.name_any(),
                    owner.kind,
                    owner.name
                )
            })?;
            scales.insert(uid, replicas);
        }
        Ok(scales.values().sum())
    }
}

/// `value` of `total`: an integer, or a percentage rounded up as upstream's
/// GetScaledValueFromIntOrPercent with roundUp.
fn scaled(value: &IntOrString, total: i32) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            Ok(((percent * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// What the status should say, from the pods the budget selects.
struct Counts {
    expected: i32,
    desired_healthy: i32,
    current_healthy: i32,
}

fn counts(
    pdb: &PodDisruptionBudget,
    selected: &[Arc<Pod>],
    state: &State,
    disrupted: &BTreeMap<String, Time>,
) -> Result<Counts, String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let (expected, desired_healthy) = match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => {
            let expected = state.expected_scale(selected)?;
            (expected, (expected - scaled(max, expected)?).max(0))
        }
        (None, Some(IntOrString::Int(n))) => (selected.len() as i32, *n),
        (None, Some(min)) => {
            let expected = state.expected_scale(selected)?;
            (expected, scaled(min, expected)?)
        }
        (None, None) => (selected.len() as i32, 0),
    };
    let current_healthy = selected
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !disrupted.contains_key(&p.name_any()))
        .filter(|p| pods::is_ready(p))
        .count() as i32;
    Ok(Counts {
        expected,
        desired_healthy,
        current_healthy,
    })
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, state: Arc<State>) -> Result<Action, Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let selector = selector(&pdb).map_err(Error::Failed)?;
    let selected: Vec<Arc<Pod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
        .filter(|p| selector.matches(pods::labels(&p.metadata)))
        .collect();
    let now = Timestamp::now();
    let status = pdb.status.clone().unwrap_or_default();
    // Evicted pods count as gone until they are, or for DELETION_TIMEOUT.
    let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
    let mut recheck: Option<Duration> = None;
    for (name, at) in status.disrupted_pods.clone().unwrap_or_default() {
        let present = selected
            .iter()
            .any(|p| p.name_any() == name && p.metadata.deletion_timestamp.is_none());
        let age = now.duration_since(at.0).unsigned_abs();
        if present && age < DELETION_TIMEOUT {
            let left = DELETION_TIMEOUT - age;
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
            disrupted.insert(name, at);
        }
    }
    let generation = pdb.metadata.generation;
    let previous = status.conditions.clone().unwrap_or_default();
    let condition = |status: &str, reason: &str, message: String| {
        let old = previous.iter().find(|c| c.type_ == "DisruptionAllowed");
        let transition = old
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: "DisruptionAllowed".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: transition,
        }
    };
    let desired = match counts(&pdb, &selected, &state, &disrupted) {
        Ok(c) => {
            let allowed = (c.current_healthy - c.desired_healthy).max(0);
            let cond = if allowed > 0 {
                condition("True", "SufficientPods", String::new())
            } else {
                condition("False", "InsufficientPods", String::new())
            };
            serde_json::json!({
                "observedGeneration": generation,
                "disruptedPods": disrupted,
                "disruptionsAllowed": allowed,
                "currentHealthy": c.current_healthy,
                "desiredHealthy": c.desired_healthy,
                "expectedPods": c.expected,
                "conditions": [cond],
            })
        }
        // As upstream: nothing may be disrupted while the budget cannot be computed.
        Err(why) => serde_json::json!({
            "observedGeneration": generation,
            "disruptedPods": disrupted,
            "disruptionsAllowed": 0,
            "currentHealthy": 0,
            "desiredHealthy": 0,
            "expectedPods": 0,
            "conditions": [condition("False", "SyncFailed", why)],
        }),
    };
    let current = serde_json::to_value(&status).unwrap_or_default();
    let unchanged = [
        "observedGeneration",
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ]
    .iter()
    .all(|k| current.get(*k).unwrap_or(&serde_json::json!(0)) == &desired[*k])
        && current
            .get("disruptedPods")
            .cloned()
            .unwrap_or(serde_json::json!({}))
            == desired["disruptedPods"]
        && current["conditions"][0]["status"] == desired["conditions"][0]["status"]
        && current["conditions"][0]["reason"] == desired["conditions"][0]["reason"];
    if !unchanged {
        let api: Api<PodDisruptionBudget> = Api::namespaced(state.client.clone(), &ns);
        // A merge patch would keep evicted pods the map no longer names.
        let mut status = desired;
        if let Some(old) = current.get("disruptedPods").and_then(|m| m.as_object()) {
            for name in old.keys() {
                if status["disruptedPods"].get(name).is_none() {
                    status["disruptedPods"][name] = serde_json::Value::Null;
                }
            }
        }
        match api
            .patch_status(
                &pdb.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"status": status})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(recheck.map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up_as_upstream() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3), Ok(2));
        assert_eq!(scaled(&IntOrString::String("10%".into()), 10), Ok(1));
        assert_eq!(scaled(&IntOrString::Int(2), 10), Ok(2));
        assert!(scaled(&IntOrString::String("half".into()), 10).is_err());
    }
}
