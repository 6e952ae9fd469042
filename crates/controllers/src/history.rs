//! ControllerRevisions: the snapshots of a DaemonSet's (or StatefulSet's)
//! pod template that its rollouts move between and `kubectl rollout
//! history/undo` read. Each holds the strategic-merge patch that puts its
//! template back (`{"spec":{"template":{…,"$patch":"replace"}}}`) and a
//! revision number, the newest being the highest.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::{Error, is_not_found, ownerref};

/// The label naming a pod's (or revision's) template hash.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// The patch that restores `template`.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    t["$patch"] = json!("replace");
    json!({"spec": {"template": t}})
}

/// Whether `revision` holds `patch`.
pub fn holds(revision: &ControllerRevision, patch: &Value) -> bool {
    &revision.data.0 == patch
}

/// The revisions `owner` (by UID) controls in `namespace`, oldest first.
pub fn owned(
    store: &Store<ControllerRevision>,
    namespace: &str,
    owner_uid: &str,
) -> Vec<Arc<ControllerRevision>> {
    let mut revisions: Vec<_> = store
        .state()
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref() == Some(namespace))
        .filter(|r| ownerref::controller_of(&r.metadata).is_some_and(|o| o.uid == owner_uid))
        .collect();
    revisions.sort_by_key(|r| {
        (
            r.revision,
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    revisions
}

/// One more than the newest revision.
pub fn next_number(revisions: &[Arc<ControllerRevision>]) -> i64 {
    revisions
        .iter()
        .filter_map(|r| r.revision)
        .max()
        .unwrap_or(0)
        + 1
}

/// A new revision of `patch`, numbered `number`.
pub fn new_revision(
    name: String,
    namespace: &str,
    labels: std::collections::BTreeMap<String, String>,
    owner: OwnerReference,
    patch: Value,
    number: i64,
) -> ControllerRevision {
    ControllerRevision {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: RawExtension(patch),
        revision: Some(number),
    }
}

/// Creates `revision`, or takes the one already there under its name if
/// it holds the same template.
pub async fn create(
    api: &Api<ControllerRevision>,
    revision: ControllerRevision,
) -> Result<ControllerRevision, Error> {
    match api.create(&PostParams::default(), &revision).await {
        Ok(r) => Ok(r),
        Err(e) if crate::is_reason(&e, "AlreadyExists") => {
            let existing = api.get(&revision.name_any()).await?;
            if existing.data == revision.data {
                Ok(existing)
            } else {
                Err(Error::Failed(format!(
                    "controller revision {} exists with another template",
                    revision.name_any()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes `revision` the newest, numbered `number`.
pub async fn renumber(
    api: &Api<ControllerRevision>,
    revision: &ControllerRevision,
    number: i64,
) -> Result<ControllerRevision, Error> {
    let mut r = revision.clone();
    r.revision = Some(number);
    Ok(api
        .replace(&r.name_any(), &PostParams::default(), &r)
        .await?)
}

/// Deletes the oldest revisions no pod runs beyond `limit` of them.
pub async fn truncate(
    api: &Api<ControllerRevision>,
    revisions: &[Arc<ControllerRevision>],
    live: impl Fn(&ControllerRevision) -> bool,
    limit: i32,
) -> Result<(), Error> {
    let dead: Vec<_> = revisions.iter().filter(|r| !live(r)).collect();
    let excess = dead.len().saturating_sub(limit.max(0) as usize);
    for r in dead.into_iter().take(excess) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
