//! What the scheduler keeps of the pods and nodes it watches: only the
//! fields its queue, filters, scores and reports read, as upstream's
//! informers drop managedFields before objects enter their caches. Every
//! pod of the cluster is held for as long as it exists, so what is not
//! kept here costs nothing per pod; a filter or score reading a field that
//! is dropped here must keep it.

use k8s_openapi::api::core::v1::{
    Container, EphemeralVolumeSource, Node, NodeSpec, NodeStatus, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
    PersistentVolumeSpec, PersistentVolumeStatus, Pod, PodStatus, Volume,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::volumes::{BIND_COMPLETED, SELECTED_NODE};

/// The metadata the scheduler reads: identity, labels (selectors and
/// spread), owners (the workloads of default spread) and deletion.
fn meta(m: &mut ObjectMeta) {
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        labels: m.labels.take(),
        owner_references: m.owner_references.take(),
        deletion_timestamp: m.deletion_timestamp.take(),
        ..ObjectMeta::default()
    };
}

/// A container as requests, host ports and image locality see it (an
/// init container's restart policy makes it a sidecar, whose requests add
/// to the app containers').
fn container(c: &mut Container) {
    *c = Container {
        name: std::mem::take(&mut c.name),
        image: c.image.take(),
        resources: c.resources.take(),
        ports: c.ports.take(),
        restart_policy: c.restart_policy.take(),
        ..Container::default()
    };
}

pub fn pod(pod: &mut Pod) {
    meta(&mut pod.metadata);
    if let Some(spec) = &mut pod.spec {
        spec.containers.iter_mut().for_each(container);
        spec.init_containers
            .iter_mut()
            .flatten()
            .for_each(container);
        spec.ephemeral_containers = None;
        spec.volumes = spec
            .volumes
            .take()
            .map(|vs| vs.into_iter().filter_map(claim_volume).collect::<Vec<_>>())
            .filter(|vs| !vs.is_empty());
    }
    // Its phase (finished pods free their node) and the PodScheduled
    // condition the scheduler writes only when its message changes.
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == "PodScheduled")
                .collect()
        }),
        ..PodStatus::default()
    });
}

/// A volume as VolumeBinding sees it: only claims, and a generic
/// ephemeral volume's name (its claim is `<pod>-<volume>`), not its template.
fn claim_volume(v: Volume) -> Option<Volume> {
    let ephemeral = v.ephemeral.map(|_| EphemeralVolumeSource::default());
    (v.persistent_volume_claim.is_some() || ephemeral.is_some()).then(|| Volume {
        name: v.name,
        persistent_volume_claim: v.persistent_volume_claim,
        ephemeral,
        ..Volume::default()
    })
}

/// A claim as VolumeBinding reads it: its owner (an ephemeral volume's
/// pod), the annotations of its binding, what it asks for and its phase.
pub fn claim(claim: &mut PersistentVolumeClaim) {
    let annotations = claim.metadata.annotations.take().map(|mut a| {
        a.retain(|k, _| k == SELECTED_NODE || k == BIND_COMPLETED);
        a
    });
    meta(&mut claim.metadata);
    claim.metadata.annotations = annotations.filter(|a| !a.is_empty());
    claim.spec = claim.spec.take().map(|s| PersistentVolumeClaimSpec {
        access_modes: s.access_modes,
        resources: s.resources.map(|r| VolumeResourceRequirements {
            requests: r.requests,
            limits: None,
        }),
        selector: s.selector,
        storage_class_name: s.storage_class_name,
        volume_mode: s.volume_mode,
        volume_name: s.volume_name,
        ..PersistentVolumeClaimSpec::default()
    });
    claim.status = claim.status.take().map(|s| PersistentVolumeClaimStatus {
        phase: s.phase,
        ..PersistentVolumeClaimStatus::default()
    });
}

/// A volume as claims are matched to it: not its source.
pub fn volume(pv: &mut PersistentVolume) {
    meta(&mut pv.metadata);
    pv.spec = pv.spec.take().map(|s| PersistentVolumeSpec {
        access_modes: s.access_modes,
        capacity: s.capacity,
        claim_ref: s.claim_ref,
        node_affinity: s.node_affinity,
        storage_class_name: s.storage_class_name,
        volume_mode: s.volume_mode,
        ..PersistentVolumeSpec::default()
    });
    pv.status = pv.status.take().map(|s| PersistentVolumeStatus {
        phase: s.phase,
        ..PersistentVolumeStatus::default()
    });
}

/// A class as binding reads it: its mode, provisioner and topologies.
pub fn class(class: &mut StorageClass) {
    meta(&mut class.metadata);
    class.parameters = None;
    class.mount_options = None;
}

pub fn node(node: &mut Node) {
    meta(&mut node.metadata);
    node.spec = node.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        unschedulable: s.unschedulable,
        ..NodeSpec::default()
    });
    // Its conditions are not read: the node lifecycle controller turns
    // them into the taints filters see.
    node.status = node.status.take().map(|s| NodeStatus {
        allocatable: s.allocatable,
        images: s.images,
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_keep_what_scheduling_reads() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {
                "containers": [{"name": "c", "image": "nginx", "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "1"}}}],
                "initContainers": [{"name": "s", "image": "envoy", "restartPolicy": "Always",
                    "command": ["envoy"], "resources": {"requests": {"cpu": "1"}}}],
                "nodeSelector": {"disk": "ssd"},
                "volumes": [{"name": "v", "emptyDir": {}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}}]},
            "status": {"phase": "Pending", "podIP": "10.0.0.1", "conditions": [
                {"type": "PodScheduled", "status": "False", "message": "0/1 nodes"},
                {"type": "Ready", "status": "False"}]},
        }))
        .unwrap();
        pod(&mut p);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "c", "image": "nginx",
                        "ports": [{"containerPort": 80, "hostPort": 8080}],
                        "resources": {"requests": {"cpu": "1"}}}],
                    "initContainers": [{"name": "s", "image": "envoy", "restartPolicy": "Always",
                        "resources": {"requests": {"cpu": "1"}}}],
                    "nodeSelector": {"disk": "ssd"},
                    "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "e", "ephemeral": {}}]},
                "status": {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "message": "0/1 nodes"}]},
            })
        );
    }

    #[test]
    fn nodes_keep_taints_allocatable_and_images() {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": {"zone": "a"}, "annotations": {"x": "y"}},
            "spec": {"podCIDR": "10.0.0.0/24", "unschedulable": true,
                "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "2"}, "capacity": {"cpu": "2"},
                "images": [{"names": ["nginx"], "sizeBytes": 1}],
                "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        node(&mut n);
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n", "labels": {"zone": "a"}},
                "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "2"}, "images": [{"names": ["nginx"], "sizeBytes": 1}]},
            })
        );
    }

    #[test]
    fn claims_keep_their_binding_and_request() {
        let mut c: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "ns", "annotations": {
                "volume.kubernetes.io/selected-node": "n", "pv.kubernetes.io/bind-completed": "yes",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                "resources": {"requests": {"storage": "1Gi"}, "limits": {"storage": "2Gi"}},
                "volumeName": "pv", "dataSource": {"kind": "PersistentVolumeClaim", "name": "src"}},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}},
        }))
        .unwrap();
        claim(&mut c);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "c", "namespace": "ns", "annotations": {
                    "volume.kubernetes.io/selected-node": "n", "pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                    "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv"},
                "status": {"phase": "Bound"},
            })
        );
    }
}
