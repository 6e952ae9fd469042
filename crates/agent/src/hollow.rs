//! Hollow nodes, as upstream's kubemark and kwok: simulated Nodes that
//! register, keep their Leases and report the pods bound to them Running
//! and Ready with an address, without running any container. One process
//! stands in for thousands of nodes, so the control plane (the scheduler
//! above all) can be measured at scale on one machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::node::{KUBELET_VERSION, LEASE_RENEW, renew_lease};

/// API requests a hollow node set has in flight at once: enough to register
/// thousands of nodes in seconds, few enough not to starve the server.
const IN_FLIGHT: usize = 32;

/// Slices of the nodes whose Leases are renewed one after the other over
/// each renewal period.
const HEARTBEAT_SLICES: usize = 100;

/// What every hollow node has, as kwok's default node: room for 110 pods.
const CAPACITY: [(&str, &str); 4] = [
    ("cpu", "32"),
    ("memory", "256Gi"),
    ("pods", "110"),
    ("ephemeral-storage", "1Ti"),
];

#[derive(Clone, Debug)]
pub struct HollowConfig {
    /// Nodes are named `{prefix}{index}`.
    pub prefix: String,
    pub count: usize,
    /// When above zero, node `i` is labelled `topology.kubernetes.io/zone=zone-{i % zones}`.
    pub zones: usize,
}

/// Running hollow nodes; dropping them stops their heartbeats (the Nodes stay).
pub struct HollowNodes {
    _tasks: kubox_client::Tasks,
}

struct Hollow {
    client: kube::Client,
    /// Node name → (index, UID).
    nodes: HashMap<String, (u32, Option<String>)>,
    /// Pod addresses handed out per node, so each pod gets its own.
    next_ip: Mutex<HashMap<String, u32>>,
}

/// Node `i`'s address, in 10.64.0.0/16.
fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + i + 1)
}

/// Node `i`'s pod range: a /24 in 10.128.0.0/9.
fn pod_cidr(i: u32) -> (Ipv4Addr, String) {
    let base = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i << 8));
    (base, format!("{base}/24"))
}

fn node(config: &HollowConfig, i: u32) -> Node {
    let name = format!("{}{i}", config.prefix);
    let mut labels = crate::node_labels(&name);
    if config.zones > 0 {
        labels.insert(
            "topology.kubernetes.io/zone".into(),
            format!("zone-{}", i as usize % config.zones),
        );
    }
    let (_, cidr) = pod_cidr(i);
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }))
    .expect("a valid node")
}

fn node_status(i: u32, name: &str) -> serde_json::Value {
    let now = Time(Timestamp::now());
    let capacity: BTreeMap<&str, &str> = CAPACITY.into_iter().collect();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
                           "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    serde_json::json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()},
                      {"type": "Hostname", "address": name}],
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "nodeInfo": {
            "architecture": crate::image::platform_architecture(), "bootID": "", "containerRuntimeVersion": "hollow://0",
            "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": KUBELET_VERSION, "machineID": "",
            "operatingSystem": "linux", "osImage": "hollow", "systemUUID": "",
        },
    }})
}

/// Whether a failed request is worth repeating: the server was overloaded
/// or unreachable for a moment. Registering thousands of nodes at once
/// swamps a small server, and one such answer must not abort the others.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// `register`, repeated with backoff (0.2 s doubling to 5 s, jittered, for
/// at most a few minutes) while the failure is transient.
async fn register_retrying(
    client: &kube::Client,
    config: &HollowConfig,
    i: u32,
) -> Result<Node, kube::Error> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(40);
    (|| register(client, config, i))
        .retry(delays)
        .when(is_transient)
        .notify(|e, after| {
            tracing::debug!(
                node = i,
                "registering a hollow node, again in {after:?}: {e}"
            )
        })
        .await
}

/// Creates the Node (or takes the existing one) and reports it Ready.
async fn register(
    client: &kube::Client,
    config: &HollowConfig,
    i: u32,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let wanted = node(config, i);
    let name = wanted.name_any();
    match api.create(&PostParams::default(), &wanted).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&node_status(i, &name)),
    )
    .await
}

