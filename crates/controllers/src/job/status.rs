//! A Job's status through one sync: what its pods count for, and the
//! write-count-release protocol of upstream's
//! trackJobStatusAndRemoveFinalizers — finished pods are first listed in
//! `status.uncountedTerminatedPods`, then their finalizers are removed, then
//! they move to the `succeeded`/`failed` counters, so a crash at any step
//! neither loses nor double-counts a pod.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};

use super::{
    failurepolicy, has_finalizer, indexes, is_failed, is_indexed, is_terminating,
    only_replace_failed, perindex, phase, spec, suspended,
};
use crate::{Error, pods};

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
const SUSPENDED: &str = "Suspended";

/// A True condition of `type_`, probed and changed `now`.
pub fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The terminal condition `type_` an interim condition leads to, with its
/// reason and message.
fn following(interim: &JobCondition, type_: &str, now: Timestamp) -> JobCondition {
    condition(
        type_,
        interim.reason.as_deref().unwrap_or_default(),
        interim.message.as_deref().unwrap_or_default(),
        now,
    )
}

fn conditions(job: &Job) -> &[JobCondition] {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn true_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    conditions(job)
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The Job's terminal condition (Complete or Failed), if it has ended.
pub fn finished(job: &Job) -> Option<&JobCondition> {
    true_condition(job, COMPLETE).or_else(|| true_condition(job, FAILED))
}

/// Sets condition `type_` to `status` (upstream's ensureJobConditionStatus):
/// a change of status is a transition; a False condition never there is
/// not added. Returns whether anything changed.
fn ensure(
    list: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    match list.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status != status => {
            *c = condition(type_, reason, message, now);
            c.status = status.into();
            true
        }
        Some(c) if c.reason.as_deref() != Some(reason) || c.message.as_deref() != Some(message) => {
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            true
        }
        Some(_) => false,
        None if status == "True" => {
            list.push(condition(type_, reason, message, now));
            true
        }
        None => false,
    }
}

pub struct Tracker {
    pub job: Job,
    /// The pods the Job controls, finished or not.
    pub pods: Vec<Arc<Pod>>,
    /// Neither finished nor terminating.
    pub active: Vec<Arc<Pod>>,
    pub active_count: usize,
    pub ready: i32,
    pub terminating: i32,
    pub succeeded: i32,
    pub failed: i32,
    /// For Indexed Jobs: the indexes succeeded, counted or not.
    pub succeeded_indexes: BTreeSet<i32>,
    prev_succeeded_indexes: BTreeSet<i32>,
    /// For Indexed Jobs with `backoffLimitPerIndex`: the indexes failed.
    pub failed_indexes: Option<BTreeSet<i32>>,
    /// Per index, the failed pod its replacement takes its failure count
    /// from, which keeps its finalizer until then.
    pub awaiting: HashMap<i32, Arc<Pod>>,
    /// The end the Job has met (SuccessCriteriaMet, FailureTarget, or the
    /// Failed condition that follows FailureTarget).
    pub finished: Option<JobCondition>,
    /// Pods whose finalizer removal is under way (counted already).
    removing: HashSet<String>,
    changed: bool,
    event: Option<(Type, String, String)>,
    now: Timestamp,
}

fn uids(list: &Option<Vec<String>>) -> HashSet<String> {
    list.iter().flatten().cloned().collect()
}

