//! The local-path provisioner (k3s's local-path-provisioner, in process):
//! the default StorageClass `local-path`, which binds when a claim's first
//! pod is scheduled (`WaitForFirstConsumer`). A claim of no class gets the
//! default class (upstream's retroactive default StorageClass); a claim of
//! `local-path` the scheduler has annotated with its pod's node gets a
//! hostPath PersistentVolume `pvc-<claim uid>` affine to that node, in a
//! directory under the data directory that node's agent creates, and is
//! bound to it. A volume whose claim is gone is deleted, with its
//! directory when that is on this machine (the reclaim policy is Delete).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};
use serde_json::json;

use futures::StreamExt;

use crate::{Change, Context, Error, is_not_found, is_reason, runner};

pub const COMPONENT: &str = "local-path-provisioner";
pub const CLASS: &str = "local-path";
const PROVISIONER: &str = "rancher.io/local-path";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The node the scheduler chose for the claim's first pod.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const HOSTNAME: &str = "kubernetes.io/hostname";

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    dir: PathBuf,
    claims: Store<PersistentVolumeClaim>,
}

pub async fn run(ctx: Arc<Context>) {
    ensure_class(&ctx.client).await;
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let volumes = ctx.informers.get::<PersistentVolume>();
    claims.synced().await;
    volumes.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        dir: ctx.config.local_path_dir.clone(),
        claims: claims.store(),
    });
    let provisioning = runner::run(
        COMPONENT,
        Controller::for_stream(claims.stream(), claims.store()),
        provision,
        shared.clone(),
    );
    // A claim going away changes nothing in its volume: it is the trigger.
    let released = claims.changes().filter_map(|change| {
        let volume = match change {
            Change::Deleted(claim) => claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|v| !v.is_empty()),
            Change::Applied { .. } => None,
        };
        futures::future::ready(volume.map(|v| ObjectRef::<PersistentVolume>::new(&v)))
    });
    let reclaiming = runner::run(
        COMPONENT,
        Controller::for_stream(volumes.stream(), volumes.store()).reconcile_on(released),
        reclaim,
        shared,
    );
    futures::future::join(provisioning, reclaiming).await;
}

/// Creates the default StorageClass, retrying until the API takes it.
async fn ensure_class(client: &kube::Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    let class = StorageClass {
        metadata: ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(DEFAULT_CLASS.into(), "true".into())])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match api.create(&PostParams::default(), &class).await {
            Ok(_) => return,
            Err(e) if is_reason(&e, "AlreadyExists") => return,
            Err(e) => tracing::warn!(controller = COMPONENT, "creating StorageClass {CLASS}: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// What a claim needs of this provisioner.
#[derive(Debug, PartialEq)]
enum Need<'a> {
    Nothing,
    /// It has no class: it gets the default one.
    DefaultClass,
    /// No pod of it is scheduled yet.
    FirstConsumer,
    /// A volume on this node.
    Volume(&'a str),
}

fn need(claim: &PersistentVolumeClaim) -> Need<'_> {
    let spec = claim.spec.as_ref();
    let bound = spec
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    if claim.metadata.deletion_timestamp.is_some() || bound {
        return Need::Nothing;
    }
    match spec.and_then(|s| s.storage_class_name.as_deref()) {
        None => Need::DefaultClass,
        Some(CLASS) => match claim.annotations().get(SELECTED_NODE) {
            Some(node) => Need::Volume(node),
            None => Need::FirstConsumer,
        },
        Some(_) => Need::Nothing,
    }
}

/// The volume for a claim on `node`, in its own directory under `dir`.
fn volume_for(
    claim: &PersistentVolumeClaim,
    node: &str,
    dir: &std::path::Path,
) -> PersistentVolume {
    let ns = claim.namespace().unwrap_or_default();
    let name = format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default());
    let path = dir.join(format!("{name}_{ns}_{}", claim.name_any()));
    let spec = claim.spec.clone().unwrap_or_default();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.into(),
                PROVISIONER.into(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: spec.resources.and_then(|r| r.requests).and_then(|r| {
                r.get("storage")
                    .map(|q| BTreeMap::from([("storage".to_owned(), q.clone())]))
            }),
            host_path: Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(ns),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some(CLASS.into()),
            volume_mode: spec.volume_mode,
            // Its directory is on that node only (k3s's provisioner names
            // the node by its hostname label, which kubox sets to its name).
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME.into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_owned()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

async fn provision(
    claim: Arc<PersistentVolumeClaim>,
    shared: Arc<Shared>,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
    let node = match need(&claim) {
        Need::Nothing => return Ok(Action::await_change()),
        Need::DefaultClass => {
            let class = json!({"spec": {"storageClassName": CLASS}});
            claims
                .patch(
                    &claim.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(class),
                )
                .await?;
            return Ok(Action::await_change());
        }
        Need::FirstConsumer => {
            shared.recorder.record(
                claim.object_ref(&()),
                Type::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".to_owned(),
            );
            return Ok(Action::await_change());
        }
        Need::Volume(node) => node,
    };
    let volumes: Api<PersistentVolume> = Api::all(shared.client.clone());
    let volume = volume_for(&claim, node, &shared.dir);
    let name = volume.name_any();
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => {}
        Err(e) if is_reason(&e, "AlreadyExists") => {}
        Err(e) => return Err(e.into()),
    }
    let spec = volume.spec.clone().unwrap_or_default();
    let bind = json!({
        "metadata": {
            "uid": claim.metadata.uid,
            "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.kubernetes.io/storage-provisioner": PROVISIONER,
            }
        },
        "spec": {"volumeName": name, "storageClassName": CLASS},
    });
    claims
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(bind),
        )
        .await?;
    let status = json!({"status": {"phase": "Bound", "accessModes": spec.access_modes, "capacity": spec.capacity}});
    claims
        .patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await?;
    volumes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await?;
    shared.recorder.record(
        claim.object_ref(&()),
        Type::Normal,
        "ProvisioningSucceeded",
        format!("Successfully provisioned volume {name}"),
    );
    Ok(Action::await_change())
}

