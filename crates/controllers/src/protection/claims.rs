//! pvc-protection: a claim being deleted goes only once no pod that may
//! still run uses it. A pod uses a claim once it is scheduled (the agent
//! starts no pod whose claim is being deleted), until it has finished or
//! was deleted with no grace (it then only waits to be collected).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use kubox_client::pod_claims;

use super::{Step, step, write};
use crate::{Context, Error, runner};

pub const COMPONENT: &str = "pvc-protection-controller";
const FINALIZER: &str = "kubernetes.io/pvc-protection";

struct Shared {
    client: kube::Client,
    pods: Store<Pod>,
}

pub async fn run(ctx: Arc<Context>) {
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let pods = ctx.informers.get::<Pod>();
    claims.synced().await;
    pods.synced().await;
    // A pod finishing or going may free its claims.
    let freed = pods.changes().flat_map(|c| {
        let pod = c.object();
        let ns = pod.namespace().unwrap_or_default();
        let refs: Vec<_> = pod_claims(pod)
            .map(|c| ObjectRef::<PersistentVolumeClaim>::new(&c.name).within(&ns))
            .collect();
        futures::stream::iter(refs)
    });
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        pods: pods.store(),
    });
    runner::run(
        COMPONENT,
        Controller::for_shared_stream(claims.stream(), claims.store()).reconcile_on(freed),
        sync,
        shared,
    )
    .await;
}

/// Whether the pod may still be using the claim.
fn uses(pod: &Pod, claim: &PersistentVolumeClaim) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let force_deleted = pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds == Some(0);
    pod.namespace() == claim.namespace()
        && scheduled
        && !finished
        && !force_deleted
        && pod_claims(pod).any(|c| c.name == claim.name_any())
}

async fn sync(claim: Arc<PersistentVolumeClaim>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
    let cached = || shared.pods.state().iter().any(|p| uses(p, &claim));
    match step(&*claim, FINALIZER, cached) {
        Step::Add => write(api, &*claim, FINALIZER, true).await?,
        Step::Remove => {
            // The cache may not have seen a new pod yet: ask the API before
            // letting the claim go (upstream's askAPIServer).
            let pods = Api::<Pod>::namespaced(shared.client.clone(), &ns)
                .list(&ListParams::default())
                .await?;
            if !pods.items.iter().any(|p| uses(p, &claim)) {
                write(api, &*claim, FINALIZER, false).await?;
            }
        }
        Step::Nothing => {}
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, extra: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": "n1", "containers": [],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "ephemeral": {}}]},
            "status": {"phase": "Running"}});
        for (k, v) in extra.as_object().unwrap() {
            p[k].as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn only_pods_that_may_run_use_a_claim() {
        let claim: PersistentVolumeClaim =
            serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "ns"}}))
                .unwrap();
        assert!(uses(&pod("web", json!({})), &claim));
        let ephemeral: PersistentVolumeClaim =
            serde_json::from_value(json!({"metadata": {"name": "web-scratch", "namespace": "ns"}}))
                .unwrap();
        assert!(uses(&pod("web", json!({})), &ephemeral));
        assert!(!uses(
            &pod("web", json!({"spec": {"nodeName": ""}})),
            &claim
        ));
        assert!(!uses(
            &pod("web", json!({"status": {"phase": "Succeeded"}})),
            &claim
        ));
        assert!(!uses(
            &pod("web", json!({"metadata": {"namespace": "other"}})),
            &claim
        ));
        let forced = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 0}});
        assert!(!uses(&pod("web", forced), &claim));
        let graceful = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 30}});
        assert!(uses(&pod("web", graceful), &claim));
    }
}
