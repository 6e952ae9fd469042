//! The agent's Node: registration, status, and the heartbeat Lease in
//! kube-node-lease that tells the control plane the node is alive.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{GetParams, Patch, PatchParams, PostParams};

use crate::Shared;

/// The Kubernetes release whose API kubox serves.
pub(crate) const KUBELET_VERSION: &str = "v1.37.0+kubox";
/// How often the Lease is renewed (upstream: a quarter of its 40 s duration).
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: i32 = 40;
/// Node status goes out when it changes, and at least this often.
const STATUS_REPORT: Duration = Duration::from_secs(60);

/// Bytes of memory on the machine (MemTotal).
pub fn memory_capacity() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn disk_capacity(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_blocks * s.f_frsize)
        .unwrap_or(0)
}

fn quantities(shared: &Shared) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    BTreeMap::from([
        ("cpu".into(), Quantity(cpus.to_string())),
        (
            "memory".into(),
            Quantity(format!("{}Ki", shared.memory_capacity / 1024)),
        ),
        ("pods".into(), Quantity("110".into())),
        (
            "ephemeral-storage".into(),
            Quantity(format!("{}Ki", disk_capacity(&shared.dirs.root) / 1024)),
        ),
    ])
}

fn status(shared: &Shared, previous: Option<&NodeStatus>) -> NodeStatus {
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        let earlier = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status));
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: earlier
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(now.clone())),
        }
    };
    let capacity = quantities(shared);
    let mut images: Vec<ContainerImage> = shared
        .images
        .list()
        .into_iter()
        .map(|i| ContainerImage {
            names: Some(i.repo_digests.iter().chain(&i.tags).cloned().collect()),
            size_bytes: Some(i.size as i64),
        })
        .collect();
    images.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: shared.node_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: shared.node_name.clone(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            match &shared.runtime_version {
                Some(_) => condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                ),
                None => condition(
                    "Ready",
                    "False",
                    "KubeletNotReady",
                    &format!(
                        "container runtime is down: {} was not found",
                        shared.runtime.name()
                    ),
                ),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(shared.agent_port),
            }),
        }),
        images: Some(images),
        node_info: Some(NodeSystemInfo {
            architecture: crate::image::platform_architecture().into(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!(
                "{}://{}",
                shared.runtime.name(),
                shared.runtime_version.as_deref().unwrap_or("unknown")
            ),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trimmed("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node, or brings an existing one's labels and status up to date.
pub async fn register(
    shared: &Shared,
    labels: &BTreeMap<String, String>,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let node = match api.get_opt(&shared.node_name).await? {
        Some(node) => {
            let patch = serde_json::json!({"metadata": {"labels": labels}});
            api.patch(
                &shared.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            node
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(shared.node_name.clone()),
                    labels: Some(labels.clone()),
                    annotations: Some(BTreeMap::from([(
                        "node.alpha.kubernetes.io/ttl".to_owned(),
                        "0".to_owned(),
                    )])),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(n) => n,
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(&shared.node_name).await?,
                Err(e) => return Err(e),
            }
        }
    };
    let status = status(shared, node.status.as_ref());
    api.patch_status(
        &shared.node_name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"status": status})),
    )
    .await
}

/// Renews node `node_name`'s Lease, creating it (owned by the Node) when missing.
pub(crate) async fn renew_lease(
    client: &kube::Client,
    node_name: &str,
    node_uid: Option<String>,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(node_name.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(now),
        ..Default::default()
    };
    let patch = serde_json::json!({"spec": spec});
    match api
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.to_owned()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node_name.to_owned(),
                            uid,
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
        Err(e) => Err(e),
    }
}

/// A status's conditions in type order, their heartbeat times dropped:
/// heartbeat times alone are no change.
fn conditions_apart_from_heartbeats(status: &NodeStatus) -> Vec<NodeCondition> {
    let mut conditions = status.conditions.clone().unwrap_or_default();
    for c in &mut conditions {
        c.last_heartbeat_time = None;
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    conditions
}

/// Renews the Lease every 10 s and reports node status when it changes:
/// when it differs from what was last sent, or its conditions from the
/// Node's as the API server has them (as kubelet compares), so a node the
/// controllers marked unreachable while it was cut off reports itself
/// Ready again at its first heartbeat back.
pub async fn heartbeat(shared: std::sync::Arc<Shared>, node: Node) {
    let api: Api<Node> = Api::all(shared.client.clone());
    let uid = node.metadata.uid.clone();
    let mut last = node.status.unwrap_or_default();
    let mut last_sent = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&shared.client, &shared.node_name, uid.clone()).await {
            tracing::warn!("renewing the node lease: {e}");
        }
        let current = match api.get_with(&shared.node_name, &GetParams::any()).await {
            Ok(node) => node.status.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("reading the node: {e}");
                continue;
            }
        };
        let mut next = status(&shared, Some(&current));
        let changed = {
            let strip = |s: &NodeStatus| NodeStatus {
                conditions: Some(conditions_apart_from_heartbeats(s)),
                ..s.clone()
            };
            strip(&last) != strip(&next)
                || conditions_apart_from_heartbeats(&current)
                    != conditions_apart_from_heartbeats(&next)
        };
        if !changed && last_sent.elapsed() < STATUS_REPORT {
            continue;
        }
        let patch = serde_json::json!({"status": next});
        match api
            .patch_status(
                &shared.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(n) => {
                next = n.status.unwrap_or(next);
                last = next;
                last_sent = tokio::time::Instant::now();
            }
            Err(e) => tracing::warn!("reporting node status: {e}"),
        }
    }
}
