//! The Job controller (upstream's job-controller): pods run to completion,
//! `parallelism` at a time, until `completions` succeed (each index once,
//! for Indexed Jobs, or as their `successPolicy` says), or the Job fails by
//! `backoffLimit`, `activeDeadlineSeconds` or, for Indexed Jobs with
//! `backoffLimitPerIndex`, by failed indexes. Every pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer until its end is counted in
//! the status, through `status.uncountedTerminatedPods`, so no finished pod
//! is lost or counted twice. A Job that has met its end first reports the
//! interim SuccessCriteriaMet or FailureTarget condition, and Complete or
//! Failed once its pods are gone.

mod failurepolicy;
pub mod indexes;
mod perindex;
mod status;
mod successpolicy;

pub use status::finished;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};
use serde_json::json;

use crate::expectations::Expectations;
use crate::ownerref::{self, Claimer};
use crate::podowners::{self, OwnsPods, PodOwners, Selecting, key};
use crate::{Change, Context, Error, api_message, is_not_found, pods, runner};
use status::Tracker;

pub const COMPONENT: &str = "job-controller";

/// Held by every pod of a Job until the Job's status has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// At most this many pods are created or deleted in one sync.
const BURST: usize = 500;

/// The delay before replacing a failed pod, doubling with each failure
/// since the last success, up to the maximum.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

impl Selecting for Job {
    fn selector(&self) -> Result<Selector, String> {
        let s = self.spec.as_ref().and_then(|s| s.selector.clone());
        match s {
            Some(s) => Selector::try_from(s).map_err(|e| e.to_string()),
            None => Err("the Job has no selector".into()),
        }
    }
}

/// Failures since the last success, and when the last one ended: how long
/// to wait before replacing a failed pod.
#[derive(Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    last_failure: Option<Timestamp>,
}

impl Backoff {
    fn remaining(&self, now: Timestamp) -> Duration {
        let Some(last) = self.last_failure.filter(|_| self.failures > 0) else {
            return Duration::ZERO;
        };
        let delay = FAILURE_BACKOFF
            .saturating_mul(1 << (self.failures - 1).min(10))
            .min(MAX_FAILURE_BACKOFF);
        let elapsed = Duration::try_from(now.duration_since(last)).unwrap_or_default();
        delay.saturating_sub(elapsed)
    }
}

pub(crate) struct Shared {
    client: kube::Client,
    recorder: Recorder,
    expectations: Expectations,
    jobs: Store<Job>,
    pods: Store<Pod>,
    /// Per Job, the pods whose finalizer this controller removed but whose
    /// removal the cache has not shown yet (upstream's finalizer
    /// expectations): they are counted already.
    removing: Mutex<HashMap<String, HashSet<String>>>,
    backoffs: Mutex<HashMap<String, Backoff>>,
}

pub async fn run(ctx: Arc<Context>) {
    let jobs = ctx.informers.get::<Job>();
    let pod_informer = ctx.informers.get::<Pod>();
    jobs.synced().await;
    pod_informer.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        expectations: Expectations::default(),
        jobs: jobs.store(),
        pods: pod_informer.store(),
        removing: Mutex::default(),
        backoffs: Mutex::default(),
    });
    let controller = podowners::controller(&shared, &jobs, &pod_informer);
    runner::run(COMPONENT, controller, reconcile, shared).await;
}