impl Tracker {
    pub fn new(
        mut job: Job,
        pods_: Vec<Arc<Pod>>,
        removing: HashSet<String>,
        now: Timestamp,
    ) -> Self {
        let status = job.status.get_or_insert_with(JobStatus::default);
        status
            .uncounted_terminated_pods
            .get_or_insert_with(UncountedTerminatedPods::default);
        let mut changed = false;
        if status.start_time.is_none() && !suspended(&job) {
            job.status.get_or_insert_with(Default::default).start_time = Some(Time(now));
            changed = true;
        }
        let active: Vec<Arc<Pod>> = pods_
            .iter()
            .filter(|p| pods::is_active(p))
            .cloned()
            .collect();
        let ready = active.iter().filter(|p| pods::is_ready(p)).count() as i32;
        let terminating = pods_.iter().filter(|p| is_terminating(p)).count() as i32;
        let finished = true_condition(&job, SUCCESS_CRITERIA_MET)
            .cloned()
            .or_else(|| true_condition(&job, FAILURE_TARGET).map(|c| following(c, FAILED, now)));
        let mut t = Self {
            active_count: active.len(),
            active,
            ready,
            terminating,
            succeeded: 0,
            failed: 0,
            succeeded_indexes: BTreeSet::new(),
            prev_succeeded_indexes: BTreeSet::new(),
            failed_indexes: None,
            awaiting: HashMap::new(),
            finished,
            removing,
            changed,
            event: None,
            now,
            pods: pods_,
            job,
        };
        let (new_succeeded, new_failed) = t.new_finished();
        let status = t.status().clone();
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        t.succeeded = status.succeeded.unwrap_or(0)
            + (new_succeeded.len() + uids(&uncounted.succeeded).len()) as i32;
        // Failures the pod failure policy ignores never count.
        let new_failed = new_failed
            .iter()
            .filter(|p| failurepolicy::judge(&t.job, p).counts())
            .count();
        t.failed = status.failed.unwrap_or(0) + (new_failed + uids(&uncounted.failed).len()) as i32;
        if is_indexed(&t.job) {
            let completions = spec(&t.job).completions.unwrap_or(0);
            t.prev_succeeded_indexes = indexes::parse(
                status.completed_indexes.as_deref().unwrap_or_default(),
                completions,
            );
            t.succeeded_indexes = t.prev_succeeded_indexes.clone();
            for p in &t.pods {
                if phase(p) == "Succeeded"
                    && let Some(i) = indexes::of(p).filter(|i| *i < completions)
                {
                    t.succeeded_indexes.insert(i);
                }
            }
            t.succeeded = t.succeeded_indexes.len() as i32;
            if let Some(limit) = perindex::limit(&t.job) {
                let held: Vec<Arc<Pod>> = t.pods.iter().filter(|p| t.held(p)).cloned().collect();
                let failed = perindex::failed_indexes(&t.job, &held, limit);
                t.awaiting = perindex::awaiting_replacement(
                    &t.job,
                    &held,
                    &t.active,
                    &t.succeeded_indexes,
                    &failed,
                );
                t.failed_indexes = Some(failed);
            }
        }
        t
    }

    fn status(&self) -> &JobStatus {
        self.job.status.as_ref().expect("set on creation")
    }

    fn status_mut(&mut self) -> &mut JobStatus {
        self.job.status.get_or_insert_with(Default::default)
    }

    fn uncounted(&self) -> UncountedTerminatedPods {
        self.status()
            .uncounted_terminated_pods
            .clone()
            .unwrap_or_default()
    }

    /// Whether the pod holds the finalizer and no removal of it is under
    /// way: its end is not counted yet.
    fn held(&self, p: &Pod) -> bool {
        has_finalizer(p)
            && !self
                .removing
                .contains(p.metadata.uid.as_deref().unwrap_or_default())
    }

