//! The node IPAM controller, as upstream's range allocator: every Node gets
//! a pod network (`spec.podCIDR`, `spec.podCIDRs`) carved out of the
//! cluster CIDR, never one that another node holds. A node's range is free
//! again once the node is gone, since what is taken is read from the nodes
//! that exist.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use kubox_client::events::{Recorder, Type};

use crate::{Context, runner};

/// How a cluster's pod addresses are divided between its nodes.
#[derive(Clone, Copy, Debug)]
pub struct PodRanges {
    /// Every pod address of the cluster (upstream's `--cluster-cidr`).
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of one node's range (`--node-cidr-mask-size`).
    pub node_mask: u8,
}

impl PodRanges {
    /// The `index`th node range, if the cluster CIDR has that many.
    fn range(&self, index: u32) -> Option<Ipv4Net> {
        let shift = u32::from(self.node_mask.checked_sub(self.cluster_cidr.prefix_len())?);
        if shift < 32 && index >= 1 << shift {
            return None;
        }
        let size = 1u64 << (32 - u32::from(self.node_mask));
        let start = u64::from(u32::from(self.cluster_cidr.network())) + u64::from(index) * size;
        Ipv4Net::new(Ipv4Addr::from(u32::try_from(start).ok()?), self.node_mask).ok()
    }

    /// The index of a node range within the cluster CIDR; `None` for one outside it.
    fn index(&self, range: &Ipv4Net) -> Option<u32> {
        if range.prefix_len() != self.node_mask || !self.cluster_cidr.contains(range) {
            return None;
        }
        let offset = u32::from(range.network()) - u32::from(self.cluster_cidr.network());
        Some(offset >> (32 - u32::from(self.node_mask)))
    }

    /// The first range none of `taken` is, as upstream's allocator walks the
    /// range from where it last stopped (here: from the start).
    fn first_free(&self, taken: &[u32]) -> Option<Ipv4Net> {
        (0..)
            .map_while(|i| self.range(i))
            .find(|r| self.index(r).is_some_and(|i| !taken.contains(&i)))
    }
}

struct State {
    client: kube::Client,
    nodes: Store<Node>,
    ranges: PodRanges,
    events: Recorder,
    /// Ranges given out whose node the cache does not show with them yet,
    /// by node UID, so two nodes reconciled at once never get the same.
    pending: Mutex<HashMap<String, u32>>,
}

pub async fn run(ctx: Arc<Context>) {
    let nodes = ctx.informers.get::<Node>();
    nodes.synced().await;
    let controller = Controller::for_shared_stream(nodes.stream(), nodes.store());
    let state = Arc::new(State {
        events: Recorder::new(ctx.client.clone(), "node-ipam-controller", None),
        client: ctx.client.clone(),
        nodes: nodes.store(),
        ranges: ctx.config.pod_ranges,
        pending: Mutex::default(),
    });
    runner::run("nodeipam", controller, reconcile, state).await;
}

fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

async fn reconcile(node: Arc<Node>, state: Arc<State>) -> Result<Action, kube::Error> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let uid = node.uid().unwrap_or_default();
    let range = {
        let mut pending = state.pending.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = state.nodes.state();
        // Forget what the cache now shows, and what went with its node.
        pending.retain(|uid, _| {
            nodes
                .iter()
                .any(|n| n.uid().as_deref() == Some(uid) && pod_cidr(n).is_none())
        });
        let mut taken: Vec<u32> = nodes
            .iter()
            .filter_map(|n| pod_cidr(n))
            .filter_map(|r| state.ranges.index(&r))
            .collect();
        taken.extend(pending.iter().filter(|(u, _)| **u != uid).map(|(_, i)| *i));
        let range = match pending.get(&uid) {
            Some(i) => state.ranges.range(*i),
            None => state.ranges.first_free(&taken),
        };
        if let Some(r) = range.and_then(|r| state.ranges.index(&r)) {
            pending.insert(uid.clone(), r);
        }
        range
    };
    let Some(range) = range else {
        state.events.record(
            node_reference(&node),
            Type::Normal,
            "CIDRNotAvailable",
            format!("Node {} status is now: CIDRNotAvailable", node.name_any()),
        );
        return Ok(Action::requeue(std::time::Duration::from_secs(30)));
    };
    let patch = serde_json::json!({
        "spec": {"podCIDR": range.to_string(), "podCIDRs": [range.to_string()]},
    });
    let api: Api<Node> = Api::all(state.client.clone());
    match api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(node = %node.name_any(), %range, "assigned the node its pod CIDR");
            Ok(Action::await_change())
        }
        // The node went away meanwhile.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => {
            state
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
            Err(e)
        }
    }
}

fn node_reference(node: &Node) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.name_any()),
        uid: Some(node.name_any()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(cidr: &str, mask: u8) -> PodRanges {
        PodRanges {
            cluster_cidr: cidr.parse().unwrap(),
            node_mask: mask,
        }
    }

    #[test]
    fn ranges_are_carved_in_order_and_never_twice() {
        let r = ranges("10.42.0.0/16", 24);
        assert_eq!(r.first_free(&[]).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(r.first_free(&[0, 1]).unwrap().to_string(), "10.42.2.0/24");
        assert_eq!(r.first_free(&[1]).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(r.index(&"10.42.7.0/24".parse().unwrap()), Some(7));
        assert_eq!(r.index(&"10.43.7.0/24".parse().unwrap()), None);
        assert_eq!(r.index(&"10.42.7.0/25".parse().unwrap()), None);
        assert_eq!(r.range(255).unwrap().to_string(), "10.42.255.0/24");
        assert_eq!(r.range(256), None);
    }

    #[test]
    fn a_full_cluster_cidr_has_nothing_to_give() {
        let r = ranges("10.42.0.0/23", 24);
        assert_eq!(r.first_free(&[0, 1]), None);
        assert_eq!(
            ranges("10.42.0.0/24", 24)
                .first_free(&[])
                .unwrap()
                .to_string(),
            "10.42.0.0/24"
        );
        assert_eq!(ranges("10.42.0.0/25", 24).first_free(&[]), None);
    }
}
