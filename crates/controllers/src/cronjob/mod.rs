//! The CronJob controller (upstream's cronjob-controller, v2): a Job from
//! the template at each time the schedule names (`schedule`), named
//! `<cronjob>-<scheduled minutes since the epoch>`, unless suspended, too
//! late for `startingDeadlineSeconds`, or barred by the concurrency policy
//! (Forbid skips a run while one is active, Replace deletes the active
//! ones); `status.active`, `lastScheduleTime` and `lastSuccessfulTime`
//! follow the Jobs, and finished Jobs beyond the history limits are deleted.
//! Each CronJob is requeued for its next scheduled time.

mod schedule;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};

use crate::job::finished;
use crate::{Change, Context, Error, api_message, is_not_found, is_reason, ownerref, runner};

use schedule::{Schedule, TOO_MANY_MISSED};

pub const COMPONENT: &str = "cronjob-controller";

/// The annotation telling a Job the time it was scheduled for.
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    jobs: Store<Job>,
}

pub async fn run(ctx: Arc<Context>) {
    let cronjobs = ctx.informers.get::<CronJob>();
    let jobs = ctx.informers.get::<Job>();
    cronjobs.synced().await;
    jobs.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        jobs: jobs.store(),
    });
    let owners = cronjobs.store();
    let job_triggers = jobs.changes().filter_map(move |change| {
        let job = match &change {
            Change::Applied { new, .. } => new.clone(),
            Change::Deleted(gone) => gone.clone(),
        };
        let owner = ownerref::controller_of(&job.metadata)
            .and_then(|r| ownerref::resolve(&owners, &job.namespace().unwrap_or_default(), r));
        futures::future::ready(owner.map(|o| ObjectRef::from_obj(&*o)))
    });
    let controller = Controller::for_shared_stream(cronjobs.stream(), cronjobs.store())
        .reconcile_on(job_triggers);
    runner::run(COMPONENT, controller, reconcile, shared).await;
}

