//! What one sync of a StatefulSet does, as upstream's updateStatefulSet:
//! fill the ordinals `[start, start+replicas)` in order, remove the pods
//! beyond them from the highest ordinal down, then replace pods of an old
//! revision from the highest ordinal down to the partition. With the
//! OrderedReady policy every step waits for the pods before it to be
//! running and ready, one pod at a time; Parallel does not wait.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::deployment::util::scaled_value;
use crate::pods;

use super::identity::{self, revision};

/// The pods of a set, by where their ordinal falls.
pub struct Members {
    /// One slot per wanted ordinal, lowest first.
    pub replicas: Vec<(i32, Option<Arc<Pod>>)>,
    /// Pods whose ordinal is outside the wanted range, highest first.
    pub condemned: Vec<(i32, Arc<Pod>)>,
}

impl Members {
    pub fn sort(set: &StatefulSet, pods: &[Arc<Pod>]) -> Self {
        let start = identity::start(set);
        let end = start + identity::replicas(set);
        let mut replicas: Vec<(i32, Option<Arc<Pod>>)> = (start..end).map(|o| (o, None)).collect();
        let mut condemned = Vec::new();
        for pod in pods {
            let Some(ordinal) = identity::ordinal(set, pod) else {
                continue;
            };
            if (start..end).contains(&ordinal) {
                replicas[(ordinal - start) as usize].1 = Some(pod.clone());
            } else {
                condemned.push((ordinal, pod.clone()));
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        Self {
            replicas,
            condemned,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.replicas
            .iter()
            .filter_map(|(_, p)| p.as_ref())
            .chain(self.condemned.iter().map(|(_, p)| p))
    }
}

/// What to do now.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Ordinals to create a pod (and its claims) for.
    pub create: Vec<i32>,
    /// Pods to delete, and whether each is condemned (scaled away).
    pub delete: Vec<(Arc<Pod>, bool)>,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && pods::is_ready(p)
}

fn min_ready(set: &StatefulSet) -> i32 {
    set.spec.min_ready_seconds.unwrap_or(0)
}

/// Running, ready (for minReadySeconds) and not going away.
fn healthy(set: &StatefulSet, p: &Pod, now: Timestamp) -> bool {
    running_and_ready(p) && pods::is_available(p, min_ready(set), now) && !terminating(p)
}

fn ordered(set: &StatefulSet) -> bool {
    set.spec.pod_management_policy.as_deref() != Some("Parallel")
}

pub fn rolling(set: &StatefulSet) -> bool {
    set.spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete")
}

pub fn partition(set: &StatefulSet) -> i32 {
    set.spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
}

fn max_unavailable(set: &StatefulSet) -> i32 {
    set.spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref())
        .map_or(1, |v| scaled_value(v, identity::replicas(set), true))
        .max(1)
}

pub fn plan(set: &StatefulSet, members: &Members, update: &str, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    let ordered = ordered(set);
    for (ordinal, slot) in &members.replicas {
        match slot {
            None => {
                plan.create.push(*ordinal);
                if ordered {
                    return plan;
                }
            }
            // A finished pod is deleted and made again.
            Some(p) if !terminating(p) && matches!(phase(p), "Failed" | "Succeeded") => {
                plan.delete.push((p.clone(), false));
                if ordered {
                    return plan;
                }
            }
            Some(p) if ordered && !healthy(set, p, now) => return plan,
            Some(_) => {}
        }
    }
    let first_unhealthy = members.all().find(|p| !healthy(set, p, now)).cloned();
    for (_, p) in &members.condemned {
        if terminating(p) {
            if ordered {
                return plan;
            }
            continue;
        }
        // Scale down waits for an unhealthy pod unless it is the one to go.
        if ordered && first_unhealthy.as_ref().is_some_and(|u| !Arc::ptr_eq(u, p)) {
            return plan;
        }
        plan.delete.push((p.clone(), true));
        if ordered {
            return plan;
        }
    }
    if !rolling(set) {
        return plan;
    }
    let update_min = identity::start(set) + partition(set);
    let in_range = || {
        members
            .replicas
            .iter()
            .rev()
            .filter(|(o, _)| *o >= update_min)
    };
    let mut unavailable = in_range()
        .filter(|(_, p)| p.as_ref().is_none_or(|p| !healthy(set, p, now)))
        .count() as i32;
    let budget = max_unavailable(set);
    for (_, p) in in_range() {
        let Some(p) = p else { continue };
        if revision(p) == Some(update) || terminating(p) {
            continue;
        }
        if healthy(set, p, now) {
            if unavailable >= budget {
                break;
            }
            unavailable += 1;
        }
        plan.delete.push((p.clone(), false));
    }
    plan
}

/// The status of `set` with these pods, at revisions `current` and `update`.
pub fn status(
    set: &StatefulSet,
    members: &Members,
    current: &str,
    update: &str,
    now: Timestamp,
) -> StatefulSetStatus {
    let mut s = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        current_revision: Some(current.into()),
        update_revision: Some(update.into()),
        ..Default::default()
    };
    let (mut ready, mut available, mut current_n, mut updated) = (0, 0, 0, 0);
    for p in members.all() {
        if !phase(p).is_empty() {
            s.replicas += 1;
        }
        if running_and_ready(p) {
            ready += 1;
            if pods::is_available(p, min_ready(set), now) {
                available += 1;
            }
        }
        if !phase(p).is_empty() && !terminating(p) {
            if revision(p) == Some(current) {
                current_n += 1;
            }
            if revision(p) == Some(update) {
                updated += 1;
            }
        }
    }
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(available);
    s.current_replicas = Some(current_n);
    s.updated_replicas = Some(updated);
    // A finished rolling update makes the update revision current.
    if rolling(set) && updated == s.replicas && ready == s.replicas {
        s.current_replicas = Some(updated);
        s.current_revision = Some(update.into());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(replicas: i32, extra: serde_json::Value) -> StatefulSet {
        let mut spec = json!({"replicas": replicas, "serviceName": "web",
                              "selector": {"matchLabels": {"app": "web"}},
                              "template": {"metadata": {"labels": {"app": "web"}}}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn pod(ordinal: i32, revision: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("web-{ordinal}"),
                             "labels": {"controller-revision-hash": revision}},
                "status": {"phase": "Running",
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    fn names(plan: &Plan) -> Vec<String> {
        plan.delete
            .iter()
            .map(|(p, _)| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn ordered_ready_creates_one_pod_at_a_time_after_the_previous_is_ready() {
        let s = set(3, json!({}));
        let plan_of = |pods: Vec<Arc<Pod>>| plan(&s, &Members::sort(&s, &pods), "r1", now());
        assert_eq!(plan_of(vec![]).create, [0]);
        assert_eq!(plan_of(vec![pod(0, "r1", false)]).create, Vec::<i32>::new());
        assert_eq!(plan_of(vec![pod(0, "r1", true)]).create, [1]);
        // A gap is filled first.
        assert_eq!(
            plan_of(vec![pod(0, "r1", true), pod(2, "r1", true)]).create,
            [1]
        );
    }

    #[test]
    fn parallel_creates_every_missing_pod_at_once() {
        let s = set(3, json!({"podManagementPolicy": "Parallel"}));
        let p = plan(&s, &Members::sort(&s, &[pod(1, "r1", false)]), "r1", now());
        assert_eq!(p.create, [0, 2]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let s = set(1, json!({}));
        let pods = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let p = plan(&s, &Members::sort(&s, &pods), "r1", now());
        assert_eq!(names(&p), ["web-2"]);
        assert!(p.delete[0].1);
        // Waits for an unhealthy pod it is not removing.
        let pods = vec![pod(0, "r1", true), pod(1, "r1", false), pod(2, "r1", true)];
        let p = plan(&s, &Members::sort(&s, &pods), "r1", now());
        assert!(p.delete.is_empty());
        let parallel = set(1, json!({"podManagementPolicy": "Parallel"}));
        let pods = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let p = plan(&parallel, &Members::sort(&parallel, &pods), "r1", now());
        assert_eq!(names(&p), ["web-2", "web-1"]);
    }

    #[test]
    fn rolling_update_replaces_from_the_top_down_to_the_partition() {
        let s = set(3, json!({}));
        let old = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let p = plan(&s, &Members::sort(&s, &old), "r2", now());
        assert_eq!(names(&p), ["web-2"]);
        // The replaced pod must be ready before the next goes.
        let mid = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", false)];
        assert!(
            plan(&s, &Members::sort(&s, &mid), "r2", now())
                .delete
                .is_empty()
        );
        let mid = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", true)];
        assert_eq!(
            names(&plan(&s, &Members::sort(&s, &mid), "r2", now())),
            ["web-1"]
        );
        let partitioned = set(
            3,
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
        );
        let mid = vec![pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", true)];
        assert!(
            plan(
                &partitioned,
                &Members::sort(&partitioned, &mid),
                "r2",
                now()
            )
            .delete
            .is_empty()
        );
        let on_delete = set(3, json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(
            plan(&on_delete, &Members::sort(&on_delete, &old), "r2", now())
                .delete
                .is_empty()
        );
        let wide = set(
            3,
            json!({"podManagementPolicy": "Parallel",
                   "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}}),
        );
        assert_eq!(
            names(&plan(&wide, &Members::sort(&wide, &old), "r2", now())),
            ["web-2", "web-1"]
        );
    }

    #[test]
    fn status_counts_revisions_and_completes_the_rollout() {
        let s = set(2, json!({}));
        let mid = vec![pod(0, "r1", true), pod(1, "r2", true)];
        let st = status(&s, &Members::sort(&s, &mid), "r1", "r2", now());
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.current_replicas,
                st.updated_replicas
            ),
            (2, Some(2), Some(1), Some(1))
        );
        assert_eq!(st.current_revision.as_deref(), Some("r1"));
        let done = vec![pod(0, "r2", true), pod(1, "r2", true)];
        let st = status(&s, &Members::sort(&s, &done), "r1", "r2", now());
        assert_eq!(st.current_revision.as_deref(), Some("r2"));
        assert_eq!(st.current_replicas, Some(2));
    }
}
