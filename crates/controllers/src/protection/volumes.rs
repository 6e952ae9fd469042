//! pv-protection: a volume being deleted goes only once it is not Bound.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kube::runtime::Controller;
use kube::runtime::controller::Action;

use super::{Step, step, write};
use crate::{Context, Error, runner};

pub const COMPONENT: &str = "pv-protection-controller";
const FINALIZER: &str = "kubernetes.io/pv-protection";

pub async fn run(ctx: Arc<Context>) {
    let volumes = ctx.informers.get::<PersistentVolume>();
    volumes.synced().await;
    runner::run(
        COMPONENT,
        Controller::for_shared_stream(volumes.stream(), volumes.store()),
        sync,
        Arc::new(ctx.client.clone()),
    )
    .await;
}

fn bound(pv: &PersistentVolume) -> bool {
    pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

async fn sync(pv: Arc<PersistentVolume>, client: Arc<kube::Client>) -> Result<Action, Error> {
    let api: Api<PersistentVolume> = Api::all((*client).clone());
    match step(&*pv, FINALIZER, || bound(&pv)) {
        Step::Add => write(api, &*pv, FINALIZER, true).await?,
        Step::Remove => write(api, &*pv, FINALIZER, false).await?,
        Step::Nothing => {}
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_volume_being_deleted_is_held_while_bound() {
        let pv = |meta: serde_json::Value, phase: &str| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": meta, "status": {"phase": phase}})).unwrap()
        };
        let new = pv(json!({"name": "a"}), "Available");
        assert_eq!(step(&new, FINALIZER, || bound(&new)), Step::Add);
        let deleting = json!({"name": "a", "finalizers": [FINALIZER],
            "deletionTimestamp": "2026-01-01T00:00:00Z"});
        let held = pv(deleting.clone(), "Bound");
        assert_eq!(step(&held, FINALIZER, || bound(&held)), Step::Nothing);
        let released = pv(deleting, "Released");
        assert_eq!(
            step(&released, FINALIZER, || bound(&released)),
            Step::Remove
        );
    }
}