impl HollowNodes {
    /// Registers `config.count` hollow nodes and starts their one heartbeat
    /// task and one task for the pods bound to them.
    pub async fn start(client: kube::Client, config: HollowConfig) -> Result<Self, kube::Error> {
        let registered: Vec<Node> = futures::stream::iter(0..config.count as u32)
            .map(|i| {
                let (client, config) = (&client, &config);
                async move { register_retrying(client, config, i).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let nodes = registered
            .into_iter()
            .map(|n| {
                let name = n.name_any();
                let index = name[config.prefix.len()..].parse().unwrap_or(0);
                (name, (index, n.metadata.uid))
            })
            .collect();
        let hollow = Arc::new(Hollow {
            client,
            nodes,
            next_ip: Mutex::default(),
        });
        let heartbeat = tokio::spawn(hollow.clone().heartbeat());
        let pods = tokio::spawn(hollow.run_pods());
        Ok(Self {
            _tasks: kubox_client::Tasks::new(vec![heartbeat, pods]),
        })
    }
}

impl Hollow {
    /// Renews every node's Lease once a period, a slice of the nodes at a
    /// time spread evenly over it, as kubelets started at different moments
    /// are: renewing all at once every period would swamp the server for
    /// seconds at a time with thousands of nodes, and hold up every other
    /// request meanwhile.
    async fn heartbeat(self: Arc<Self>) {
        let nodes: Vec<_> = self.nodes.iter().collect();
        let per_tick = nodes.len().div_ceil(HEARTBEAT_SLICES).max(1);
        // Fewer nodes than slices make fewer, longer slices: each node is
        // still renewed once a period.
        let slices = nodes.len().div_ceil(per_tick).max(1);
        let mut tick = tokio::time::interval(LEASE_RENEW / slices as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let client = &self.client;
        for slice in nodes.chunks(per_tick).cycle() {
            tick.tick().await;
            futures::stream::iter(slice)
                .for_each_concurrent(IN_FLIGHT, |(name, (_, uid))| async move {
                    if let Err(e) = renew_lease(client, name, uid.clone()).await {
                        tracing::warn!(node = name, "renewing a hollow node's lease: {e}");
                    }
                })
                .await;
        }
    }

    /// Watches bound pods: those on a hollow node are reported running,
    /// and deleted for good once their deletion is asked for, as a kubelet
    /// does when their containers have stopped.
    async fn run_pods(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let stream =
            watcher(api, watcher::Config::default().fields("spec.nodeName!=")).default_backoff();
        // Pods reported running whose report the watch may not show yet.
        let reported: Mutex<HashSet<String>> = Mutex::default();
        stream
            .for_each_concurrent(IN_FLIGHT, |event| {
                let (this, reported) = (&self, &reported);
                async move {
                    match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                            this.on_pod(pod, reported).await
                        }
                        Ok(watcher::Event::Delete(pod)) => {
                            lock(reported).remove(&pod.uid().unwrap_or_default());
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("watching hollow nodes' pods: {e}"),
                    }
                }
            })
            .await;
    }

    async fn on_pod(&self, pod: Pod, reported: &Mutex<HashSet<String>>) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let Some(&(index, _)) = node.as_ref().and_then(|n| self.nodes.get(n)) else {
            return;
        };
        let uid = pod.uid().unwrap_or_default();
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if pod.metadata.deletion_timestamp.is_some() {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                // Gone already, or another pod by now.
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => tracing::warn!(pod = pod.name_any(), "deleting a hollow pod: {e}"),
            }
            return;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running || !lock(reported).insert(uid.clone()) {
            return;
        }
        let status = self.pod_status(&pod, index, node.as_deref().unwrap_or_default());
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
        {
            lock(reported).remove(&uid);
            tracing::warn!(pod = pod.name_any(), "reporting a hollow pod running: {e}");
        }
    }

    fn pod_status(&self, pod: &Pod, index: u32, node: &str) -> serde_json::Value {
        let host_ip = node_ip(index).to_string();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let pod_ip = if host_network {
            host_ip.clone()
        } else {
            let n = {
                let mut next = lock(&self.next_ip);
                let n = next.entry(node.to_owned()).or_default();
                *n += 1;
                *n
            };
            // .1 is the node's own address on its pod range.
            let (base, _) = pod_cidr(index);
            Ipv4Addr::from(u32::from(base) + 2 + (n - 1) % 253).to_string()
        };
        let now = Time(Timestamp::now());
        let condition = |type_: &str| serde_json::json!({"type": type_, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let conditions = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        .map(condition);
        let containers: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                    "restartCount": 0, "state": {"running": {"startedAt": now}},
                })
            })
            .collect();
        serde_json::json!({"status": {
            "phase": "Running",
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": containers,
        }})
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_addresses_and_ranges_of_their_own() {
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 64, 0, 1));
        assert_eq!(node_ip(300), Ipv4Addr::new(10, 64, 1, 45));
        assert_eq!(pod_cidr(4999).1, "10.147.135.0/24");
        let config = HollowConfig {
            prefix: "hollow-".into(),
            count: 5,
            zones: 2,
        };
        let n = node(&config, 3);
        assert_eq!(n.name_any(), "hollow-3");
        assert_eq!(n.labels()["topology.kubernetes.io/zone"], "zone-1");
        assert_eq!(n.labels()["kubernetes.io/hostname"], "hollow-3");
    }

    #[test]
    fn overload_and_server_errors_are_retried_refusals_are_not() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({"code": code, "status": "Failure"}))
                    .expect("a Status"),
            ))
        };
        assert!(is_transient(&api(429)));
        assert!(is_transient(&api(503)));
        assert!(!is_transient(&api(403)));
        assert!(!is_transient(&api(422)));
    }
}
