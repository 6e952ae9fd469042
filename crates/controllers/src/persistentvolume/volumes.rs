//! A volume's sync, as upstream's syncVolume: Available while no claim
//! holds it, Bound while its claim is bound to it, Released once its claim
//! is gone, and then reclaimed by its policy.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use kubox_client::events::Type;

use super::bind::{self, BOUND_BY_CONTROLLER};
use super::{PROVISIONED_BY, RESYNC, Shared};
use crate::{Error, is_not_found};

pub async fn sync(pv: Arc<PersistentVolume>, shared: Arc<Shared>) -> Result<Action, Error> {
    let spec = pv.spec.clone().unwrap_or_default();
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let Some(claim_ref) = spec
        .claim_ref
        .filter(|r| r.uid.as_ref().is_some_and(|u| !u.is_empty()))
    else {
        // Unused, or reserved for a claim whose sync binds it.
        bind::volume_phase(&shared, &pv, "Available", None).await?;
        return Ok(Action::await_change());
    };
    let ns = claim_ref.namespace.clone().unwrap_or_default();
    let name = claim_ref.name.clone().unwrap_or_default();
    let mut claim = shared.claims.get(&ObjectRef::new(&name).within(&ns));
    if claim.is_none() && !matches!(phase, Some("Released" | "Failed")) {
        // A volume its provisioner or the scheduler just reserved may name a
        // claim this cache has not seen yet: only the API can say it is gone.
        claim = Api::<PersistentVolumeClaim>::namespaced(shared.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .map(Arc::new);
    }
    let claim = claim.filter(|c| c.metadata.uid == claim_ref.uid);
    let Some(claim) = claim else {
        let pv = bind::volume_phase_released(&shared, &pv).await?;
        return reclaim(&shared, &pv).await;
    };
    let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    match bound_to {
        // Its claim's sync finishes the binding.
        None | Some("") => Ok(Action::await_change()),
        Some(v) if v == pv.name_any() => {
            bind::volume_phase(&shared, &pv, "Bound", None).await?;
            Ok(Action::await_change())
        }
        Some(_) => {
            let provisioned = pv.annotations().contains_key(PROVISIONED_BY);
            if provisioned && policy(&pv) == "Delete" {
                // Made for a claim that got another volume: not needed.
                let pv = bind::volume_phase_released(&shared, &pv).await?;
                return reclaim(&shared, &pv).await;
            }
            unbind(&shared, &pv).await?;
            Ok(Action::await_change())
        }
    }
}

fn policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// Frees a volume whose claim is bound elsewhere: one the controller bound
/// returns to the pool, one the user reserved stays reserved for that claim.
async fn unbind(shared: &Shared, pv: &PersistentVolume) -> Result<(), Error> {
    let mut new = pv.clone();
    if pv.annotations().contains_key(BOUND_BY_CONTROLLER) {
        new.spec.get_or_insert_default().claim_ref = None;
        new.annotations_mut().remove(BOUND_BY_CONTROLLER);
    } else if let Some(r) = new.spec.get_or_insert_default().claim_ref.as_mut() {
        r.uid = None;
    }
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let new = api
        .replace(&pv.name_any(), &PostParams::default(), &new)
        .await?;
    bind::volume_phase(shared, &new, "Available", None).await?;
    Ok(())
}

/// What upstream's reclaimVolume does with a released volume.
async fn reclaim(shared: &Shared, pv: &PersistentVolume) -> Result<Action, Error> {
    match policy(pv) {
        "Retain" => Ok(Action::await_change()),
        "Delete" => delete(shared, pv).await,
        "Recycle" => {
            bind::volume_phase_with_event(
                shared,
                pv,
                "Failed",
                Type::Warning,
                "VolumeFailedRecycle",
                "No recycler plugin found for the volume!".into(),
            )
            .await?;
            Ok(Action::requeue(RESYNC))
        }
        _ => {
            bind::volume_phase_with_event(
                shared,
                pv,
                "Failed",
                Type::Warning,
                "VolumeUnknownReclaimPolicy",
                "Volume has unrecognized PersistentVolumeReclaimPolicy".into(),
            )
            .await?;
            Ok(Action::await_change())
        }
    }
}

/// How a released volume of policy Delete is deleted.
#[derive(Debug, PartialEq)]
enum Deleter<'a> {
    /// Its provisioner (out of tree, as local-path) deletes it on seeing it
    /// Released.
    External,
    /// The hostPath plugin's deleter: the directory, then the volume.
    HostPath(&'a str),
    /// Nothing can: the volume is Failed, with why.
    Refused(String),
}

fn deleter(pv: &PersistentVolume) -> Deleter<'_> {
    if pv
        .annotations()
        .get(PROVISIONED_BY)
        .is_some_and(|p| !p.is_empty() && !p.starts_with("kubernetes.io/"))
    {
        return Deleter::External;
    }
    match pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
        // Upstream's hostPath deleter only ever removes what is under /tmp.
        Some(h) if h.path.starts_with("/tmp/") && h.path.len() > "/tmp/".len() => {
            Deleter::HostPath(&h.path)
        }
        Some(h) => Deleter::Refused(format!(
            "host_path deleter only supports /tmp/.+ but received provided {}",
            h.path
        )),
        None => Deleter::Refused("no deletable volume plugin matched".into()),
    }
}

/// A volume that could not be deleted is Failed, and tried again.
async fn failed_delete(
    shared: &Shared,
    pv: &PersistentVolume,
    why: String,
) -> Result<Action, Error> {
    let reason = "VolumeFailedDelete";
    bind::volume_phase_with_event(shared, pv, "Failed", Type::Warning, reason, why).await?;
    Ok(Action::requeue(RESYNC))
}

async fn delete(shared: &Shared, pv: &PersistentVolume) -> Result<Action, Error> {
    match deleter(pv) {
        Deleter::External => Ok(Action::await_change()),
        Deleter::Refused(why) => failed_delete(shared, pv, why).await,
        Deleter::HostPath(path) => {
            match std::fs::remove_dir_all(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return failed_delete(shared, pv, e.to_string()).await,
            }
            match Api::<PersistentVolume>::all(shared.client.clone())
                .delete(&pv.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(Action::await_change()),
                Err(e) if is_not_found(&e) => Ok(Action::await_change()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(v: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn released_volumes_are_deleted_by_whoever_can() {
        let provisioned = pv(json!({"metadata": {"name": "a",
            "annotations": {PROVISIONED_BY: "rancher.io/local-path"}},
            "spec": {"hostPath": {"path": "/var/lib/kubox/storage/a"}}}));
        assert_eq!(deleter(&provisioned), Deleter::External);
        let tmp = pv(json!({"metadata": {"name": "b"}, "spec": {"hostPath": {"path": "/tmp/b"}}}));
        assert_eq!(deleter(&tmp), Deleter::HostPath("/tmp/b"));
        let data = pv(json!({"metadata": {"name": "c"}, "spec": {"hostPath": {"path": "/data"}}}));
        assert_eq!(
            deleter(&data),
            Deleter::Refused(
                "host_path deleter only supports /tmp/.+ but received provided /data".into()
            )
        );
        let bare = pv(json!({"metadata": {"name": "d"}, "spec": {"hostPath": {"path": "/tmp/"}}}));
        assert!(matches!(deleter(&bare), Deleter::Refused(_)));
        let nfs = pv(json!({"metadata": {"name": "e"},
            "spec": {"nfs": {"server": "s", "path": "/x"}}}));
        assert_eq!(
            deleter(&nfs),
            Deleter::Refused("no deletable volume plugin matched".into())
        );
    }
}
