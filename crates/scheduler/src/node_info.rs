//! What the scheduler knows of a node: the Node and what the pods on it use.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::resources::{Resources, pod_requests};

/// A host port a pod holds: protocol, host IP ("" for all), port.
pub type HostPort = (String, String, i32);

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub requested: Resources,
    /// Requests as scoring counts them: containers without CPU or memory
    /// requests count upstream's defaults (100m, 200 MB).
    pub non_zero_requested: (i64, i64),
    pub pods: usize,
    pub ports: HashSet<HostPort>,
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

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            requested: Resources::new(),
            non_zero_requested: (0, 0),
            pods: 0,
            ports: HashSet::new(),
        }
    }

    pub fn add(&mut self, pod: &Pod) {
        for (k, v) in pod_requests(pod) {
            *self.requested.entry(k).or_default() += v;
        }
        let (cpu, mem) = non_zero_requests(pod);
        self.non_zero_requested.0 += cpu;
        self.non_zero_requested.1 += mem;
        self.pods += 1;
        self.ports.extend(host_ports(pod));
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Whether a pod still holds its node's resources: bound and not finished.
pub fn occupies_node(pod: &Pod) -> bool {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    bound && !matches!(phase, Some("Succeeded" | "Failed"))
}
