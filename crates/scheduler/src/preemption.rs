//! Preemption, as upstream's DefaultPreemption at its core: for a pod that
//! fits nowhere, find the node where evicting the fewest and least
//! important lower-priority pods lets it fit.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::filters::{PreFilter, Rejection, filter};
use crate::node_info::NodeInfo;
use crate::priority;
use crate::queue::Key;

/// Where the pod would fit, and whom it would evict there.
pub struct Candidate {
    pub node: String,
    pub victims: Vec<(Key, Arc<Pod>)>,
}

pub fn eligible(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

/// The victims on one node: every lower-priority pod is taken off, then
/// they are put back most important first while the pod still fits.
fn victims_on(pod: &Pod, pre: &PreFilter, info: &NodeInfo) -> Option<Vec<(Key, Arc<Pod>)>> {
    let mine = priority(pod);
    let mut trial = info.clone();
    let mut lower: Vec<(Key, Arc<Pod>)> = info
        .pods
        .iter()
        .filter(|(_, p)| priority(p) < mine)
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    if lower.is_empty() {
        return None;
    }
    for (k, _) in &lower {
        trial.remove(k);
    }
    filter(pod, pre, &trial).ok()?;
    lower.sort_by_key(|(k, p)| (std::cmp::Reverse(priority(p)), k.clone()));
    let mut victims = Vec::new();
    for (k, p) in lower {
        trial.add(k.clone(), p.clone());
        if filter(pod, pre, &trial).is_err() {
            trial.remove(&k);
            victims.push((k, p));
        }
    }
    Some(victims)
}

/// The best node to preempt on among those whose rejection evicting could
/// change: the lowest most-important victim, then the lowest sum of
/// priorities, then the fewest victims (upstream's pickOneNodeForPreemption).
pub fn find(pod: &Pod, pre: &PreFilter, rejected: &[(&NodeInfo, Rejection)]) -> Option<Candidate> {
    rejected
        .iter()
        .filter(|(_, r)| r.resolvable)
        .filter_map(|(info, _)| {
            let victims = victims_on(pod, pre, info)?;
            let top = victims
                .iter()
                .map(|(_, p)| priority(p))
                .max()
                .unwrap_or(i32::MIN);
            let sum: i64 = victims.iter().map(|(_, p)| i64::from(priority(p))).sum();
            Some(((top, sum, victims.len()), info.name().to_owned(), victims))
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, node, victims)| Candidate { node, victims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn pod(name: &str, priority: i32, cpu: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn the_cheapest_node_loses_only_what_it_must() {
        let mut cache = Cache::default();
        for name in ["a", "b"] {
            cache.set_node(Arc::new(
                serde_json::from_value::<Node>(json!({"metadata": {"name": name},
                    "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"}}}))
                .unwrap(),
            ));
        }
        cache.assume("default/a1".into(), "a".into(), pod("a1", 10, "1"));
        cache.assume("default/a2".into(), "a".into(), pod("a2", 10, "1"));
        cache.assume("default/b1".into(), "b".into(), pod("b1", 5, "1"));
        cache.assume("default/b2".into(), "b".into(), pod("b2", 1000, "1"));
        let incoming = pod("vip", 100, "1");
        let pre = PreFilter::new(&incoming);
        let rejected: Vec<(&NodeInfo, Rejection)> = cache
            .nodes()
            .map(|n| (n, filter(&incoming, &pre, n).unwrap_err()))
            .collect();
        let c = find(&incoming, &pre, &rejected).unwrap();
        assert_eq!(c.node, "b");
        let names: Vec<&str> = c.victims.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["default/b1"]);
    }
}