async fn reclaim(volume: Arc<PersistentVolume>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ours = volume
        .annotations()
        .get(PROVISIONED_BY)
        .is_some_and(|p| p == PROVISIONER);
    let spec = volume.spec.clone().unwrap_or_default();
    let Some(claim_ref) = spec
        .claim_ref
        .filter(|_| ours && volume.metadata.deletion_timestamp.is_none())
    else {
        return Ok(Action::await_change());
    };
    let ns = claim_ref.namespace.clone().unwrap_or_default();
    let claim_name = claim_ref.name.clone().unwrap_or_default();
    let cached = shared
        .claims
        .get(&ObjectRef::new(&claim_name).within(&ns))
        .is_some_and(|c| c.metadata.uid == claim_ref.uid);
    if cached {
        return Ok(Action::await_change());
    }
    // The cache may be behind: only a claim the API no longer has frees the volume.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
    match claims.get_opt(&claim_name).await? {
        Some(c) if c.metadata.uid == claim_ref.uid => return Ok(Action::await_change()),
        _ => {}
    }
    if let Some(path) = spec.host_path.as_ref().map(|h| PathBuf::from(&h.path))
        && path.starts_with(&shared.dir)
    {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Failed(format!("removing {}: {e}", path.display()))),
        }
    }
    let volumes: Api<PersistentVolume> = Api::all(shared.client.clone());
    match volumes
        .delete(&volume.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(v: serde_json::Value) -> PersistentVolumeClaim {
        let mut base = json!({"metadata": {"name": "data", "namespace": "ns", "uid": "u"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        for (k, v) in v.as_object().unwrap() {
            base[k]
                .as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn claims_wait_for_the_node_of_their_first_pod() {
        assert_eq!(need(&claim(json!({}))), Need::DefaultClass);
        let waiting = claim(json!({"spec": {"storageClassName": CLASS}}));
        assert_eq!(need(&waiting), Need::FirstConsumer);
        let placed = claim(json!({"metadata": {"annotations": {SELECTED_NODE: "n2"}},
            "spec": {"storageClassName": CLASS}}));
        assert_eq!(need(&placed), Need::Volume("n2"));
        let bound = claim(json!({"spec": {"storageClassName": CLASS, "volumeName": "pv"}}));
        assert_eq!(need(&bound), Need::Nothing);
        let other = claim(json!({"spec": {"storageClassName": "fast"}}));
        assert_eq!(need(&other), Need::Nothing);

        let pv = serde_json::to_value(volume_for(&placed, "n2", "/data".as_ref())).unwrap();
        assert_eq!(
            pv["spec"]["nodeAffinity"],
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME, "operator": "In", "values": ["n2"]}]}]}})
        );
        assert_eq!(
            pv["spec"]["hostPath"],
            json!({"path": "/data/pvc-u_ns_data", "type": "DirectoryOrCreate"})
        );
    }
}