/// When the Job completed or failed (its terminal condition's transition).
pub fn finished_at(job: &Job) -> Option<Timestamp> {
    status::finished(job)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

impl OwnsPods for Shared {
    type Owner = Job;

    fn owners(&self) -> &Store<Job> {
        &self.jobs
    }

    fn expectations(&self) -> &Expectations {
        &self.expectations
    }

    fn pod_changed(&self, change: Change<Pod>) -> Vec<ObjectRef<Job>> {
        let pod = change.object().clone();
        // A finalizer seen gone (or the pod gone) fulfils its removal.
        if matches!(change, Change::Deleted(_)) || !has_finalizer(&pod) {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            for uids in Self::lock(&self.removing).values_mut() {
                uids.remove(&uid);
            }
        }
        let router = PodOwners {
            owners: &self.jobs,
            expectations: &self.expectations,
        };
        let refs = router.pod_changed(change);
        // A terminating pod of a Job that is gone keeps its finalizer
        // forever unless someone lets go of it.
        if refs.is_empty()
            && has_finalizer(&pod)
            && pod.metadata.deletion_timestamp.is_some()
            && ownerref::controller_of(&pod.metadata)
                .is_some_and(|r| r.kind == "Job" && router.resolve(&pod, r).is_none())
        {
            self.release(vec![pod]);
        }
        refs
    }

    /// A deleted Job lets go of its pods' finalizers (upstream's
    /// cleanupPodFinalizers).
    fn owner_deleted(&self, job: &Job) {
        let job_key = key(&job.metadata);
        self.expectations.forget(&job_key);
        Self::lock(&self.removing).remove(&job_key);
        Self::lock(&self.backoffs).remove(&job_key);
        let uid = job.metadata.uid.clone();
        let held: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace == job.metadata.namespace && has_finalizer(p))
            .filter(|p| {
                ownerref::controller_of(&p.metadata).is_some_and(|r| Some(&r.uid) == uid.as_ref())
            })
            .collect();
        self.release(held);
    }
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, held: Vec<Arc<Pod>>) {
        if held.is_empty() {
            return;
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            for pod in held {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                if let Err(e) = remove_finalizer(&api, &pod).await {
                    tracing::warn!(controller = COMPONENT, pod = %pod.name_any(), "releasing: {e}");
                }
            }
        });
    }

    fn being_removed(&self, job_key: &str) -> HashSet<String> {
        Self::lock(&self.removing)
            .get(job_key)
            .cloned()
            .unwrap_or_default()
    }

    fn expect_removals(&self, job_key: &str, uids: impl IntoIterator<Item = String>) {
        Self::lock(&self.removing)
            .entry(job_key.to_owned())
            .or_default()
            .extend(uids);
    }
}

