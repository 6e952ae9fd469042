//! The storage protection controllers (upstream's pvc-protection and
//! pv-protection): the finalizers StorageObjectInUseProtection admission
//! puts on claims and volumes are added where missing, and removed from
//! one being deleted once nothing needs it: a claim no running pod uses, a
//! volume no claim is bound to.

pub mod claims;
pub mod volumes;

use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};

use crate::{Error, Informed, is_not_found};

/// What a protection controller does with an object's finalizer.
#[derive(Debug, PartialEq)]
enum Step {
    Add,
    Remove,
    Nothing,
}

/// Whether the finalizer is to be added (an object not being deleted
/// without it) or removed (one being deleted, no longer `in_use`).
fn step<K: Resource>(obj: &K, finalizer: &str, in_use: impl FnOnce() -> bool) -> Step {
    let has = obj.finalizers().iter().any(|f| f == finalizer);
    match (obj.meta().deletion_timestamp.is_some(), has) {
        (false, false) => Step::Add,
        (true, true) if !in_use() => Step::Remove,
        _ => Step::Nothing,
    }
}

/// Adds or removes the finalizer, by an update of the object as read
/// (a conflict is retried with what the cache then holds).
async fn write<K>(api: Api<K>, obj: &K, finalizer: &str, add: bool) -> Result<(), Error>
where
    K: Informed + serde::Serialize,
{
    let mut new = obj.clone();
    let finalizers = new.finalizers_mut();
    finalizers.retain(|f| f != finalizer);
    if add {
        finalizers.push(finalizer.to_owned());
    }
    match api
        .replace(&obj.name_any(), &PostParams::default(), &new)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
