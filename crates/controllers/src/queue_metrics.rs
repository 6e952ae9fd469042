//! client-go's work queue metrics (`workqueue_*{name}`), which every
//! controller's queue reports under its upstream queue name. As client-go's
//! they are process-wide; [`register`] puts them in a registry.

use std::sync::LazyLock;
use std::time::Duration;

use kubox_prometheus::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    name: &'static str,
}

struct Families {
    depth: Family<Labels, Gauge>,
    adds: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    work: Family<Labels, Histogram>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    depth: Family::default(),
    adds: Family::default(),
    retries: Family::default(),
    // client-go's buckets: 10 ns to 10 s by tens.
    work: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-8, 10.0, 10))),
});

/// Registers the work queue metrics in `registry`.
pub fn register(registry: &Registry) {
    let f = &*FAMILIES;
    registry.register(
        "workqueue_depth",
        "[ALPHA] Current depth of workqueue",
        f.depth.clone(),
    );
    registry.register(
        "workqueue_adds",
        "[ALPHA] Total number of adds handled by workqueue",
        f.adds.clone(),
    );
    registry.register(
        "workqueue_retries",
        "[ALPHA] Total number of retries handled by workqueue",
        f.retries.clone(),
    );
    registry.register(
        "workqueue_work_duration_seconds",
        "[ALPHA] How long in seconds processing an item from workqueue takes.",
        f.work.clone(),
    );
}

/// One queue's metrics.
#[derive(Clone)]
pub(crate) struct QueueMetrics {
    pub depth: Gauge,
    pub adds: Counter,
    pub retries: Counter,
    work: Histogram,
}

impl QueueMetrics {
    pub(crate) fn new(name: &'static str) -> Self {
        let f = &*FAMILIES;
        let labels = Labels { name };
        Self {
            depth: f.depth.get_or_create(&labels).clone(),
            adds: f.adds.get_or_create(&labels).clone(),
            retries: f.retries.get_or_create(&labels).clone(),
            work: f.work.get_or_create(&labels).clone(),
        }
    }

    pub(crate) fn worked(&self, took: Duration) {
        self.work.observe(took.as_secs_f64());
    }
}

/// The name of a controller's queue as kube-controller-manager calls it,
/// from the controller's component name.
pub(crate) fn queue_name(component: &'static str) -> &'static str {
    match component {
        "replicaset-controller" => "replicaset",
        "replication-controller" => "replicationmanager",
        "deployment-controller" => "deployment",
        "job-controller" => "job",
        "cronjob-controller" => "cronjob",
        "daemonset-controller" => "daemonset",
        "statefulset-controller" => "statefulset",
        "namespace-controller" => "namespace",
        "resourcequota-controller" => "resourcequota_primary",
        "horizontal-pod-autoscaler" => "horizontalpodautoscaler",
        "endpoints" => "endpoint",
        "endpointslice" => "endpoint_slice",
        "serviceaccount" => "serviceaccount",
        "serviceaccount-token" => "serviceaccount_tokens_secret",
        "root-ca-cert-publisher" => "root_ca_cert_publisher",
        "ttl-after-finished-controller" => "ttl_jobs_to_delete",
        "clusterrole-aggregation" => "ClusterRoleAggregator",
        "csrsigning" => "certificate",
        "nodeipam" => "node",
        other => other,
    }
}
