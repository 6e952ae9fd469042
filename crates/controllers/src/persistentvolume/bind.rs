//! The writes of binding, each skipped when already done, in upstream's
//! order: the volume's claimRef, its phase, the claim's volume name and
//! annotations, its status. A crash between two of them leaves a state the
//! next sync of either object carries on from.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::Type;
use kubox_scheduler::{BIND_COMPLETED, bound_to};

use super::Shared;
use crate::{Error, now};

/// Set on a volume or claim when this controller, not the user, bound it.
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

/// Binds the volume and the claim to each other.
pub async fn bind(
    shared: &Shared,
    pv: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Result<(), Error> {
    let pv = volume_to_claim(shared, pv, claim).await?;
    let pv = volume_phase(shared, &pv, "Bound", None).await?;
    let claim = claim_to_volume(shared, claim, &pv).await?;
    claim_status(shared, &claim, "Bound", Some(&pv)).await?;
    Ok(())
}

/// A reference to the claim, as a volume's claimRef holds it.
fn reference(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        ..Default::default()
    }
}

async fn volume_to_claim(
    shared: &Shared,
    pv: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Result<PersistentVolume, Error> {
    let by_controller = !bound_to(pv, claim);
    let mut new = pv.clone();
    let spec = new.spec.get_or_insert_default();
    let names_claim = spec.claim_ref.as_ref().is_some_and(|r| {
        r.name == claim.metadata.name
            && r.namespace == claim.metadata.namespace
            && r.uid == claim.metadata.uid
    });
    let mut dirty = !names_claim;
    if !names_claim {
        spec.claim_ref = Some(reference(claim));
    }
    if by_controller && !pv.annotations().contains_key(BOUND_BY_CONTROLLER) {
        new.annotations_mut()
            .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
        dirty = true;
    }
    if !dirty {
        return Ok(pv.clone());
    }
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    Ok(api
        .replace(&pv.name_any(), &PostParams::default(), &new)
        .await?)
}

async fn claim_to_volume(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<PersistentVolumeClaim, Error> {
    let name = pv.name_any();
    let mut new = claim.clone();
    let spec = new.spec.get_or_insert_default();
    let by_controller = spec.volume_name.as_deref() != Some(name.as_str());
    if by_controller {
        spec.volume_name = Some(name);
    }
    let annotations = new.annotations_mut();
    let mut dirty = by_controller;
    for (key, wanted) in [(BOUND_BY_CONTROLLER, by_controller), (BIND_COMPLETED, true)] {
        if wanted && !annotations.contains_key(key) {
            annotations.insert(key.into(), "yes".into());
            dirty = true;
        }
    }
    if !dirty {
        return Ok(claim.clone());
    }
    replace_claim(shared, &new).await
}

fn claims_api(shared: &Shared, claim: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
    Api::namespaced(
        shared.client.clone(),
        &claim.namespace().unwrap_or_default(),
    )
}

/// Writes a claim's metadata and spec as given, if it has not changed
/// since it was read.
pub async fn replace_claim(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaim, Error> {
    Ok(claims_api(shared, claim)
        .replace(&claim.name_any(), &PostParams::default(), claim)
        .await?)
}

/// Sets the volume's phase and message, unless they are so already.
pub async fn volume_phase(
    shared: &Shared,
    pv: &PersistentVolume,
    phase: &str,
    message: Option<&str>,
) -> Result<PersistentVolume, Error> {
    let status = pv.status.clone().unwrap_or_default();
    if status.phase.as_deref() == Some(phase) && status.message.as_deref() == message {
        return Ok(pv.clone());
    }
    let mut new = pv.clone();
    new.status = Some(PersistentVolumeStatus {
        phase: Some(phase.into()),
        message: message.map(str::to_owned),
        last_phase_transition_time: if status.phase.as_deref() == Some(phase) {
            status.last_phase_transition_time
        } else {
            Some(now())
        },
        ..status
    });
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    Ok(api
        .replace_status(&pv.name_any(), &PostParams::default(), &new)
        .await?)
}

/// Moves the volume to a new phase and tells of it with an event, only
/// when the phase changes.
pub async fn volume_phase_with_event(
    shared: &Shared,
    pv: &PersistentVolume,
    phase: &str,
    type_: Type,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let current = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if current == Some(phase) {
        return Ok(());
    }
    let new = volume_phase(shared, pv, phase, Some(&message)).await?;
    shared
        .recorder
        .record(new.object_ref(&()), type_, reason, message);
    Ok(())
}

/// Sets the claim's phase, with the access modes and capacity of its
/// volume (none without one), unless they are so already.
pub async fn claim_status(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    phase: &str,
    pv: Option<&PersistentVolume>,
) -> Result<PersistentVolumeClaim, Error> {
    let status = claim.status.clone().unwrap_or_default();
    let (modes, capacity) = match pv.and_then(|pv| pv.spec.as_ref()) {
        Some(spec) => (
            spec.access_modes.clone(),
            storage_only(spec.capacity.as_ref()),
        ),
        None => (None, None),
    };
    if status.phase.as_deref() == Some(phase)
        && status.access_modes == modes
        && storage_only(status.capacity.as_ref()) == capacity
    {
        return Ok(claim.clone());
    }
    let mut new = claim.clone();
    new.status = Some(PersistentVolumeClaimStatus {
        phase: Some(phase.into()),
        access_modes: modes,
        capacity: match pv {
            Some(pv) => pv.spec.as_ref().and_then(|s| s.capacity.clone()),
            None => None,
        },
        ..status
    });
    Ok(claims_api(shared, claim)
        .replace_status(&claim.name_any(), &PostParams::default(), &new)
        .await?)
}

/// Moves the claim to a new phase and tells of it with an event, only when
/// the phase changes.
pub async fn claim_status_with_event(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    phase: &str,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
        return Ok(());
    }
    let new = claim_status(shared, claim, phase, None).await?;
    shared
        .recorder
        .record(new.object_ref(&()), Type::Warning, reason, message.into());
    Ok(())
}

/// The storage of a capacity, which is what binding compares (upstream
/// compares only `storage` too).
fn storage_only(
    capacity: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<String> {
    capacity
        .and_then(|c| c.get("storage"))
        .and_then(|q| kubox_quota::Quantity::parse(&q.0))
        .map(|q| q.value().to_string())
}

/// Marks a volume whose claim is gone Released; a Failed one stays Failed,
/// so the user sees what went wrong while its reclaim is tried again.
pub async fn volume_phase_released(
    shared: &Shared,
    pv: &PersistentVolume,
) -> Result<PersistentVolume, Error> {
    match pv.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Released" | "Failed") => Ok(pv.clone()),
        _ => volume_phase(shared, pv, "Released", None).await,
    }
}
