//! The scores of upstream's default profile that kubox computes, each
//! normalised to 0..=100 and weighted as upstream weighs them.

use k8s_openapi::api::core::v1::Pod;

use crate::filters::{term_matches, tolerates};
use crate::node_info::{NodeInfo, non_zero_requests};
use crate::resources::allocatable;

const MAX: i64 = 100;

/// NodeResourcesFit with LeastAllocated: free CPU and memory after placing the pod.
fn least_allocated(pod: &Pod, info: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pod, info);
    (((1.0 - cpu) * MAX as f64 + (1.0 - mem) * MAX as f64) / 2.0)
        .round()
        .max(0.0) as i64
}

/// CPU and memory in use after placing the pod, as fractions of allocatable.
fn fractions(pod: &Pod, info: &NodeInfo) -> (f64, f64) {
    let alloc = allocatable(&info.node);
    let (pod_cpu, pod_mem) = non_zero_requests(pod);
    let frac = |used: i64, cap: Option<&i64>| match cap {
        Some(cap) if *cap > 0 => (used as f64 / *cap as f64).min(1.0),
        _ => 1.0,
    };
    (
        frac(info.non_zero_requested.0 + pod_cpu, alloc.get("cpu")),
        frac(info.non_zero_requested.1 + pod_mem, alloc.get("memory")),
    )
}

/// NodeResourcesBalancedAllocation: CPU and memory used in like proportion.
fn balanced_allocation(pod: &Pod, info: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pod, info);
    let std_dev = (cpu - mem).abs() / 2.0;
    ((1.0 - std_dev) * MAX as f64).round() as i64
}

/// TaintToleration: how many PreferNoSchedule taints the pod does not tolerate (fewer is better).
fn intolerable_taints(pod: &Pod, info: &NodeInfo) -> i64 {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let prefer: Vec<_> = tolerations
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .cloned()
        .collect();
    info.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&prefer, t))
        .count() as i64
}

/// NodeAffinity: the weights of the preferred terms the node matches.
fn preferred_affinity(pod: &Pod, info: &NodeInfo) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| {
            terms
                .iter()
                .filter(|t| t.weight != 0 && term_matches(&t.preference, info))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0)
}

/// Scales raw scores to 0..=100 by the largest; `reverse` when fewer is better.
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&s| {
            let scaled = if max == 0 {
                if reverse { MAX } else { 0 }
            } else {
                s * MAX / max
            };
            if reverse && max != 0 {
                MAX - scaled
            } else {
                scaled
            }
        })
        .collect()
}

/// The weighted total of every score for each feasible node, in order.
pub fn score(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
    let per = |f: fn(&Pod, &NodeInfo) -> i64| nodes.iter().map(|n| f(pod, n)).collect::<Vec<_>>();
    let fit = per(least_allocated);
    let balanced = per(balanced_allocation);
    let taints = normalize(&per(intolerable_taints), true);
    let affinity = normalize(&per(preferred_affinity), false);
    (0..nodes.len())
        .map(|i| fit[i] + balanced[i] + 3 * taints[i] + 2 * affinity[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, extra: serde_json::Value) -> NodeInfo {
        let mut base = json!({"metadata": {"name": name, "labels": {"tier": name}},
                              "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
        json_patch::merge(&mut base, &extra);
        NodeInfo::new(Arc::new(serde_json::from_value::<Node>(base).unwrap()))
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        json_patch::merge(&mut base, &json!({"spec": spec}));
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn emptier_nodes_score_higher() {
        let idle = node("a", json!({}));
        let mut busy = node("b", json!({}));
        busy.add(&pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "6Gi"}}}]})));
        let scores = score(&pod(json!({})), &[&idle, &busy]);
        assert!(scores[0] > scores[1], "{scores:?}");
    }

    #[test]
    fn preferences_and_soft_taints_steer() {
        let soft = node(
            "a",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        );
        let plain = node("b", json!({}));
        let s = score(&pod(json!({})), &[&soft, &plain]);
        assert!(s[1] > s[0], "{s:?}");
        let wants_a = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}}]}}}),
        );
        let s = score(&wants_a, &[&node("a", json!({})), &node("b", json!({}))]);
        assert!(s[0] > s[1], "{s:?}");
    }
}
