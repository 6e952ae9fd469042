//! The scores of upstream's default profile that kubox computes, each
//! normalised to 0..=100 and weighted as upstream weighs them.

use k8s_openapi::api::core::v1::Pod;

use std::collections::HashMap;

use crate::filters::{PreFilter, term_matches, tolerates};
use crate::node_info::NodeInfo;

const MAX: i64 = 100;

/// NodeResourcesFit with LeastAllocated: free CPU and memory after placing the pod.
fn least_allocated(pre: &PreFilter, info: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pre, info);
    (((1.0 - cpu) * MAX as f64 + (1.0 - mem) * MAX as f64) / 2.0)
        .round()
        .max(0.0) as i64
}

/// CPU and memory in use after placing the pod, as fractions of allocatable.
fn fractions(pre: &PreFilter, info: &NodeInfo) -> (f64, f64) {
    let alloc = &info.allocatable;
    let (pod_cpu, pod_mem) = pre.non_zero;
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
fn balanced_allocation(pre: &PreFilter, info: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pre, info);
    let std_dev = (cpu - mem).abs() / 2.0;
    ((1.0 - std_dev) * MAX as f64).round() as i64
}

/// TaintToleration: how many PreferNoSchedule taints the pod does not tolerate (fewer is better).
fn intolerable_taints(pre: &PreFilter, info: &NodeInfo) -> i64 {
    info.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&pre.prefer_tolerations, t))
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

/// Scales raw scores to 0..=100 between the lowest and the highest, as
/// InterPodAffinity does (its raw scores may be negative).
fn normalize_min_max(raw: &[i64]) -> Vec<i64> {
    let (min, max) = (
        raw.iter().copied().min().unwrap_or(0),
        raw.iter().copied().max().unwrap_or(0),
    );
    raw.iter()
        .map(|&s| {
            if max > min {
                MAX * (s - min) / (max - min)
            } else {
                0
            }
        })
        .collect()
}

/// An image reference as nodes report it: registry, repository and tag
/// spelled out (`busybox` is `docker.io/library/busybox:latest`).
pub fn normalized_image(image: &str) -> String {
    let (name, digest) = image
        .split_once('@')
        .map_or((image, None), |(n, d)| (n, Some(d)));
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = match (has_registry, name.contains('/')) {
        (true, _) => name.to_owned(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => full,
    }
}

/// The images of the pod's containers, normalised.
pub fn pod_images(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .filter_map(|c| c.image.as_deref())
        .map(normalized_image)
        .collect()
}

/// ImageLocality: the sizes of the pod's images the node already has, each
/// scaled by the share of nodes that have it (so one node hoarding an image
/// does not draw every pod), between 23 MB and 1000 MB per container.
fn image_locality(images: &[String], spread: &ImageSpread, info: &NodeInfo) -> i64 {
    const MIN: i64 = 23 * 1024 * 1024;
    const MAX_PER_CONTAINER: i64 = 1000 * 1024 * 1024;
    if images.is_empty() {
        return 0;
    }
    let sum: i64 = images
        .iter()
        .filter_map(|i| {
            let size = info.images.get(i)?;
            let share =
                spread.nodes_with.get(i).copied().unwrap_or(0) as f64 / spread.total.max(1) as f64;
            Some((*size as f64 * share) as i64)
        })
        .sum();
    let max = MAX_PER_CONTAINER * images.len() as i64;
    MAX * (sum.clamp(MIN, max) - MIN) / (max - MIN)
}

/// How many of the cluster's nodes have each image, and how many nodes
/// there are: what ImageLocality scales an image's size by.
pub struct ImageSpread<'a> {
    pub nodes_with: &'a HashMap<String, usize>,
    pub total: usize,
}

/// The weighted total of every score for each feasible node, in order,
/// with upstream's default weights.
pub fn score(pod: &Pod, pre: &PreFilter, nodes: &[&NodeInfo], images: &ImageSpread) -> Vec<i64> {
    let per =
        |f: fn(&PreFilter, &NodeInfo) -> i64| nodes.iter().map(|n| f(pre, n)).collect::<Vec<_>>();
    let taints = normalize(&per(intolerable_taints), true);
    let node_affinity = normalize(
        &nodes
            .iter()
            .map(|n| preferred_affinity(pod, n))
            .collect::<Vec<_>>(),
        false,
    );
    let pod_affinity = match &pre.affinity {
        Some(a) => normalize_min_max(&nodes.iter().map(|n| a.score(n)).collect::<Vec<_>>()),
        None => vec![0; nodes.len()],
    };
    let spread = match &pre.spread {
        Some(s) => s.scores(nodes),
        None => vec![0; nodes.len()],
    };
    (0..nodes.len())
        .map(|i| {
            least_allocated(pre, nodes[i])
                + balanced_allocation(pre, nodes[i])
                + 3 * taints[i]
                + 2 * node_affinity[i]
                + 2 * pod_affinity[i]
                + 2 * spread[i]
                + image_locality(&pre.images, images, nodes[i])
        })
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

    fn plain_score(p: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut nodes_with = HashMap::new();
        for image in nodes.iter().flat_map(|n| n.images.keys()) {
            *nodes_with.entry(image.clone()).or_default() += 1;
        }
        let images = ImageSpread {
            nodes_with: &nodes_with,
            total: nodes.len(),
        };
        score(p, &PreFilter::new(p), nodes, &images)
    }

    #[test]
    fn images_are_named_in_full() {
        assert_eq!(
            normalized_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalized_image("nginx:1.27"),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(
            normalized_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalized_image("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(
            normalized_image("me/app@sha256:ab"),
            "docker.io/me/app@sha256:ab"
        );
    }

    #[test]
    fn nodes_with_the_image_score_higher() {
        let with = node(
            "a",
            json!({"status": {"images": [
            {"names": ["docker.io/library/big:1"], "sizeBytes": 800_000_000}]}}),
        );
        let without = node("b", json!({}));
        let s = plain_score(
            &pod(json!({"containers": [{"name": "c", "image": "big:1"}]})),
            &[&with, &without],
        );
        assert!(s[0] > s[1], "{s:?}");
    }

    #[test]
    fn emptier_nodes_score_higher() {
        let idle = node("a", json!({}));
        let mut busy = node("b", json!({}));
        busy.add("default/busy".into(), Arc::new(pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "6Gi"}}}]}))));
        let scores = plain_score(&pod(json!({})), &[&idle, &busy]);
        assert!(scores[0] > scores[1], "{scores:?}");
    }

    #[test]
    fn preferences_and_soft_taints_steer() {
        let soft = node(
            "a",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        );
        let plain = node("b", json!({}));
        let s = plain_score(&pod(json!({})), &[&soft, &plain]);
        assert!(s[1] > s[0], "{s:?}");
        let wants_a = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}}]}}}),
        );
        let s = plain_score(&wants_a, &[&node("a", json!({})), &node("b", json!({}))]);
        assert!(s[0] > s[1], "{s:?}");
    }
}
