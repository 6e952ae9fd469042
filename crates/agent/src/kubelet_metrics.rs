//! The agent's `/metrics`: kubelet's own metrics, with its names, types
//! and labels.

use std::time::Duration;

use kubox_prometheus::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    container_state: &'static str,
}

/// kubelet's pod start buckets, in seconds.
const START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

pub struct KubeletMetrics {
    registry: Registry,
    running_pods: Gauge,
    running_containers: Family<StateLabels, Gauge>,
    pod_start: Histogram,
}

impl Default for KubeletMetrics {
    fn default() -> Self {
        let registry = Registry::default();
        let running_pods = Gauge::default();
        let running_containers = Family::<StateLabels, Gauge>::default();
        let pod_start = Histogram::new(START_BUCKETS.iter().copied());
        registry.register(
            "kubelet_running_pods",
            "[ALPHA] Number of pods that have a running pod sandbox",
            running_pods.clone(),
        );
        registry.register(
            "kubelet_running_containers",
            "[ALPHA] Number of containers currently running",
            running_containers.clone(),
        );
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            pod_start.clone(),
        );
        Self {
            registry,
            running_pods,
            running_containers,
            pod_start,
        }
    }
}

impl KubeletMetrics {
    /// A pod this agent saw `took` ago now runs.
    pub fn pod_started(&self, took: Duration) {
        self.pod_start.observe(took.as_secs_f64());
    }
}

/// The page, with the running pods and containers counted now.
pub fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let pods = shared
        .sandboxes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let containers = shared
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    m.running_pods.set(pods as i64);
    m.running_containers
        .get_or_create(&StateLabels {
            container_state: "running",
        })
        .set(containers as i64);
    m.registry.render()
}
