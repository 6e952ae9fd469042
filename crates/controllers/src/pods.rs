//! What controllers ask of pods: whether they are active, ready, available,
//! and which to delete first, as upstream's pkg/controller helpers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use kubox_client::events::{Recorder, Type};

use crate::{Error, api_message, namespace_terminating};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The annotation that makes a pod cheaper (or dearer) to delete.
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Not finished and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition last became True, if it is ready.
fn ready_since(p: &Pod) -> Option<Option<Timestamp>> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since
            .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .is_ok_and(|t| t < now),
    }
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

fn deletion_cost(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn node_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn phase_ordinal(p: &Pod) -> u8 {
    match phase(p) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

/// The base-2 logarithm of the time since `t` (upstream's logarithmic
/// scale-down), so that pods of about the same age rank equal; a missing
/// time ranks before any other, as upstream's zero time.
fn log_age(t: Option<Timestamp>, now: Timestamp) -> i64 {
    let Some(t) = t else { return i64::MIN };
    let nanos = now.as_nanosecond() - t.as_nanosecond();
    if nanos > 0 {
        (nanos as f64).log2() as i64
    } else {
        -1
    }
}

/// A pod's place in the deletion order, lowest first (upstream's
/// ActivePodsWithRanks, with pod deletion cost and logarithmic scale-down
/// as enabled by default): unscheduled before scheduled; pending, then
/// unknown, then running; not ready before ready; lower deletion cost;
/// more pods of the same owners on its node; ready for less time; more
/// restarts; newer; then UID. Upstream compares pairs, and its rule is not
/// transitive (pods ready at different instants of one log-scale bucket
/// compare by UID, pods ready at the same instant by restarts); Go's sort
/// tolerates that, Rust's panics, so this is a key: within a bucket the
/// later criteria decide.
fn deletion_key(p: &Pod, rank: usize, now: Timestamp) -> impl Ord + use<> {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        !node_name(p).is_empty(),
        phase_ordinal(p),
        is_ready(p),
        deletion_cost(p),
        Reverse(rank),
        ready_since(p).map(|t| log_age(t, now)),
        Reverse(max_restarts(p)),
        log_age(created, now),
        p.metadata.uid.clone(),
    )
}

/// The `n` pods of `pods` to delete first. `related` are the active pods
/// of every controller with the same owner (a Deployment's ReplicaSets):
/// a pod sharing its node with more of them goes first.
pub fn to_delete(
    mut pods: Vec<Arc<Pod>>,
    related: &[Arc<Pod>],
    n: usize,
    now: Timestamp,
) -> Vec<Arc<Pod>> {
    if n < pods.len() {
        let mut on_node: HashMap<&str, usize> = HashMap::new();
        for p in related.iter().filter(|p| is_active(p)) {
            *on_node.entry(node_name(p)).or_default() += 1;
        }
        let rank = |p: &Pod| on_node.get(node_name(p)).copied().unwrap_or(0);
        pods.sort_by_cached_key(|p| deletion_key(p, rank(p), now));
    }
    pods.truncate(n);
    pods
}

/// A pod for a controller from its template (upstream's
/// GetPodFromTemplate): its labels, annotations and finalizers, a name
/// generated from the controller's, and the controller as its owner.
pub fn from_template(template: &PodTemplateSpec, owner: &str, controller: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    // `name-` unless the dash would make the prefix too long for a name.
    let prefix = if owner.len() < 253 {
        format!("{owner}-")
    } else {
        owner.to_owned()
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            labels: Some(meta.labels.unwrap_or_default()),
            annotations: Some(meta.annotations.unwrap_or_default()),
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Calls `op` `count` times in batches of 1, 2, 4, ..., each batch at
/// once, stopping after the first batch with a failure (upstream's
/// slowStartBatch: a doomed create fails once, not `count` times). Returns
/// how many succeeded, and the first failure.
pub async fn slow_start<F, Fut>(count: usize, op: F) -> (usize, Result<(), Error>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut remaining = count;
    let mut done = 0;
    let mut batch = remaining.min(1);
    while batch > 0 {
        let results = join_all((0..batch).map(|_| op())).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        done += batch - failed;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return (done, Err(e));
        }
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    (done, Ok(()))
}

/// Creates `pod` for the controller `owner`, recording it (upstream's
/// PodControl events: SuccessfulCreate, FailedCreate).
pub async fn create(
    api: &Api<Pod>,
    recorder: &Recorder,
    owner: ObjectReference,
    pod: &Pod,
) -> Result<(), Error> {
    match api.create(&PostParams::default(), pod).await {
        Ok(created) => {
            recorder.record(
                owner,
                Type::Normal,
                "SuccessfulCreate",
                format!("Created pod: {}", created.name_any()),
            );
            Ok(())
        }
        // Every create will fail while the namespace goes away; not worth an event.
        Err(e) if namespace_terminating(&e) => Ok(()),
        Err(e) => {
            recorder.record(
                owner,
                Type::Warning,
                "FailedCreate",
                format!("Error creating: {}", api_message(&e)),
            );
            Err(e.into())
        }
    }
}

/// An object's labels (none as empty), borrowed: selectors are matched
/// against every pod of a namespace on each pass, so a copy per pod costs.
pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&NONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready_at: Option<i64>,
        restarts: i32,
        created: i64,
    ) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(name.into()),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(ts(t))),
                        ..Default::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: restarts,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn deletion_prefers_unscheduled_pending_unready_restarted_and_new_pods() {
        let now = ts(1_000_000);
        let pods = vec![
            pod("running-ready-old", "n", "Running", Some(1000), 0, 100),
            pod("unscheduled", "", "Pending", None, 0, 100),
            pod("pending", "n", "Pending", None, 0, 100),
            pod("unknown", "n", "Unknown", None, 0, 100),
            pod("running-unready", "n", "Running", None, 0, 100),
            pod(
                "running-ready-restarted",
                "n",
                "Running",
                Some(1000),
                5,
                100,
            ),
            pod(
                "running-ready-recently",
                "n",
                "Running",
                Some(999_990),
                0,
                100,
            ),
        ];
        let ordered = to_delete(pods, &[], 6, now);
        assert_eq!(
            names(&ordered),
            [
                "unscheduled",
                "pending",
                "unknown",
                "running-unready",
                "running-ready-recently",
                "running-ready-restarted",
            ]
        );
    }

    #[test]
    fn newer_pods_go_first_and_ages_compare_on_a_log_scale() {
        let now = ts(1_000_000);
        let pods = vec![
            pod("old", "n", "Running", None, 0, 1000),
            pod("new", "n", "Running", None, 0, 999_000),
        ];
        assert_eq!(names(&to_delete(pods, &[], 1, now)), ["new"]);
        // 1000 s and 1010 s old are the same on a log scale: the UID decides.
        let pods = vec![
            pod("b", "n", "Running", None, 0, now.as_second() - 1000),
            pod("a", "n", "Running", None, 0, now.as_second() - 1010),
        ];
        assert_eq!(names(&to_delete(pods, &[], 1, now)), ["a"]);
    }

    #[test]
    fn pods_doubled_up_on_a_node_go_first() {
        let now = ts(1_000_000);
        let pods = vec![
            pod("alone", "n1", "Running", None, 0, 100),
            pod("crowded", "n2", "Running", None, 0, 100),
        ];
        let related = vec![
            pods[0].clone(),
            pods[1].clone(),
            pod("sibling", "n2", "Running", None, 0, 100),
        ];
        assert_eq!(names(&to_delete(pods, &related, 1, now)), ["crowded"]);
    }

    /// Ready times a little apart (one log-scale bucket) and equal ones
    /// mixed, with restarts: upstream's comparison is not transitive on
    /// such pods, and the standard sort panics on a comparison that is not.
    #[test]
    fn many_pods_ready_about_the_same_time_sort_consistently() {
        let now = ts(1_000_000);
        let pods: Vec<Arc<Pod>> = (0..200)
            .map(|i| {
                let ready = now.as_second() - 600 - (i * 37 % 5) * 50;
                let name = format!("p{:03}", i * 89 % 200);
                pod(&name, "n", "Running", Some(ready), (i * 7 % 3) as i32, 100)
            })
            .collect();
        let ordered = to_delete(pods.clone(), &pods, 199, now);
        assert_eq!(ordered.len(), 199);
        let key = |p: &Arc<Pod>| {
            let ready = ready_since(p).flatten().unwrap();
            (
                log_age(Some(ready), now),
                -max_restarts(p),
                p.metadata.uid.clone(),
            )
        };
        assert!(ordered.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod("p", "n", "Running", Some(100), 0, 0);
        assert!(is_available(&p, 0, ts(100)));
        assert!(!is_available(&p, 10, ts(110)));
        assert!(is_available(&p, 10, ts(111)));
        assert!(!is_available(
            &pod("q", "n", "Running", None, 0, 0),
            0,
            ts(1)
        ));
    }

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_at_the_first_failing_one() {
        let calls = AtomicUsize::new(0);
        let (done, result) = slow_start(10, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert_eq!((done, calls.load(Ordering::SeqCst)), (10, 10));
        assert!(result.is_ok());

        // Batches 1, 2, 4: the fourth call fails, so the batch of 4 ends it.
        let calls = AtomicUsize::new(0);
        let (done, result) = slow_start(20, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n == 3 {
                Err(Error::Failed("quota".into()))
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!((done, calls.load(Ordering::SeqCst)), (6, 7));
        assert_eq!(result.unwrap_err().to_string(), "quota");
    }
}
