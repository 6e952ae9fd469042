//! The scheduler's Prometheus metrics, with kube-scheduler's names, types
//! and labels.

use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use kubox_prometheus::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::queue::Queue;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: &'static str,
    profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// One running binding cycle, counted in `scheduler_goroutines` until dropped.
pub struct Running(Gauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How an attempt to schedule a pod ended, as upstream's `result` label.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Scheduled,
    Unschedulable,
    Error,
}

/// Registered once per process: a scheduler started again (a server that
/// wins back leadership) records into the same series.
#[derive(Clone)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    durations: Family<AttemptLabels, Histogram>,
    goroutines: Family<OperationLabels, Gauge>,
    /// The running scheduler's queue, which `scheduler_pending_pods` reads.
    queue: Arc<Mutex<Weak<Queue>>>,
}

impl Metrics {
    /// Registers the scheduler's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let queue = Arc::new(Mutex::new(Weak::<Queue>::new()));
        let attempts = Family::<AttemptLabels, Counter>::default();
        // Upstream's buckets: 1 ms doubling, 15 of them.
        let durations = Family::<AttemptLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let pending = Family::<QueueLabels, Gauge>::default();
        let goroutines = Family::<OperationLabels, Gauge>::default();
        registry.register(
            "scheduler_goroutines",
            "[ALPHA] Number of running goroutines split by the work they do such as binding.",
            goroutines.clone(),
        );
        registry.register(
            "scheduler_schedule_attempts",
            "[STABLE] Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "[STABLE] Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            durations.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "[STABLE] Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods.",
            pending.clone(),
        );
        let watched = queue.clone();
        registry.on_scrape(move || {
            let Some(queue) = watched.lock().unwrap_or_else(|e| e.into_inner()).upgrade() else {
                return;
            };
            let (active, backoff, unschedulable) = queue.lengths();
            for (queue, n) in [
                ("active", active),
                ("backoff", backoff),
                ("unschedulable", unschedulable),
            ] {
                pending.get_or_create(&QueueLabels { queue }).set(n as i64);
            }
        });
        Self {
            attempts,
            durations,
            goroutines,
            queue,
        }
    }

    /// `scheduler_pending_pods` follows `queue` from now on.
    pub(crate) fn follow(&self, queue: &Arc<Queue>) {
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(queue);
    }

    /// Counts a binding cycle as running until the guard is dropped.
    pub fn binding(&self) -> Running {
        let running = self
            .goroutines
            .get_or_create(&OperationLabels {
                operation: "binding",
            })
            .clone();
        running.inc();
        Running(running)
    }

    /// Records one attempt, begun at `started`.
    pub fn attempt(&self, outcome: Outcome, started: Instant) {
        let labels = AttemptLabels {
            result: match outcome {
                Outcome::Scheduled => "scheduled",
                Outcome::Unschedulable => "unschedulable",
                Outcome::Error => "error",
            },
            profile: crate::DEFAULT_SCHEDULER,
        };
        self.attempts.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}
