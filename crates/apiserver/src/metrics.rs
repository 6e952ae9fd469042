//! The API server's own Prometheus metrics, with upstream's names and labels
//! so existing dashboards read them.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::request::{ResourceRequest, Verb};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    dry_run: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
    component: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: &'static str,
    dry_run: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
    component: &'static str,
}

/// Upstream's request latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS.iter().copied())
        });
        let mut registry = Registry::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
            durations.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            durations,
        }
    }
}

/// The verb as upstream's metrics name it: HTTP-like, with LIST and WATCH.
fn metric_verb(verb: Verb) -> &'static str {
    match verb {
        Verb::Get => "GET",
        Verb::List => "LIST",
        Verb::Watch => "WATCH",
        Verb::Create => "POST",
        Verb::Update => "PUT",
        Verb::Patch => "PATCH",
        Verb::Delete => "DELETE",
        Verb::DeleteCollection => "DELETECOLLECTION",
    }
}

impl Metrics {
    /// Records one finished resource request; watches count but are not
    /// timed, as upstream leaves long-running requests out of the latency.
    pub fn observe(&self, rr: &ResourceRequest, dry_run: bool, code: u16, elapsed: Duration) {
        let scope = match (&rr.namespace, &rr.name) {
            (Some(_), _) => "namespace",
            (None, Some(_)) => "resource",
            (None, None) => "cluster",
        };
        let verb = metric_verb(rr.verb);
        let dry_run = if dry_run { "All" } else { "" };
        let subresource = rr.subresource.clone().unwrap_or_default();
        self.requests
            .get_or_create(&RequestLabels {
                verb,
                dry_run,
                group: rr.group.clone(),
                version: rr.version.clone(),
                resource: rr.resource.clone(),
                subresource: subresource.clone(),
                scope,
                component: "apiserver",
                code: code.to_string(),
            })
            .inc();
        if rr.verb != Verb::Watch {
            self.durations
                .get_or_create(&DurationLabels {
                    verb,
                    dry_run,
                    group: rr.group.clone(),
                    version: rr.version.clone(),
                    resource: rr.resource.clone(),
                    subresource,
                    scope,
                    component: "apiserver",
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
