//! Resource quantities as the scheduler counts them: CPU in millicores,
//! everything else in whole units (bytes, pods, devices).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in the scheduler's units: millicores for `cpu`, base units otherwise.
pub fn amount(resource: &str, q: &Quantity) -> i64 {
    let value = kubox_client::quantity::parse(&q.0).unwrap_or(0.0);
    if resource == "cpu" {
        (value * 1000.0).ceil() as i64
    } else {
        value.ceil() as i64
    }
}

pub type Resources = BTreeMap<String, i64>;

fn requests(c: &Container) -> Resources {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), amount(k, v))).collect())
        .unwrap_or_default()
}

/// What a pod asks of a node: the larger of its app containers' sum and
/// any one init container, plus its overhead (upstream's PodRequests).
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::new();
    };
    let mut total = Resources::new();
    for c in &spec.containers {
        for (k, v) in requests(c) {
            *total.entry(k).or_default() += v;
        }
    }
    // Restartable (sidecar) init containers keep running beside the app containers.
    let mut sidecars = Resources::new();
    for c in spec.init_containers.iter().flatten() {
        let r = requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            for (k, v) in r {
                *sidecars.entry(k.clone()).or_default() += v;
                *total.entry(k).or_default() += v;
            }
        } else {
            for (k, v) in r {
                let during_init = v + sidecars.get(&k).copied().unwrap_or(0);
                let slot = total.entry(k).or_default();
                *slot = (*slot).max(during_init);
            }
        }
    }
    for (k, v) in spec.overhead.iter().flatten() {
        *total.entry(k.clone()).or_default() += amount(k, v);
    }
    total
}

/// A node's allocatable resources.
pub fn allocatable(node: &k8s_openapi::api::core::v1::Node) -> Resources {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), amount(k, v))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_scheduler_units() {
        assert_eq!(amount("cpu", &Quantity("500m".into())), 500);
        assert_eq!(amount("cpu", &Quantity("2".into())), 2000);
        assert_eq!(amount("memory", &Quantity("1Gi".into())), 1 << 30);
        assert_eq!(amount("memory", &Quantity("128974848".into())), 128974848);
        assert_eq!(amount("pods", &Quantity("110".into())), 110);
    }

    #[test]
    fn init_containers_count_by_their_maximum() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "500m"}}},
                ],
                "overhead": {"cpu": "100m"},
            }
        }))
        .unwrap();
        let r = pod_requests(&pod);
        assert_eq!(r["cpu"], 2100);
        assert_eq!(r["memory"], 1 << 30);
    }
}
