//! What the scheduler knows of a node: the Node and what the pods on it use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::queue::Key;
use crate::resources::{Resources, allocatable, pod_requests};

/// A host port a pod holds: protocol, host IP ("" for all), port.
pub type HostPort = (String, String, i32);

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    /// The node's allocatable resources, parsed once per Node update.
    pub allocatable: Resources,
    pub requested: Resources,
    /// Requests as scoring counts them: containers without CPU or memory
    /// requests count upstream's defaults (100m, 200 MB).
    pub non_zero_requested: (i64, i64),
    /// The pods counted on the node, bound or assumed bound.
    pub pods: HashMap<Key, Arc<Pod>>,
    pub ports: HashSet<HostPort>,
    /// The images the node reports having, by every name, with their sizes.
    pub images: HashMap<String, i64>,
}

pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// CPU and memory for scoring, with upstream's defaults for containers that request none.
pub fn non_zero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else { return (0, 0) };
    let mut total = (0, 0);
    for c in &spec.containers {
        let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str| {
            req.and_then(|m| m.get(k))
                .map(|q| crate::resources::amount(k, q))
                .filter(|v| *v > 0)
        };
        total.0 += get("cpu").unwrap_or(DEFAULT_MILLI_CPU);
        total.1 += get("memory").unwrap_or(DEFAULT_MEMORY);
    }
    total
}

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else { return vec![] };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip
                    .clone()
                    .filter(|ip| ip != "0.0.0.0")
                    .unwrap_or_default(),
                port,
            ))
        })
        .collect()
}

fn images(node: &Node) -> HashMap<String, i64> {
    node.status
        .iter()
        .flat_map(|s| s.images.iter().flatten())
        .flat_map(|i| {
            let size = i.size_bytes.unwrap_or(0);
            i.names.iter().flatten().map(move |n| (n.clone(), size))
        })
        .collect()
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            allocatable: allocatable(&node),
            images: images(&node),
            node,
            requested: Resources::new(),
            non_zero_requested: (0, 0),
            pods: HashMap::new(),
            ports: HashSet::new(),
        }
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = allocatable(&node);
        self.images = images(&node);
        self.node = node;
    }

    /// Counts `pod` on the node, in place of what was counted under `key`.
    pub fn add(&mut self, key: Key, pod: Arc<Pod>) {
        self.remove(&key);
        self.account(&pod, 1);
        self.ports.extend(host_ports(&pod));
        self.pods.insert(key, pod);
    }

    pub fn remove(&mut self, key: &str) -> Option<Arc<Pod>> {
        let pod = self.pods.remove(key)?;
        self.account(&pod, -1);
        if !host_ports(&pod).is_empty() {
            self.ports = self.pods.values().flat_map(|p| host_ports(p)).collect();
        }
        Some(pod)
    }

    fn account(&mut self, pod: &Pod, sign: i64) {
        for (k, v) in pod_requests(pod) {
            *self.requested.entry(k).or_default() += sign * v;
        }
        let (cpu, mem) = non_zero_requests(pod);
        self.non_zero_requested.0 += sign * cpu;
        self.non_zero_requested.1 += sign * mem;
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &std::collections::BTreeMap<String, String> {
        static NONE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&NONE)
    }
}

/// Whether a pod still holds its node's resources: bound and not finished.
pub fn occupies_node(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    bound_node(pod).is_some() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The node a pod is bound to.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}
