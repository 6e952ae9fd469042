//! The TTL-after-finished controller (upstream's
//! ttl-after-finished-controller): a Job with `ttlSecondsAfterFinished` is
//! deleted, with its pods in the foreground, that many seconds after it
//! completed or failed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::job::finished_at;
use crate::{Context, Error, is_not_found, runner};

pub const COMPONENT: &str = "ttl-after-finished-controller";

pub async fn run(ctx: Arc<Context>) {
    let jobs = ctx.informers.get::<Job>();
    jobs.synced().await;
    let controller = Controller::for_shared_stream(jobs.stream(), jobs.store());
    runner::run(
        COMPONENT,
        controller,
        reconcile,
        Arc::new(ctx.client.clone()),
    )
    .await;
}

/// When a finished Job with a TTL expires.
fn expires_at(job: &Job) -> Option<Timestamp> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    finished_at(job)?
        .checked_add(SignedDuration::from_secs(i64::from(ttl)))
        .ok()
}

fn remaining(job: &Job, now: Timestamp) -> Option<Duration> {
    let at = expires_at(job)?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or_default())
}

async fn reconcile(job: Arc<Job>, client: Arc<kube::Client>) -> Result<Action, Error> {
    match remaining(&job, Timestamp::now()) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    // The cache may be behind: the TTL may have changed, or the Job been
    // replaced by another of that name.
    let api: Api<Job> = Api::namespaced((*client).clone(), &job.namespace().unwrap_or_default());
    let fresh = match api.get(&job.name_any()).await {
        Ok(j) => j,
        Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    };
    match remaining(&fresh, Timestamp::now()) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: fresh.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&fresh.name_any(), &params).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_expires_its_ttl_after_its_terminal_condition() {
        let job = |ttl: Option<i32>, condition: &str| -> Job {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "j", "namespace": "default"},
                "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
                "status": {"conditions": [{"type": condition, "status": "True",
                                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let done = job(Some(30), "Complete");
        assert_eq!(
            remaining(&done, t("2026-01-01T00:00:10Z")),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            remaining(&done, t("2026-01-01T00:01:00Z")),
            Some(Duration::ZERO)
        );
        assert!(remaining(&job(Some(30), "Failed"), t("2026-01-01T00:00:10Z")).is_some());
        assert_eq!(
            remaining(&job(None, "Complete"), t("2026-01-01T00:00:10Z")),
            None
        );
        assert_eq!(
            remaining(&job(Some(30), "Suspended"), t("2026-01-01T00:00:10Z")),
            None
        );
    }
}