    /// Pods held (see [`Self::held`]) whose end no counter or uncounted
    /// list has yet: succeeded, and failed.
    pub fn new_finished(&self) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
        let uncounted = self.uncounted();
        let (done, failed) = (uids(&uncounted.succeeded), uids(&uncounted.failed));
        let completions = spec(&self.job).completions.unwrap_or(0);
        let valid = |p: &Arc<Pod>| {
            self.held(p)
                && (!is_indexed(&self.job) || indexes::of(p).is_some_and(|i| i < completions))
        };
        let uid = |p: &Arc<Pod>| p.metadata.uid.clone().unwrap_or_default();
        let succeeded = self
            .pods
            .iter()
            .filter(|p| valid(p) && !done.contains(&uid(p)) && phase(p) == "Succeeded")
            .cloned()
            .collect();
        let failed = self
            .pods
            .iter()
            .filter(|p| valid(p) && !failed.contains(&uid(p)) && is_failed(p, &self.job))
            .cloned()
            .collect();
        (succeeded, failed)
    }

    /// `n` active pods were deleted.
    pub fn deleted(&mut self, gone: &[Arc<Pod>]) {
        self.active_count -= gone.len().min(self.active_count);
        self.terminating += gone.len() as i32;
        self.ready -= gone.iter().filter(|p| pods::is_ready(p)).count() as i32;
    }

    /// `n` pods were created.
    pub fn created(&mut self, n: usize) {
        self.active_count += n;
    }

    /// The lowest `n` indexes neither succeeded, failed nor running (nor
    /// terminating, when only failed pods are replaced).
    pub fn pending_indexes(&self, n: usize) -> Vec<i32> {
        let mut taken: HashSet<i32> = self.active.iter().filter_map(|p| indexes::of(p)).collect();
        if only_replace_failed(&self.job) {
            taken.extend(
                self.pods
                    .iter()
                    .filter(|p| is_terminating(p))
                    .filter_map(|p| indexes::of(p)),
            );
        }
        taken.extend(self.failed_indexes.iter().flatten());
        super::pending(
            spec(&self.job).completions.unwrap_or(0),
            &self.succeeded_indexes,
            &taken,
            n,
        )
    }

    /// The Suspended condition follows `spec.suspend`; resuming restarts
    /// the clock activeDeadlineSeconds counts from.
    pub fn update_suspended(&mut self, recorder: &Recorder, now: Timestamp) {
        let suspend = suspended(&self.job);
        let reference = self.job.object_ref(&());
        let list = self.status_mut().conditions.get_or_insert_with(Vec::new);
        if suspend {
            if ensure(
                list,
                SUSPENDED,
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            ) {
                self.changed = true;
                recorder.record(reference, Type::Normal, "Suspended", "Job suspended".into());
            }
        } else if ensure(list, SUSPENDED, "False", "JobResumed", "Job resumed", now) {
            self.changed = true;
            recorder.record(reference, Type::Normal, "Resumed", "Job resumed".into());
            self.status_mut().start_time = Some(Time(now));
        }
    }

    /// Moves the uncounted pods whose finalizer is gone to the counters.
    fn count_released(&mut self, with_finalizer: &HashSet<String>) -> bool {
        let status = self.status_mut();
        let uncounted = status
            .uncounted_terminated_pods
            .get_or_insert_with(Default::default);
        let mut changed = false;
        let mut move_out = |list: &mut Option<Vec<String>>, counter: &mut Option<i32>| {
            let before = list.as_ref().map_or(0, Vec::len);
            let kept: Vec<String> = list
                .iter()
                .flatten()
                .filter(|u| with_finalizer.contains(*u))
                .cloned()
                .collect();
            let released = before - kept.len();
            if released > 0 {
                *counter = Some(counter.unwrap_or(0) + released as i32);
                changed = true;
            }
            *list = (!kept.is_empty()).then_some(kept);
        };
        let (mut s, mut f) = (status.succeeded, status.failed);
        move_out(&mut uncounted.succeeded, &mut s);
        move_out(&mut uncounted.failed, &mut f);
        status.succeeded = s;
        status.failed = f;
        changed
    }

    async fn write(&mut self, api: &Api<Job>) -> Result<(), Error> {
        // Upstream omits what is empty.
        let status = self.status_mut();
        if status.conditions.as_ref().is_some_and(Vec::is_empty) {
            status.conditions = None;
        }
        if status.completed_indexes.as_deref() == Some("") {
            status.completed_indexes = None;
        }
        let name = self.job.name_any();
        let written = api
            .replace_status(&name, &PostParams::default(), &self.job)
            .await?;
        self.job.metadata.resource_version = written.metadata.resource_version;
        Ok(())
    }

    /// Puts a newly met interim end (FailureTarget or SuccessCriteriaMet)
    /// in the status, and makes the end the terminal condition it leads
    /// to. Returns whether the status changed.
    fn note_interim(&mut self) -> bool {
        let Some(c) = self.finished.clone() else {
            return false;
        };
        let is_new = c.type_ == FAILURE_TARGET
            || (c.type_ == SUCCESS_CRITERIA_MET
                && true_condition(&self.job, SUCCESS_CRITERIA_MET).is_none());
        if is_new {
            self.status_mut()
                .conditions
                .get_or_insert_with(Vec::new)
                .push(c.clone());
        }
        let now = self.now;
        match c.type_.as_str() {
            FAILURE_TARGET => self.finished = Some(following(&c, FAILED, now)),
            SUCCESS_CRITERIA_MET => self.finished = Some(following(&c, COMPLETE, now)),
            _ => {}
        }
        is_new
    }

    /// Writes a newly met end before the Job's remaining pods are stopped,
    /// so a write refused for a stale Job stops none, and those stopped
    /// are let go of in the same sync: a later one would see them
    /// terminating, which counts as failed.
    pub async fn record_end(&mut self, api: &Api<Job>) -> Result<(), Error> {
        if self.note_interim() {
            self.write(api).await?;
        }
        Ok(())
    }

    /// Counts finished pods and releases them, writing the status as
    /// needed, and declares the Job Complete or Failed once nothing of it
    /// is left to count. Returns the UIDs whose finalizer was removed.
    pub async fn flush<F, Fut>(&mut self, api: &Api<Job>, release: F) -> Result<Vec<String>, Error>
    where
        F: FnOnce(Vec<Arc<Pod>>) -> Fut,
        Fut: Future<Output = (Vec<String>, Option<Error>)>,
    {
        let mut needs_write = self.changed;
        {
            let active = self.active_count as i32;
            let (ready, terminating) = (self.ready.max(0), self.terminating.max(0));
            let status = self.status_mut();
            if status.active.unwrap_or(0) != active
                || status.ready != Some(ready)
                || status.terminating != Some(terminating)
            {
                needs_write = true;
            }
            status.active = (active > 0).then_some(active);
            status.ready = Some(ready);
            status.terminating = Some(terminating);
        }
        let indexed = is_indexed(&self.job);
        let completions = spec(&self.job).completions.unwrap_or(0);
        let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        let mut with_finalizer: HashSet<String> = self
            .pods
            .iter()
            .filter(|p| self.held(p))
            .map(|p| uid(p))
            .collect();
        if self.count_released(&with_finalizer) {
            needs_write = true;
        }
        let ending = self.finished.is_some();
        let failing = self
            .finished
            .as_ref()
            .is_some_and(|c| matches!(c.type_.as_str(), FAILURE_TARGET | FAILED));
        let job_deleting = self.job.metadata.deletion_timestamp.is_some();
        let mut to_release = Vec::new();
        let mut uncounted = self.uncounted();
        let (mut done, mut failed) = (uids(&uncounted.succeeded), uids(&uncounted.failed));
        let mut pods_ = self.pods.clone();
        if indexed {
            pods_.sort_by_key(|p| indexes::of(p));
        }
        for p in &pods_ {
            if !with_finalizer.contains(&uid(p)) {
                continue;
            }
            let considered_failed = is_failed(p, &self.job);
            if !(job_deleting || ending || phase(p) == "Succeeded" || considered_failed) {
                continue;
            }
            let awaited = self
                .awaiting
                .values()
                .any(|a| a.metadata.uid == p.metadata.uid);
            if awaited && !(job_deleting || ending) {
                continue;
            }
            to_release.push(p.clone());
            if phase(p) == "Succeeded" && !failed.contains(&uid(p)) {
                if indexed {
                    if let Some(i) = indexes::of(p).filter(|i| *i < completions)
                        && !self.prev_succeeded_indexes.contains(&i)
                    {
                        needs_write = true;
                    }
                } else if done.insert(uid(p)) {
                    uncounted
                        .succeeded
                        .get_or_insert_with(Vec::new)
                        .push(uid(p));
                    needs_write = true;
                }
            } else if (considered_failed || failing)
                && !failed.contains(&uid(p))
                && (!indexed || indexes::of(p).is_some_and(|i| i < completions))
                && failurepolicy::judge(&self.job, p).counts()
            {
                failed.insert(uid(p));
                uncounted.failed.get_or_insert_with(Vec::new).push(uid(p));
                needs_write = true;
            }
        }
        self.status_mut().uncounted_terminated_pods = Some(uncounted);
        if indexed {
            let completed = indexes::format(&self.succeeded_indexes);
            let total = self.succeeded_indexes.len() as i32;
            let status = self.status_mut();
            if status.completed_indexes.as_deref().unwrap_or_default() != completed {
                needs_write = true;
            }
            status.succeeded = Some(total);
            status.completed_indexes = Some(completed);
            let failed = self.failed_indexes.as_ref().map(indexes::format);
            let status = self.status_mut();
            if status.failed_indexes != failed {
                status.failed_indexes = failed;
                needs_write = true;
            }
        }
        if self.note_interim() {
            needs_write = true;
        }
        if needs_write {
            self.write(api).await?;
            needs_write = false;
        }
        let mut released = Vec::new();
        let mut failure = None;
        if !to_release.is_empty() {
            let (done_uids, err) = release(to_release).await;
            for u in &done_uids {
                with_finalizer.remove(u);
            }
            released = done_uids;
            failure = err;
        }
        if self.count_released(&with_finalizer) {
            needs_write = true;
        }
        let finished = failure.is_none() && self.enact_finished();
        if needs_write || finished {
            self.write(api).await?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// Puts the terminal condition in place once no pod is left uncounted
    /// or terminating (upstream's enactJobFinished).
    fn enact_finished(&mut self) -> bool {
        let Some(c) = self.finished.clone() else {
            return false;
        };
        let uncounted = self.uncounted();
        if uncounted.succeeded.is_some_and(|l| !l.is_empty())
            || uncounted.failed.is_some_and(|l| !l.is_empty())
            || self.terminating > 0
        {
            return false;
        }
        let now = self.now;
        let reason = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        let list = self.status_mut().conditions.get_or_insert_with(Vec::new);
        ensure(list, &c.type_, "True", &reason, &message, now);
        if c.type_ == COMPLETE {
            self.status_mut().completion_time = Some(Time(now));
            self.event = Some((Type::Normal, "Completed".into(), "Job completed".into()));
        } else {
            self.event = Some((Type::Warning, reason, message));
        }
        true
    }

    /// The event the Job's end makes, once it ended this sync.
    pub fn finished_event(&mut self) -> Option<(Type, String, String)> {
        self.event.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_stopped_and_released_at_the_jobs_end_fail_no_index() {
        // The Job failed by index 1; it deleted indexes 0 and 2 and removed
        // their finalizers, but the cache still shows them terminating with
        // the finalizer (which, with backoffLimitPerIndex 0, would fail them).
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns"},
            "spec": {"completionMode": "Indexed", "completions": 3, "parallelism": 3,
                     "backoffLimitPerIndex": 0, "maxFailedIndexes": 0,
                     "template": {"spec": {"containers": [{"name": "main"}]}}},
            "status": {"failedIndexes": "1", "conditions": [{"type": "FailureTarget",
                       "status": "True", "reason": "MaxFailedIndexesExceeded"}]}
        }))
        .unwrap();
        let stopped = |uid: &str, index: i32| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": uid, "uid": uid, "namespace": "ns",
                        "deletionTimestamp": "2026-12-08T00:00:00Z",
                        "finalizers": [super::super::TRACKING_FINALIZER],
                        "annotations": {indexes::COMPLETION_INDEX: index.to_string()}},
                    "status": {"phase": "Running"}
                }))
                .unwrap(),
            )
        };
        let pods = vec![stopped("zero", 0), stopped("two", 2)];
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let released = HashSet::from(["zero".to_string(), "two".to_string()]);
        let t = Tracker::new(job.clone(), pods.clone(), released, now);
        assert_eq!(t.failed_indexes, Some(BTreeSet::from([1])));
        assert!(t.new_finished().1.is_empty());
        // A pod whose finalizer is still held does fail its index.
        let t = Tracker::new(job, pods, HashSet::from(["zero".to_string()]), now);
        assert_eq!(t.failed_indexes, Some(BTreeSet::from([1, 2])));
    }
}