/// The name of the Job for the run scheduled at `t`.
fn job_name(cronjob: &str, t: Timestamp) -> String {
    format!("{cronjob}-{}", t.as_second().div_euclid(60))
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job for the run at `scheduled` (upstream's getJobFromTemplate2).
fn job_for(cj: &CronJob, schedule: &Schedule, scheduled: Timestamp) -> Job {
    let template = &cj.spec.job_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.into(), schedule.format(scheduled));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![ownerref::controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// What a sync decides about the run due now, given the active Jobs.
#[derive(Debug, PartialEq)]
enum Due {
    /// Nothing is due.
    Nothing,
    /// A run is due but may not start, with the event saying why.
    Skip(Type, &'static str, String),
    /// Start the run at this time, first deleting the active Jobs if `replace`.
    Start { at: Timestamp, replace: bool },
}

/// The run due at `now` (upstream's syncCronJob after the active list is
/// settled), and how many start times were missed.
fn due(
    cj: &CronJob,
    schedule: &Schedule,
    active: &[ObjectReference],
    now: Timestamp,
) -> (Due, u32) {
    let status = cj.status.as_ref();
    let last = status
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    let mut earliest = last
        .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let deadline = cj
        .spec
        .starting_deadline_seconds
        .map(SignedDuration::from_secs);
    if let Some(d) = deadline
        && let Ok(bound) = now.checked_sub(d)
        && bound > earliest
    {
        earliest = bound;
    }
    let (scheduled, missed) = schedule.most_recent(earliest, now);
    let Some(at) = scheduled else {
        return (Due::Nothing, missed);
    };
    if let Some(d) = deadline
        && at.checked_add(d).is_ok_and(|end| end < now)
    {
        let message = format!(
            "Missed scheduled time to start a job: {}",
            schedule.format(at)
        );
        return (Due::Skip(Type::Warning, "MissSchedule", message), missed);
    }
    let name = job_name(&cj.name_any(), at);
    if active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || last == Some(at)
    {
        return (Due::Nothing, missed);
    }
    let policy = cj.spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        let message =
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .to_owned();
        return (Due::Skip(Type::Normal, "JobAlreadyActive", message), missed);
    }
    (
        Due::Start {
            at,
            replace: policy == "Replace",
        },
        missed,
    )
}

/// The finished Jobs to delete: the oldest beyond each history limit.
fn beyond_history(cj: &CronJob, jobs: &[Arc<Job>]) -> Vec<Arc<Job>> {
    let started = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(j.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
    };
    let mut doomed = Vec::new();
    for (kind, limit) in [
        (
            "Complete",
            cj.spec.successful_jobs_history_limit.unwrap_or(3),
        ),
        ("Failed", cj.spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut of_kind: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| finished(j).is_some_and(|c| c.type_ == kind))
            .collect();
        of_kind.sort_by_key(|j| started(j));
        let excess = of_kind.len().saturating_sub(limit.max(0) as usize);
        doomed.extend(of_kind.into_iter().take(excess).cloned());
    }
    doomed
}

async fn reconcile(cj: Arc<CronJob>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let cronjobs: Api<CronJob> = Api::namespaced(shared.client.clone(), &ns);
    let job_api: Api<Job> = Api::namespaced(shared.client.clone(), &ns);
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs: Vec<Arc<Job>> = shared
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|j| ownerref::controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let now = Timestamp::now();
    let reference = cj.object_ref(&());
    let event = |type_: Type, reason: &str, message: String| {
        shared
            .recorder
            .record(reference.clone(), type_, reason, message);
    };

    let mut status = cj.status.clone().unwrap_or_default();
    let mut active = status.active.take().unwrap_or_default();
    for job in &jobs {
        let listed = active.iter().any(|r| r.uid == job.metadata.uid);
        match finished(job) {
            None if !listed => event(
                Type::Warning,
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    job.name_any()
                ),
            ),
            None => {}
            Some(condition) => {
                if listed {
                    active.retain(|r| r.uid != job.metadata.uid);
                    event(
                        Type::Normal,
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {}",
                            job.name_any(),
                            condition.type_
                        ),
                    );
                }
                let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
                if condition.type_ == "Complete"
                    && let Some(done) = completed
                    && status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|t| t.0 < done.0)
                {
                    status.last_successful_time = Some(done);
                }
            }
        }
    }
    // An active Job the cache does not have may just be new: ask the API.
    let mut gone = Vec::new();
    for r in &active {
        if jobs.iter().any(|j| j.metadata.uid == r.uid) {
            continue;
        }
        let name = r.name.clone().unwrap_or_default();
        match job_api.get(&name).await {
            Ok(j) if j.metadata.uid == r.uid => {}
            Ok(_) => gone.push(r.uid.clone()),
            Err(e) if is_not_found(&e) => gone.push(r.uid.clone()),
            Err(e) => return Err(e.into()),
        }
        if gone.last() == Some(&r.uid) {
            event(
                Type::Normal,
                "MissingJob",
                format!("Active job went missing: {name}"),
            );
        }
    }
    active.retain(|r| !gone.contains(&r.uid));

    let mut requeue = None;
    if cj.metadata.deletion_timestamp.is_none() && cj.spec.suspend != Some(true) {
        match Schedule::parse(&cj.spec.schedule, cj.spec.time_zone.as_deref()) {
            Err(e) => {
                let reason = if e.starts_with("invalid timeZone") {
                    "UnknownTimeZone"
                } else {
                    "UnparseableSchedule"
                };
                event(Type::Warning, reason, e);
            }
            Ok(schedule) => {
                requeue = schedule
                    .next_after(now)
                    .map(|next| Duration::try_from(next.duration_since(now)).unwrap_or_default());
                let (run, missed) = due(&cj, &schedule, &active, now);
                if missed > TOO_MANY_MISSED {
                    event(
                        Type::Warning,
                        "TooManyMissedTimes",
                        format!(
                            "too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
                        ),
                    );
                }
                match run {
                    Due::Nothing => {}
                    Due::Skip(type_, reason, message) => event(type_, reason, message),
                    Due::Start { at, replace } => {
                        if replace {
                            for r in std::mem::take(&mut active) {
                                let name = r.name.clone().unwrap_or_default();
                                delete_job(&job_api, &name).await?;
                                event(
                                    Type::Normal,
                                    "SuccessfulDelete",
                                    format!("Deleted job {name}"),
                                );
                            }
                        }
                        let job = job_for(&cj, &schedule, at);
                        let created = match job_api.create(&PostParams::default(), &job).await {
                            Ok(created) => {
                                event(
                                    Type::Normal,
                                    "SuccessfulCreate",
                                    format!("Created job {}", created.name_any()),
                                );
                                created
                            }
                            // Made by a sync whose status update was lost.
                            Err(e) if is_reason(&e, "AlreadyExists") => {
                                job_api.get(&job.name_any()).await?
                            }
                            Err(e) => {
                                event(
                                    Type::Warning,
                                    "FailedCreate",
                                    format!("Error creating job: {}", api_message(&e)),
                                );
                                return Err(e.into());
                            }
                        };
                        let ours = ownerref::controller_of(&created.metadata)
                            .is_some_and(|r| r.uid == uid);
                        if ours
                            && finished(&created).is_none()
                            && !active.iter().any(|r| r.uid == created.metadata.uid)
                        {
                            active.push(job_reference(&created));
                        }
                        status.last_schedule_time = Some(Time(at));
                    }
                }
            }
        }
    }
    status.active = (!active.is_empty()).then_some(active);
    if cj.status.as_ref().unwrap_or(&CronJobStatus::default()) != &status {
        let mut updated = (*cj).clone();
        updated.status = Some(status);
        cronjobs
            .replace_status(&cj.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    for job in beyond_history(&cj, &jobs) {
        delete_job(&job_api, &job.name_any()).await?;
        event(
            Type::Normal,
            "SuccessfulDelete",
            format!("Deleted job {}", job.name_any()),
        );
    }
    Ok(match requeue {
        // A little past the time, so the schedule finds it due.
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cronjob(spec: serde_json::Value, last: Option<&str>) -> CronJob {
        let mut full =
            json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {}}}});
        if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(spec.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "backup", "namespace": "default",
                         "creationTimestamp": "2026-07-01T10:00:00Z"},
            "spec": full,
            "status": {"lastScheduleTime": last}
        }))
        .unwrap()
    }

    fn active(name: &str) -> Vec<ObjectReference> {
        vec![ObjectReference {
            name: Some(name.into()),
            ..Default::default()
        }]
    }

    fn due_at(cj: &CronJob, active: &[ObjectReference], now: &str) -> Due {
        let schedule = Schedule::parse(&cj.spec.schedule, cj.spec.time_zone.as_deref()).unwrap();
        due(cj, &schedule, active, at(now)).0
    }

    #[test]
    fn a_run_is_due_once_per_scheduled_time_named_by_its_minute() {
        let cj = cronjob(json!({}), None);
        assert_eq!(due_at(&cj, &[], "2026-07-01T10:04:59Z"), Due::Nothing);
        let start = Due::Start {
            at: at("2026-07-01T10:05:00Z"),
            replace: false,
        };
        assert_eq!(due_at(&cj, &[], "2026-07-01T10:05:01Z"), start);
        let ran = cronjob(json!({}), Some("2026-07-01T10:05:00Z"));
        assert_eq!(due_at(&ran, &[], "2026-07-01T10:06:00Z"), Due::Nothing);
        assert_eq!(
            job_name("backup", at("2026-07-01T10:05:00Z")),
            "backup-29715005"
        );
        let job = job_for(
            &cj,
            &Schedule::parse("*/5 * * * *", None).unwrap(),
            at("2026-07-01T10:05:00Z"),
        );
        assert_eq!(job.metadata.name.as_deref(), Some("backup-29715005"));
        assert_eq!(
            job.metadata.annotations.unwrap()[SCHEDULED_AT],
            "2026-07-01T10:05:00+00:00"
        );
    }

    #[test]
    fn concurrency_policy_and_starting_deadline_hold_runs_back() {
        let now = "2026-07-01T10:05:30Z";
        let forbid = cronjob(json!({"concurrencyPolicy": "Forbid"}), None);
        assert!(matches!(
            due_at(&forbid, &active("backup-1"), now),
            Due::Skip(Type::Normal, "JobAlreadyActive", _)
        ));
        let replace = cronjob(json!({"concurrencyPolicy": "Replace"}), None);
        assert_eq!(
            due_at(&replace, &active("backup-1"), now),
            Due::Start {
                at: at("2026-07-01T10:05:00Z"),
                replace: true
            }
        );
        // Already running the job for that time.
        assert_eq!(
            due_at(&replace, &active("backup-29715005"), now),
            Due::Nothing
        );
        let strict = cronjob(json!({"startingDeadlineSeconds": 10}), None);
        // The deadline bounds the search: a time 30 s ago is not seen at all.
        assert_eq!(due_at(&strict, &[], now), Due::Nothing);
        let lenient = cronjob(json!({"startingDeadlineSeconds": 60}), None);
        assert!(matches!(due_at(&lenient, &[], now), Due::Start { .. }));
    }

    #[test]
    fn the_oldest_finished_jobs_beyond_the_limits_go() {
        let job = |name: &str, kind: Option<&str>, start: &str| -> Arc<Job> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "status": {"startTime": start,
                               "conditions": kind.map(|k| vec![json!({"type": k, "status": "True"})])}
                }))
                .unwrap(),
            )
        };
        let jobs = vec![
            job("ok-3", Some("Complete"), "2026-07-01T10:03:00Z"),
            job("ok-1", Some("Complete"), "2026-07-01T10:01:00Z"),
            job("ok-2", Some("Complete"), "2026-07-01T10:02:00Z"),
            job("ok-4", Some("Complete"), "2026-07-01T10:04:00Z"),
            job("bad-1", Some("Failed"), "2026-07-01T10:01:00Z"),
            job("bad-2", Some("Failed"), "2026-07-01T10:02:00Z"),
            job("running", None, "2026-07-01T10:00:00Z"),
        ];
        let names: Vec<String> = beyond_history(&cronjob(json!({}), None), &jobs)
            .iter()
            .map(|j| j.name_any())
            .collect();
        assert_eq!(names, ["ok-1", "bad-1"]);
    }
}
