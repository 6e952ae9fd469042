//! The local-path provisioner (k3s's local-path-provisioner, in process):
//! the default StorageClass `local-path`, which binds when a claim's first
//! pod is scheduled (`WaitForFirstConsumer`). As an external provisioner
//! it only makes and deletes volumes: a claim the PV controller has handed
//! to it (`volume.kubernetes.io/storage-provisioner`) and the scheduler has
//! annotated with its pod's node gets a hostPath PersistentVolume
//! `pvc-<claim uid>` reserved for it (by claimRef) and affine to that node,
//! in a directory under the data directory that node's agent creates; the
//! PV controller binds the two. A volume the PV controller has Released
//! (its claim is gone; the reclaim policy is Delete) is deleted, with its
//! directory when that is on this machine.

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
use kube::api::{DeleteParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};
use kubox_scheduler::SELECTED_NODE;

use crate::persistentvolume::{PROVISIONED_BY, STORAGE_PROVISIONER};
use crate::{Context, Error, is_not_found, is_reason, runner};

pub const COMPONENT: &str = "local-path-provisioner";
pub const CLASS: &str = "local-path";
const PROVISIONER: &str = "rancher.io/local-path";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const HOSTNAME: &str = "kubernetes.io/hostname";

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    dir: PathBuf,
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
    });
    let provisioning = runner::run(
        COMPONENT,
        Controller::for_shared_stream(claims.stream(), claims.store()),
        provision,
        shared.clone(),
    );
    let deleting = runner::run(
        COMPONENT,
        Controller::for_shared_stream(volumes.stream(), volumes.store()),
        delete,
        shared,
    );
    futures::future::join(provisioning, deleting).await;
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

/// The node a claim's volume is to be made for, if it is one for this
/// provisioner to make (sig-storage-lib-external-provisioner's
/// shouldProvision).
fn wanted_on(claim: &PersistentVolumeClaim) -> Option<&str> {
    let spec = claim.spec.as_ref()?;
    let bound = spec.volume_name.as_deref().is_some_and(|v| !v.is_empty());
    let ours = spec.storage_class_name.as_deref() == Some(CLASS)
        && claim
            .annotations()
            .get(STORAGE_PROVISIONER)
            .is_some_and(|p| p == PROVISIONER);
    if claim.metadata.deletion_timestamp.is_some() || bound || !ours {
        return None;
    }
    claim.annotations().get(SELECTED_NODE).map(String::as_str)
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
    let Some(node) = wanted_on(&claim) else {
        return Ok(Action::await_change());
    };
    let volumes: Api<PersistentVolume> = Api::all(shared.client.clone());
    let volume = volume_for(&claim, node, &shared.dir);
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => shared.recorder.record(
            claim.object_ref(&()),
            Type::Normal,
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {}", volume.name_any()),
        ),
        Err(e) if is_reason(&e, "AlreadyExists") => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// Deletes a volume of ours the PV controller has released, as external
/// provisioners do (shouldDelete: Released, policy Delete, provisioned by us).
async fn delete(volume: Arc<PersistentVolume>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ours = volume
        .annotations()
        .get(PROVISIONED_BY)
        .is_some_and(|p| p == PROVISIONER);
    let spec = volume.spec.clone().unwrap_or_default();
    let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    if !ours || !released || !delete || volume.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
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
    use serde_json::json;

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
    fn claims_handed_to_it_get_a_volume_on_the_node_of_their_first_pod() {
        let handed = json!({STORAGE_PROVISIONER: PROVISIONER});
        assert_eq!(wanted_on(&claim(json!({}))), None);
        let waiting = claim(json!({"metadata": {"annotations": handed},
            "spec": {"storageClassName": CLASS}}));
        assert_eq!(wanted_on(&waiting), None);
        let placed = claim(json!({"metadata": {"annotations": {SELECTED_NODE: "n2",
            STORAGE_PROVISIONER: PROVISIONER}}, "spec": {"storageClassName": CLASS}}));
        assert_eq!(wanted_on(&placed), Some("n2"));
        let not_handed = claim(json!({"metadata": {"annotations": {SELECTED_NODE: "n2"}},
            "spec": {"storageClassName": CLASS}}));
        assert_eq!(wanted_on(&not_handed), None);
        let bound = claim(json!({"metadata": {"annotations": {SELECTED_NODE: "n2",
            STORAGE_PROVISIONER: PROVISIONER}},
            "spec": {"storageClassName": CLASS, "volumeName": "pv"}}));
        assert_eq!(wanted_on(&bound), None);
        let other = claim(json!({"metadata": {"annotations": {SELECTED_NODE: "n2",
            STORAGE_PROVISIONER: PROVISIONER}}, "spec": {"storageClassName": "fast"}}));
        assert_eq!(wanted_on(&other), None);

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
