//! `backoffLimitPerIndex` (upstream's per-index backoff): each index of an
//! Indexed Job counts its own failures in its pods'
//! `batch.kubernetes.io/job-index-failure-count` annotation, each
//! replacement carrying one more than the pod it replaces; an index whose
//! failures pass the limit (or whose pod a FailIndex rule matched) is
//! failed for good, listed in `status.failedIndexes` and never retried.
//! The last failed pod of an index holds its finalizer until its
//! replacement exists, so the count is never lost with it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::failurepolicy::{self, Verdict};
use super::{Backoff, finish_time, indexes, is_failed, spec};

/// The failures of the pod's index before it, counted toward the limit.
pub const FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// The failures of the pod's index before it that the policy ignored.
pub const IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

/// The Job's per-index limit, if it has one.
pub fn limit(job: &Job) -> Option<i32> {
    spec(job).backoff_limit_per_index
}

/// An annotation's count; 0 when missing or not a count (a user may have
/// set anything).
fn count(pod: &Pod, annotation: &str) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(0)
}

/// Every failure of the pod's index before it, ignored or not.
fn absolute_count(pod: &Pod) -> i32 {
    count(pod, FAILURE_COUNT).saturating_add(count(pod, IGNORED_FAILURE_COUNT))
}

/// Whether the pod's failure fails its index: a FailIndex rule matched,
/// or it counted and its index had used up its limit.
pub fn fails_index(job: &Job, pod: &Pod, limit: i32) -> bool {
    if !is_failed(pod, job) {
        return false;
    }
    match failurepolicy::judge(job, pod) {
        Verdict::FailIndex => true,
        Verdict::Ignore => false,
        Verdict::Count | Verdict::FailJob(_) => count(pod, FAILURE_COUNT) >= limit,
    }
}

/// The failed indexes: those `status.failedIndexes` lists and those whose
/// pods, not yet counted (`held`: holding the finalizer, no removal under
/// way), failed them. A pod already counted may still look held in a stale
/// cache, and once stopped by the Job's end it looks failed.
pub fn failed_indexes(job: &Job, held: &[Arc<Pod>], limit: i32) -> BTreeSet<i32> {
    let completions = spec(job).completions.unwrap_or(0);
    let listed = job
        .status
        .as_ref()
        .and_then(|s| s.failed_indexes.as_deref())
        .unwrap_or_default();
    let mut failed = indexes::parse(listed, completions);
    for p in held {
        if let Some(i) = indexes::of(p).filter(|i| *i < completions)
            && fails_index(job, p, limit)
        {
            failed.insert(i);
        }
    }
    failed
}

/// Per index neither done nor running, its latest failed pod not yet
/// counted, which waits for its replacement before letting go of its
/// finalizer (upstream's podsWithDelayedDeletionPerIndex).
pub fn awaiting_replacement(
    job: &Job,
    held: &[Arc<Pod>],
    active: &[Arc<Pod>],
    succeeded: &BTreeSet<i32>,
    failed: &BTreeSet<i32>,
) -> HashMap<i32, Arc<Pod>> {
    let completions = spec(job).completions.unwrap_or(0);
    let running: HashSet<i32> = active.iter().filter_map(|p| indexes::of(p)).collect();
    let mut latest: HashMap<i32, Arc<Pod>> = HashMap::new();
    for p in held {
        if !is_failed(p, job) {
            continue;
        }
        let Some(i) = indexes::of(p).filter(|i| *i < completions) else {
            continue;
        };
        if succeeded.contains(&i) || failed.contains(&i) || running.contains(&i) {
            continue;
        }
        let newer = latest.get(&i).is_none_or(|last| {
            absolute_count(last) <= absolute_count(p) && finish_time(p) >= finish_time(last)
        });
        if newer {
            latest.insert(i, p.clone());
        }
    }
    latest
}

/// The failure counts a pod replacing `replaced` starts with.
pub fn counts_after(job: &Job, replaced: Option<&Pod>) -> (i32, i32) {
    let Some(pod) = replaced else {
        return (0, 0);
    };
    let (failures, ignored) = (count(pod, FAILURE_COUNT), count(pod, IGNORED_FAILURE_COUNT));
    if failurepolicy::judge(job, pod).counts() {
        (failures.saturating_add(1), ignored)
    } else {
        (failures, ignored.saturating_add(1))
    }
}

/// How long the index of `replaced` waits before its replacement: the
/// Job-wide backoff, by the index's own failures.
pub fn wait(replaced: Option<&Pod>, now: Timestamp) -> Duration {
    let Some(pod) = replaced else {
        return Duration::ZERO;
    };
    Backoff {
        failures: absolute_count(pod).saturating_add(1) as u32,
        last_failure: finish_time(pod),
    }
    .remaining(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(policy: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns"},
            "spec": {"completionMode": "Indexed", "completions": 4, "backoffLimitPerIndex": 1,
                     "podFailurePolicy": policy,
                     "template": {"spec": {"containers": [{"name": "main"}]}}},
            "status": {"failedIndexes": "3"}
        }))
        .unwrap()
    }

    fn pod(uid: &str, index: i32, failures: i32, exit: i32, finished: i64) -> Arc<Pod> {
        let at = Timestamp::from_second(finished).unwrap().to_string();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "uid": uid, "namespace": "ns",
                    "finalizers": [super::super::TRACKING_FINALIZER],
                    "annotations": {indexes::COMPLETION_INDEX: index.to_string(),
                                    FAILURE_COUNT: failures.to_string()}},
                "status": {"phase": if exit == 0 { "Succeeded" } else { "Failed" },
                    "containerStatuses": [{"name": "main", "image": "i", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": exit, "finishedAt": at}}}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn an_index_fails_past_its_limit_or_by_a_fail_index_rule() {
        let j = job(json!({"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}]}));
        let pods = [
            pod("first-try", 0, 0, 1, 10),
            pod("second-try", 1, 1, 1, 10),
            pod("fatal", 2, 0, 42, 10),
        ];
        let failed = failed_indexes(&j, &pods, 1);
        assert_eq!(failed, BTreeSet::from([1, 2, 3]));
        // Index 0 waits for its second try, which counts one failure.
        let waiting = awaiting_replacement(&j, &pods, &[], &BTreeSet::new(), &failed);
        assert_eq!(waiting.keys().collect::<Vec<_>>(), [&0]);
        assert_eq!(counts_after(&j, Some(&waiting[&0])), (1, 0));
        assert_eq!(counts_after(&j, Some(&pod("ignored", 0, 1, 3, 10))), (1, 1));
        assert_eq!(counts_after(&j, None), (0, 0));
        // Its first retry waits out the first backoff from the failure.
        let at = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(wait(Some(&waiting[&0]), at(14)), Duration::from_secs(6));
        assert_eq!(
            wait(Some(&pod("again", 0, 1, 1, 10)), at(10)),
            Duration::from_secs(20)
        );
    }
}
