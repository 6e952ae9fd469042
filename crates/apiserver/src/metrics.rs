//! The API server's own Prometheus metrics, with upstream's names, types
//! and labels so existing dashboards read them. They live in the process's
//! registry (`kubox_prometheus`), which `/metrics` renders whole: in
//! `kubox server` that includes the in-process scheduler's, controller
//! manager's, ingress controller's and store's metrics, as k3s serves them
//! all on its supervisor.

use std::sync::Arc;
use std::time::Duration;

use kubox_prometheus::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::api::Api;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LongRunningLabels {
    verb: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InflightLabels {
    request_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    group: String,
    version: String,
    kind: String,
}

/// Upstream's request latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
    long_running: Family<LongRunningLabels, Gauge>,
    inflight: Family<InflightLabels, Gauge>,
    watch_events: Family<KindLabels, Counter>,
}

impl Metrics {
    /// Registers the API server's metrics in `registry`, with
    /// `apiserver_storage_objects` counted from `api`'s watch caches at
    /// each scrape.
    pub fn new(registry: Arc<Registry>, api: &Arc<Api>) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS.iter().copied())
        });
        let long_running = Family::<LongRunningLabels, Gauge>::default();
        let inflight = Family::<InflightLabels, Gauge>::default();
        let watch_events = Family::<KindLabels, Counter>::default();
        let objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "apiserver_request",
            "[STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "[STABLE] Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
            durations.clone(),
        );
        registry.register(
            "apiserver_longrunning_requests",
            "[STABLE] Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.",
            long_running.clone(),
        );
        registry.register(
            "apiserver_current_inflight_requests",
            "[STABLE] Maximal number of currently used inflight request limit of this apiserver per request kind in last second.",
            inflight.clone(),
        );
        registry.register(
            "apiserver_watch_events",
            "[ALPHA] Number of events sent in watch clients",
            watch_events.clone(),
        );
        registry.register(
            "apiserver_storage_objects",
            "[STABLE] Number of stored objects at the time of last check split by kind.",
            objects.clone(),
        );
        // Both kinds are always there, as upstream's filter reports them.
        for kind in ["readOnly", "mutating"] {
            inflight
                .get_or_create(&InflightLabels { request_kind: kind })
                .set(0);
        }
        let weak = Arc::downgrade(api);
        registry.on_scrape(move || {
            if let Some(api) = weak.upgrade() {
                for (resource, n) in api.object_counts() {
                    objects
                        .get_or_create(&ResourceLabels { resource })
                        .set(n as i64);
                }
            }
        });
        Self {
            registry,
            requests,
            durations,
            long_running,
            inflight,
            watch_events,
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

fn scope(rr: &ResourceRequest) -> &'static str {
    match (&rr.namespace, &rr.name) {
        (Some(_), _) => "namespace",
        (None, Some(_)) => "resource",
        (None, None) => "cluster",
    }
}

/// Holds a gauge up until it is dropped.
pub struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Records one finished resource request; watches count but are not
    /// timed, as upstream leaves long-running requests out of the latency.
    pub fn observe(&self, rr: &ResourceRequest, dry_run: bool, code: u16, elapsed: Duration) {
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
                scope: scope(rr),
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
                    scope: scope(rr),
                    component: "apiserver",
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a request in flight until the returned guard drops: watches
    /// as long-running requests, the rest by upstream's request kinds.
    pub fn hold(&self, rr: &ResourceRequest) -> Held {
        let gauge = if rr.verb == Verb::Watch {
            self.long_running
                .get_or_create(&LongRunningLabels {
                    verb: metric_verb(rr.verb),
                    group: rr.group.clone(),
                    version: rr.version.clone(),
                    resource: rr.resource.clone(),
                    subresource: rr.subresource.clone().unwrap_or_default(),
                    scope: scope(rr),
                    component: "apiserver",
                })
                .clone()
        } else {
            let request_kind = if matches!(rr.verb, Verb::Get | Verb::List) {
                "readOnly"
            } else {
                "mutating"
            };
            self.inflight
                .get_or_create(&InflightLabels { request_kind })
                .clone()
        };
        gauge.inc();
        Held(gauge)
    }

    /// The counter of events sent to watchers of a kind.
    pub fn watch_events(&self, group: &str, version: &str, kind: &str) -> Counter {
        self.watch_events
            .get_or_create(&KindLabels {
                group: group.to_owned(),
                version: version.to_owned(),
                kind: kind.to_owned(),
            })
            .clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
