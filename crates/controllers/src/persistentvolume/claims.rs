//! A claim's sync, as upstream's syncClaim: an unbound claim is bound to
//! the volume it names or the best that fits, or waits (for its first
//! consumer, for a provisioner, for a volume to appear) and is tried again
//! every sync period; a bound claim keeps its volume bound, or is Lost.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::Type;
use kubox_client::pod_claims;
use kubox_scheduler::{BIND_COMPLETED, SELECTED_NODE, bound_to, class_of};

use super::bind::{self, BOUND_BY_CONTROLLER};
use super::{RESYNC, Shared, matching};
use crate::Error;

const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The provisioner asked to make a claim's volume (and its beta name,
/// which upstream still sets beside it).
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";

pub async fn sync(claim: Arc<PersistentVolumeClaim>, shared: Arc<Shared>) -> Result<Action, Error> {
    if claim.annotations().contains_key(BIND_COMPLETED) {
        bound(&shared, &claim).await?;
        return Ok(Action::await_change());
    }
    unbound(&shared, &claim).await
}

fn volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
}

fn class(shared: &Shared, name: &str) -> Option<Arc<StorageClass>> {
    shared.classes.get(&ObjectRef::new(name))
}

/// Whether the claim's class binds only once a pod using it is scheduled.
fn delay_binding(shared: &Shared, claim: &PersistentVolumeClaim) -> bool {
    let name = class_of(claim);
    !name.is_empty()
        && class(shared, name)
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
}

async fn unbound(shared: &Shared, claim: &PersistentVolumeClaim) -> Result<Action, Error> {
    let Some(name) = volume_name(claim) else {
        if assign_default_class(shared, claim).await? {
            return Ok(Action::await_change());
        }
        let delay = delay_binding(shared, claim);
        let volumes = shared.volumes.state();
        if let Some(pv) = matching::best(claim, volumes.iter().map(|v| &**v), delay) {
            bind::bind(shared, pv, claim).await?;
            return Ok(Action::await_change());
        }
        let class = class_of(claim);
        if delay && !claim.annotations().contains_key(SELECTED_NODE) {
            let (reason, message) = waiting_for_consumer(shared, claim);
            event(shared, claim, Type::Normal, reason, message);
        } else if !class.is_empty() {
            provision(shared, claim, class).await?;
        } else {
            event(
                shared,
                claim,
                Type::Normal,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            );
        }
        bind::claim_status(shared, claim, "Pending", None).await?;
        return Ok(Action::requeue(RESYNC));
    };
    let Some(pv) = shared.volumes.get(&ObjectRef::new(name)) else {
        // The user named a volume that is not there (yet).
        bind::claim_status(shared, claim, "Pending", None).await?;
        return Ok(Action::requeue(RESYNC));
    };
    let claimed = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some();
    if !claimed {
        if let Some(why) = matching::mismatch(&pv, claim) {
            event(
                shared,
                claim,
                Type::Warning,
                "VolumeMismatch",
                format!("Cannot bind to requested volume {name:?}: {why}"),
            );
            bind::claim_status(shared, claim, "Pending", None).await?;
            return Ok(Action::requeue(RESYNC));
        }
        bind::bind(shared, &pv, claim).await?;
        return Ok(Action::await_change());
    }
    if bound_to(&pv, claim) {
        bind::bind(shared, &pv, claim).await?;
        return Ok(Action::await_change());
    }
    if claim.annotations().contains_key(BOUND_BY_CONTROLLER) {
        return Err(Error::Failed(format!(
            "Invalid binding of claim {:?} to volume {name:?}: volume already claimed by {:?}",
            key(claim),
            claim_ref_key(&pv)
        )));
    }
    // The user asked for a volume another claim holds: wait for it.
    bind::claim_status(shared, claim, "Pending", None).await?;
    Ok(Action::requeue(RESYNC))
}

async fn bound(shared: &Shared, claim: &PersistentVolumeClaim) -> Result<(), Error> {
    let Some(name) = volume_name(claim) else {
        return bind::claim_status_with_event(
            shared,
            claim,
            "Lost",
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        )
        .await;
    };
    let pv = match shared.volumes.get(&ObjectRef::new(name)) {
        Some(pv) => Some(pv),
        // Its volume's watch may be behind the claim's: only a volume the
        // API does not have is lost.
        None => Api::<PersistentVolume>::all(shared.client.clone())
            .get_opt(name)
            .await?
            .map(Arc::new),
    };
    let Some(pv) = pv else {
        return bind::claim_status_with_event(
            shared,
            claim,
            "Lost",
            "ClaimLost",
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        )
        .await;
    };
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    match claim_ref {
        None => bind::bind(shared, &pv, claim).await,
        Some(r) if r.uid == claim.metadata.uid => bind::bind(shared, &pv, claim).await,
        Some(_) => {
            bind::claim_status_with_event(
                shared,
                claim,
                "Lost",
                "ClaimMisbound",
                "Two claims are bound to the same volume, this one is bound incorrectly",
            )
            .await
        }
    }
}