/// Removes the tracking finalizer (upstream's strategic-merge patch).
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    if !has_finalizer(pod) {
        return Ok(());
    }
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn spec(job: &Job) -> &k8s_openapi::api::batch::v1::JobSpec {
    static EMPTY: std::sync::OnceLock<k8s_openapi::api::batch::v1::JobSpec> =
        std::sync::OnceLock::new();
    job.spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn is_indexed(job: &Job) -> bool {
    spec(job).completion_mode.as_deref() == Some("Indexed")
}

fn suspended(job: &Job) -> bool {
    spec(job).suspend == Some(true)
}

/// Whether a pod is replaced only once it has failed, not while it
/// terminates: so asked, or a pod failure policy needs its exit codes.
fn only_replace_failed(job: &Job) -> bool {
    spec(job).pod_replacement_policy.as_deref() == Some("Failed")
        || spec(job).pod_failure_policy.is_some()
}

/// Failed, or (unless only failed pods are replaced) deleted before it
/// could succeed: an orphan may never reach the Failed phase.
fn is_failed(pod: &Pod, job: &Job) -> bool {
    if phase(pod) == "Failed" {
        return true;
    }
    if only_replace_failed(job) {
        return false;
    }
    pod.metadata.deletion_timestamp.is_some() && phase(pod) != "Succeeded"
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// When a finished pod ended: its containers' last finish, else its
/// Ready condition's last change, else its creation.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Restarts of containers in running or pending pods reached the limit
/// (restartPolicy OnFailure, where pods never fail).
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>]) -> bool {
    let template = spec(job).template.spec.as_ref();
    if template.and_then(|s| s.restart_policy.as_deref()) != Some("OnFailure") {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    let limit = spec(job).backoff_limit.unwrap_or(6);
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

async fn reconcile(job: Arc<Job>, shared: Arc<Shared>) -> Result<Action, Error> {
    let after = sync_job((*job).clone(), &shared).await?;
    Ok(match after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Upstream's syncJob; returns when to look again (a deadline or a backoff
/// is pending).
async fn sync_job(job: Job, shared: &Shared) -> Result<Option<Duration>, Error> {
    if status::finished(&job).is_some() {
        return Ok(None);
    }
    let job_key = key(&job.metadata);
    let ns = job.namespace().unwrap_or_default();
    let selector = match job.selector() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(controller = COMPONENT, "{job_key}: {e}");
            return Ok(None);
        }
    };
    let satisfied = shared.expectations.satisfied(&job_key);
    let pod_api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(shared.client.clone(), &ns);
    let candidates: Vec<Arc<Pod>> = shared
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let pods = Claimer::new(&job, &selector, jobs.clone())
        .claim(candidates, &pod_api)
        .await?;
    let now = Timestamp::now();
    let mut tracker = Tracker::new(job, pods, shared.being_removed(&job_key), now);
    let mut requeue = None;

    // Failures this sync first sees restart the replacement backoff.
    {
        let (new_succeeded, new_failed) = tracker.new_finished();
        let mut backoffs = Shared::lock(&shared.backoffs);
        let b = backoffs.entry(job_key.clone()).or_default();
        if !new_succeeded.is_empty() {
            *b = Backoff::default();
        }
        if !new_failed.is_empty() {
            b.failures += new_failed.len() as u32;
            b.last_failure = new_failed
                .iter()
                .filter_map(|p| finish_time(p))
                .max()
                .or(Some(now));
        }
    }

    let job = &tracker.job;
    if tracker.finished.is_none() {
        let limit = spec(job).backoff_limit.unwrap_or(6);
        // A failure the policy says fails the Job is recorded in the interim
        // condition before any finalizer goes, so its message survives.
        let fail_job = tracker
            .pods
            .iter()
            .filter(|p| is_failed(p, job))
            .find_map(|p| match failurepolicy::judge(job, p) {
                failurepolicy::Verdict::FailJob(message) => Some(message),
                _ => None,
            });
        if let Some(message) = fail_job {
            tracker.finished = Some(status::condition(
                status::FAILURE_TARGET,
                "PodFailurePolicy",
                &message,
                now,
            ));
        } else if tracker.failed > limit || past_backoff_limit_on_failure(job, &tracker.pods) {
            tracker.finished = Some(status::condition(
                status::FAILURE_TARGET,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
        } else if let Some(deadline) = active_deadline(job) {
            if deadline <= now {
                tracker.finished = Some(status::condition(
                    status::FAILURE_TARGET,
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                ));
            } else {
                requeue =
                    Some(Duration::try_from(deadline.duration_since(now)).unwrap_or_default());
            }
        }
    }
    if tracker.finished.is_none() {
        tracker.finished = indexed_end(&tracker, now);
    }

    let mut failure = None;
    if tracker.finished.is_some() {
        tracker.record_end(&jobs).await?;
        let active = tracker.active.clone();
        let (deleted, err) = delete_pods(shared, &tracker.job, &active, false).await;
        if deleted.len() != active.len() || !satisfied {
            // Pods may remain that the cache has not shown yet.
            tracker.finished = None;
        }
        tracker.deleted(&deleted);
        failure = err;
    } else {
        let mut managed = false;
        if satisfied && tracker.job.metadata.deletion_timestamp.is_none() {
            match manage(shared, &mut tracker, &job_key, now).await {
                Ok(wait) => requeue = min_some(requeue, wait),
                Err(e) => failure = Some(e),
            }
            managed = true;
        }
        let job = &tracker.job;
        let complete = match spec(job).completions {
            None => tracker.succeeded > 0 && tracker.active_count == 0,
            Some(c) => tracker.succeeded >= c && tracker.active_count == 0,
        };
        if complete {
            tracker.finished = Some(status::condition(
                status::SUCCESS_CRITERIA_MET,
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else if managed {
            tracker.update_suspended(&shared.recorder, now);
        }
    }

    let removed = tracker
        .flush(&jobs, |pods| remove_finalizers(shared, pods))
        .await?;
    shared.expect_removals(&job_key, removed);
    if let Some(event) = tracker.finished_event() {
        let (type_, reason, message) = event;
        shared
            .recorder
            .record(tracker.job.object_ref(&()), type_, &reason, message);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(requeue),
    }
}

/// The end an Indexed Job's own indexes make: too many failed
/// (MaxFailedIndexesExceeded), every index done with some failed
/// (FailedIndexes), or its success policy met.
fn indexed_end(
    tracker: &Tracker,
    now: Timestamp,
) -> Option<k8s_openapi::api::batch::v1::JobCondition> {
    let job = &tracker.job;
    if !is_indexed(job) {
        return None;
    }
    if let Some(failed) = &tracker.failed_indexes {
        let failed = failed.len();
        let completions = spec(job).completions.unwrap_or(0).max(0) as usize;
        if spec(job)
            .max_failed_indexes
            .is_some_and(|max| failed > max.max(0) as usize)
        {
            return Some(status::condition(
                status::FAILURE_TARGET,
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
                now,
            ));
        }
        if failed > 0 && failed + tracker.succeeded_indexes.len() >= completions {
            return Some(status::condition(
                status::FAILURE_TARGET,
                "FailedIndexes",
                "Job has failed indexes",
                now,
            ));
        }
    }
    let message = successpolicy::met(job, &tracker.succeeded_indexes)?;
    Some(status::condition(
        status::SUCCESS_CRITERIA_MET,
        "SuccessPolicy",
        &message,
        now,
    ))
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When a running Job's activeDeadlineSeconds run out (never while suspended).
fn active_deadline(job: &Job) -> Option<Timestamp> {
    let seconds = spec(job).active_deadline_seconds?;
    if suspended(job) {
        return None;
    }
    let start = job.status.as_ref()?.start_time.as_ref()?.0;
    start.checked_add(SignedDuration::from_secs(seconds)).ok()
}

/// Removes the tracking finalizer from each pod; the UIDs of those done.
async fn remove_finalizers(shared: &Shared, pods: Vec<Arc<Pod>>) -> (Vec<String>, Option<Error>) {
    let results = join_all(pods.iter().map(|p| async move {
        let api: Api<Pod> =
            Api::namespaced(shared.client.clone(), &p.namespace().unwrap_or_default());
        (p, remove_finalizer(&api, p).await)
    }))
    .await;
    let mut done = Vec::new();
    let mut failure = None;
    for (p, result) in results {
        match result {
            Ok(()) => done.push(p.metadata.uid.clone().unwrap_or_default()),
            Err(e) => {
                failure.get_or_insert(Error::Failed(format!(
                    "removing tracking finalizer: {}",
                    api_message(&e)
                )));
            }
        }
    }
    (done, failure)
}

/// Deletes `doomed`, recording it; with `expect`, as expectations the
/// informer fulfils. Returns those gone, and the first failure.
async fn delete_pods(
    shared: &Shared,
    job: &Job,
    doomed: &[Arc<Pod>],
    expect: bool,
) -> (Vec<Arc<Pod>>, Option<Error>) {
    let job_key = key(&job.metadata);
    if expect {
        shared
            .expectations
            .expect_deletions(&job_key, doomed.iter().map(|p| key(&p.metadata)).collect());
    }
    let api: Api<Pod> =
        Api::namespaced(shared.client.clone(), &job.namespace().unwrap_or_default());
    let results = join_all(doomed.iter().map(|p| {
        let api = api.clone();
        async move { (p, api.delete(&p.name_any(), &DeleteParams::default()).await) }
    }))
    .await;
    let mut deleted = Vec::new();
    let mut failure = None;
    for (p, result) in results {
        match result {
            Ok(_) => {
                deleted.push(p.clone());
                shared.recorder.record(
                    job.object_ref(&()),
                    Type::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", p.name_any()),
                );
            }
            Err(e) => {
                if expect {
                    shared
                        .expectations
                        .deletion_observed(&job_key, &key(&p.metadata));
                }
                if is_not_found(&e) {
                    deleted.push(p.clone());
                    continue;
                }
                shared.recorder.record(
                    job.object_ref(&()),
                    Type::Warning,
                    "FailedDelete",
                    format!("Error deleting: {}", api_message(&e)),
                );
                failure.get_or_insert(Error::from(e));
            }
        }
    }
    (deleted, failure)
}

/// The active pods to delete first: for an Indexed Job, those of indexes
/// out of range, repeated or already succeeded; then, if more must go, by
/// upstream's order of preference.
fn pods_to_remove(tracker: &Tracker, at_least: usize, now: Timestamp) -> Vec<Arc<Pod>> {
    let mut doomed = Vec::new();
    let mut left = Vec::new();
    if is_indexed(&tracker.job) {
        let completions = spec(&tracker.job).completions.unwrap_or(0);
        let mut seen = HashSet::new();
        let mut active = tracker.active.clone();
        active.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for p in active {
            match indexes::of(&p) {
                Some(i)
                    if i < completions
                        && !tracker.succeeded_indexes.contains(&i)
                        && seen.insert(i) =>
                {
                    left.push(p)
                }
                _ => doomed.push(p),
            }
        }
    } else {
        left = tracker.active.clone();
    }
    if doomed.len() < at_least {
        let more = at_least - doomed.len();
        doomed.extend(pods::to_delete(left, &[], more, now));
    }
    doomed
}

/// Creates or deletes pods toward the wanted number of active ones
/// (upstream's manageJob); returns when to try again if a failure backoff
/// holds creations back.
async fn manage(
    shared: &Shared,
    tracker: &mut Tracker,
    job_key: &str,
    now: Timestamp,
) -> Result<Option<Duration>, Error> {
    let job = tracker.job.clone();
    let active = tracker.active_count;
    if suspended(&job) {
        let doomed = pods_to_remove(tracker, active, now);
        let (deleted, err) = delete_pods(shared, &job, &doomed, true).await;
        tracker.deleted(&deleted);
        return err.map_or(Ok(None), Err);
    }
    let parallelism = spec(&job).parallelism.unwrap_or(1).max(0) as usize;
    let want = match spec(&job).completions {
        None if tracker.succeeded > 0 => active,
        None => parallelism,
        Some(c) => ((c - tracker.succeeded).max(0) as usize).min(parallelism),
    };
    if active > want {
        let mut doomed = pods_to_remove(tracker, active - want, now);
        doomed.truncate(BURST);
        let (deleted, err) = delete_pods(shared, &job, &doomed, true).await;
        tracker.deleted(&deleted);
        return err.map_or(Ok(None), Err);
    }
    let terminating = if only_replace_failed(&job) {
        tracker.terminating as usize
    } else {
        0
    };
    let Some(diff) = want.checked_sub(active + terminating).filter(|d| *d > 0) else {
        return Ok(None);
    };
    let per_index = is_indexed(&job) && perindex::limit(&job).is_some();
    if !per_index {
        let wait = Shared::lock(&shared.backoffs)
            .get(job_key)
            .copied()
            .unwrap_or_default()
            .remaining(now);
        if !wait.is_zero() {
            return Ok(Some(wait));
        }
    }
    let diff = diff.min(BURST);
    let slots: Vec<Option<i32>> = if is_indexed(&job) {
        let pending = tracker.pending_indexes(diff);
        let (ready, waits): (Vec<i32>, Vec<Duration>) = if per_index {
            let waits: Vec<Duration> = pending
                .iter()
                .map(|i| perindex::wait(tracker.awaiting.get(i).map(|p| &**p), now))
                .collect();
            let ready = pending
                .iter()
                .zip(&waits)
                .filter(|(_, w)| w.is_zero())
                .map(|(i, _)| *i)
                .collect();
            (ready, waits)
        } else {
            (pending, Vec::new())
        };
        // Every index still backing off: look again when the first may go.
        if ready.is_empty() && !waits.is_empty() {
            return Ok(waits.into_iter().min());
        }
        ready.into_iter().map(Some).collect()
    } else {
        vec![None; diff]
    };
    shared.expectations.expect_creations(job_key, slots.len());
    let next = AtomicUsize::new(0);
    let awaiting = &tracker.awaiting;
    let (created, result) = pods::slow_start(slots.len(), || {
        let slot = slots[next.fetch_add(1, Ordering::SeqCst)];
        let replaced = slot.and_then(|i| awaiting.get(&i)).map(|p| &**p);
        create_pod(shared, &job, slot, replaced)
    })
    .await;
    // Pods never attempted, or that failed, will never be observed.
    for _ in created..slots.len() {
        shared.expectations.creation_observed(job_key);
    }
    tracker.created(created);
    result.map(|()| None)
}

/// A pod of the Job's template, holding the tracking finalizer, and for an
/// Indexed Job its index as annotation, label, `JOB_COMPLETION_INDEX` and
/// in its hostname, and with a per-index backoff the failure counts of
/// the pod it replaces, one more.
fn pod_for(job: &Job, index: Option<i32>, replaced: Option<&Pod>) -> Pod {
    let name = job.name_any();
    let mut template = spec(job).template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    if let Some(i) = index {
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        annotations.insert(indexes::COMPLETION_INDEX.into(), i.to_string());
        if perindex::limit(job).is_some() {
            let (failures, ignored) = perindex::counts_after(job, replaced);
            annotations.insert(perindex::FAILURE_COUNT.into(), failures.to_string());
            if ignored > 0 {
                annotations.insert(perindex::IGNORED_FAILURE_COUNT.into(), ignored.to_string());
            }
        }
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(indexes::COMPLETION_INDEX.into(), i.to_string());
        if let Some(pod_spec) = template.spec.as_mut() {
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!(
                            "metadata.annotations['{}']",
                            indexes::COMPLETION_INDEX
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let containers = pod_spec
                .containers
                .iter_mut()
                .chain(pod_spec.init_containers.iter_mut().flatten());
            for c in containers {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|v| v.name == env.name) {
                    vars.push(env.clone());
                }
            }
            pod_spec.hostname = Some(format!("{name}-{i}"));
        }
    }
    let mut pod = pods::from_template(&template, &name, ownerref::controller_ref(job));
    if let Some(i) = index {
        pod.metadata.generate_name = Some(generate_name_with_index(&name, i));
    }
    pod
}

/// `<job>-<index>-`, the Job's name cut so the whole stays a valid prefix.
fn generate_name_with_index(job: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    let room = 63usize.saturating_sub(5 + suffix.len());
    let cut: String = job.chars().take(room).collect();
    format!("{cut}{suffix}")
}

async fn create_pod(
    shared: &Shared,
    job: &Job,
    index: Option<i32>,
    replaced: Option<&Pod>,
) -> Result<(), Error> {
    let api: Api<Pod> =
        Api::namespaced(shared.client.clone(), &job.namespace().unwrap_or_default());
    pods::create(
        &api,
        &shared.recorder,
        job.object_ref(&()),
        &pod_for(job, index, replaced),
    )
    .await
}

/// The indexes below `completions` that neither succeeded nor run, lowest first.
fn pending(
    completions: i32,
    succeeded: &BTreeSet<i32>,
    running: &HashSet<i32>,
    n: usize,
) -> Vec<i32> {
    (0..completions)
        .filter(|i| !succeeded.contains(i) && !running.contains(i))
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_from_the_last_one() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000 + s).unwrap();
        assert_eq!(Backoff::default().remaining(t0), Duration::ZERO);
        let one = Backoff {
            failures: 1,
            last_failure: Some(t0),
        };
        assert_eq!(one.remaining(at(4)), Duration::from_secs(6));
        assert_eq!(one.remaining(at(11)), Duration::ZERO);
        let three = Backoff {
            failures: 3,
            last_failure: Some(t0),
        };
        assert_eq!(three.remaining(at(0)), Duration::from_secs(40));
        let many = Backoff {
            failures: 30,
            last_failure: Some(t0),
        };
        assert_eq!(many.remaining(at(0)), MAX_FAILURE_BACKOFF);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "idx", "namespace": "default", "uid": "u1"},
            "spec": {"completionMode": "Indexed", "completions": 3,
                     "template": {"metadata": {"labels": {"job-name": "idx"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let pod = pod_for(&job, Some(2), None);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("idx-2-"));
        assert_eq!(indexes::of(&pod), Some(2));
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[indexes::COMPLETION_INDEX],
            "2"
        );
        assert_eq!(
            pod.metadata.finalizers.as_deref(),
            Some(&[TRACKING_FINALIZER.to_string()][..])
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("idx-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        assert_eq!(
            pending(5, &BTreeSet::from([0, 2]), &HashSet::from([1]), 2),
            [3, 4]
        );
        assert_eq!(generate_name_with_index(&"a".repeat(70), 12).len(), 58);
    }
}
