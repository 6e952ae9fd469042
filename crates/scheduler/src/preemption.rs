//! Preemption, as upstream's DefaultPreemption at its core: for a pod that
//! fits nowhere, find the node where evicting the fewest and least
//! important lower-priority pods lets it fit, breaking as few
//! PodDisruptionBudgets as it can.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::filters::{PreFilter, Rejection, filter};
use crate::node_info::NodeInfo;
use crate::priority;
use crate::queue::Key;

/// A pod that may be evicted, by its key.
pub type Victim = (Key, Arc<Pod>);

/// Where the pod would fit, and whom it would evict there.
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Victim>,
}

pub fn eligible(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

/// The disruptions each budget still allows, as upstream's
/// filterPodsWithPDBViolation spends them.
pub struct Budgets {
    budgets: Vec<Budget>,
}

struct Budget {
    namespace: String,
    selector: Selector,
    allowed: i32,
    /// Pods whose eviction the API server already counted against it.
    disrupted: Vec<String>,
}

impl Budgets {
    pub fn new(pdbs: &[Arc<PodDisruptionBudget>]) -> Self {
        let budgets = pdbs
            .iter()
            .filter_map(|pdb| {
                let selector = pdb.spec.as_ref()?.selector.clone()?;
                let selector = Selector::try_from(selector).ok()?;
                let status = pdb.status.as_ref();
                Some(Budget {
                    namespace: pdb.namespace().unwrap_or_default(),
                    selector,
                    allowed: status.and_then(|s| s.disruptions_allowed).unwrap_or(0),
                    disrupted: status
                        .and_then(|s| s.disrupted_pods.as_ref())
                        .map(|d| d.keys().cloned().collect())
                        .unwrap_or_default(),
                })
            })
            .collect();
        Self { budgets }
    }

    /// Splits `pods` (most important first) into those whose eviction would
    /// take some budget below zero and the rest, spending the budgets in
    /// that order. An empty selector protects nothing, as upstream's.
    fn split(&self, pods: Vec<Victim>) -> (Vec<Victim>, Vec<Victim>) {
        let mut allowed: Vec<i32> = self.budgets.iter().map(|b| b.allowed).collect();
        pods.into_iter().partition(|(_, p)| {
            let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
            let mut violated = false;
            for (b, left) in self.budgets.iter().zip(&mut allowed) {
                if b.namespace == ns
                    && !b.selector.selects_all()
                    && b.selector.matches(p.labels())
                    && !b.disrupted.contains(&name)
                {
                    *left -= 1;
                    violated |= *left < 0;
                }
            }
            violated
        })
    }
}

/// A node's victims and how many of them break a disruption budget.
struct Victims {
    pods: Vec<Victim>,
    violating: usize,
}

/// The victims on one node: every lower-priority pod is taken off, then
/// they are put back most important first while the pod still fits, those
/// whose eviction would break a disruption budget before the others.
fn victims_on(pod: &Pod, pre: &PreFilter, info: &NodeInfo, budgets: &Budgets) -> Option<Victims> {
    let mine = priority(pod);
    let mut lower: Vec<Victim> = info
        .pods
        .iter()
        .filter(|(_, p)| priority(p) < mine)
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    if lower.is_empty() {
        return None;
    }
    // Only a node with candidates is worth the copy.
    let mut trial = info.clone();
    for (k, _) in &lower {
        trial.remove(k);
    }
    filter(pod, pre, &trial).ok()?;
    lower.sort_by_key(|(k, p)| (std::cmp::Reverse(priority(p)), k.clone()));
    let (violating, others) = budgets.split(lower);
    let mut victims = Victims {
        pods: Vec::new(),
        violating: 0,
    };
    let breaking = violating.len();
    for (i, (k, p)) in violating.into_iter().chain(others).enumerate() {
        trial.add(k.clone(), p.clone());
        if filter(pod, pre, &trial).is_err() {
            trial.remove(&k);
            victims.pods.push((k, p));
            victims.violating += usize::from(i < breaking);
        }
    }
    Some(victims)
}

/// The best node to preempt on among those whose rejection evicting could
/// change: the fewest budgets broken, then the lowest most-important
/// victim, then the lowest sum of priorities, then the fewest victims
/// (upstream's pickOneNodeForPreemption).
pub fn find(
    pod: &Pod,
    pre: &PreFilter,
    rejected: &[(&NodeInfo, Rejection)],
    budgets: &Budgets,
) -> Option<Candidate> {
    rejected
        .iter()
        .filter(|(_, r)| r.resolvable)
        .filter_map(|(info, _)| {
            let Victims {
                pods: victims,
                violating,
            } = victims_on(pod, pre, info, budgets)?;
            let top = victims
                .iter()
                .map(|(_, p)| priority(p))
                .max()
                .unwrap_or(i32::MIN);
            let sum: i64 = victims.iter().map(|(_, p)| i64::from(priority(p))).sum();
            Some((
                (violating, top, sum, victims.len()),
                info.name().to_owned(),
                victims,
            ))
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
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
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
        let c = find(&incoming, &pre, &rejected, &Budgets::new(&[])).unwrap();
        assert_eq!(c.node, "b");
        let names: Vec<&str> = c.victims.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["default/b1"]);
        // A budget allowing no disruption of b1 sends the pod to a instead.
        let guard: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "guard", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "b1"}}},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
        .unwrap();
        let budgets = Budgets::new(&[Arc::new(guard)]);
        let c = find(&incoming, &pre, &rejected, &budgets).unwrap();
        assert_eq!(c.node, "a");
        assert_eq!(c.victims.len(), 1);
    }

    #[test]
    fn budget_breaking_pods_are_reprieved_first() {
        let mut node = NodeInfo::new(Arc::new(
            serde_json::from_value::<Node>(json!({"metadata": {"name": "n"},
                "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"}}}))
            .unwrap(),
        ));
        // c1 matters more, but b1 is the one a budget protects.
        node.add("default/b1".into(), pod("b1", 1, "1"));
        node.add("default/c1".into(), pod("c1", 5, "1"));
        let guard: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "guard", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "b1"}}},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
        .unwrap();
        let incoming = pod("vip", 100, "1");
        let pre = PreFilter::new(&incoming);
        let v = victims_on(&incoming, &pre, &node, &Budgets::new(&[Arc::new(guard)])).unwrap();
        let names: Vec<&str> = v.pods.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!((names, v.violating), (vec!["default/c1"], 0));
    }
}