/// Gives a claim of no class the default class, newest first when several
/// are marked (upstream's retroactive default StorageClass; kubox has no
/// DefaultStorageClass admission, so this is also where a new claim gets
/// it, before it is matched against volumes of no class).
async fn assign_default_class(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
) -> Result<bool, Error> {
    if claim
        .spec
        .as_ref()
        .is_some_and(|s| s.storage_class_name.is_some())
    {
        return Ok(false);
    }
    let default = shared
        .classes
        .state()
        .into_iter()
        .filter(|c| {
            c.annotations()
                .get(DEFAULT_CLASS)
                .is_some_and(|v| v == "true")
        })
        .max_by(|a, b| {
            (&a.metadata.creation_timestamp, a.metadata.name.as_deref())
                .cmp(&(&b.metadata.creation_timestamp, b.metadata.name.as_deref()))
        });
    let Some(default) = default else {
        return Ok(false);
    };
    let mut new = claim.clone();
    new.spec.get_or_insert_default().storage_class_name = default.metadata.name.clone();
    bind::replace_claim(shared, &new).await?;
    Ok(true)
}

/// Asks the class's provisioner for a volume. kubox has no in-tree volume
/// plugins, so only provisioners outside `kubernetes.io/` (as local-path's)
/// can make one: they are named on the claim and left to it.
async fn provision(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    class_name: &str,
) -> Result<(), Error> {
    let Some(class) = class(shared, class_name) else {
        let message = format!("storageclass.storage.k8s.io {class_name:?} not found");
        event(shared, claim, Type::Warning, "ProvisioningFailed", message);
        return Ok(());
    };
    let provisioner = class.provisioner.as_str();
    if provisioner.starts_with("kubernetes.io/") {
        let message = format!("no volume plugin matched name: {provisioner}");
        event(shared, claim, Type::Warning, "ProvisioningFailed", message);
        return Ok(());
    }
    let annotations = claim.annotations();
    let named = [STORAGE_PROVISIONER, BETA_STORAGE_PROVISIONER]
        .iter()
        .all(|a| annotations.get(*a).is_some_and(|p| p == provisioner));
    let claim = if named {
        claim.clone()
    } else {
        let mut new = claim.clone();
        for a in [STORAGE_PROVISIONER, BETA_STORAGE_PROVISIONER] {
            new.annotations_mut().insert(a.into(), provisioner.into());
        }
        bind::replace_claim(shared, &new).await?
    };
    event(
        shared,
        &claim,
        Type::Normal,
        "ExternalProvisioning",
        format!(
            "Waiting for a volume to be created either by the external provisioner \
             '{provisioner}' or manually by the system administrator. If volume creation is \
             delayed, please verify that the provisioner is running and correctly registered."
        ),
    );
    Ok(())
}

/// The event of a claim that waits for its first consumer, as upstream's:
/// naming the pods that use it but are not scheduled yet, if any are.
fn waiting_for_consumer(shared: &Shared, claim: &PersistentVolumeClaim) -> (&'static str, String) {
    let name = claim.name_any();
    let mut pods: Vec<String> = shared
        .pods
        .state()
        .iter()
        .filter(|p| {
            p.namespace() == claim.namespace()
                && p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_none_or(str::is_empty)
                && !terminated(p)
                && pod_claims(p).any(|c| c.name == name)
        })
        .map(|p| p.name_any())
        .collect();
    pods.sort();
    match pods.as_slice() {
        [] => (
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding".into(),
        ),
        [pod] => (
            "WaitForPodScheduled",
            format!("waiting for pod {pod} to be scheduled"),
        ),
        pods => (
            "WaitForPodScheduled",
            format!("waiting for pods {} to be scheduled", pods.join(",")),
        ),
    }
}

/// Upstream's IsPodTerminated: finished, or being deleted with no
/// container running.
fn terminated(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let running = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    finished || (pod.metadata.deletion_timestamp.is_some() && !running)
}

fn event(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    type_: Type,
    reason: &str,
    message: String,
) {
    shared
        .recorder
        .record(claim.object_ref(&()), type_, reason, message);
}

fn key(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

fn claim_ref_key(pv: &PersistentVolume) -> String {
    let r = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.clone())
        .unwrap_or_default();
    format!(
        "{}/{}",
        r.namespace.unwrap_or_default(),
        r.name.unwrap_or_default()
    )
}
