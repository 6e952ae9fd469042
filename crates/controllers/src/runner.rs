//! Runs a kube-runtime `Controller` with client-go's retry discipline: a
//! failed reconcile is retried per object after 5 ms, doubling up to
//! 1000 s, and the count resets once it succeeds.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::queue_metrics::{QueueMetrics, queue_name};

const FIRST_RETRY: Duration = Duration::from_millis(5);
const LAST_RETRY: Duration = Duration::from_secs(1000);

/// Per-item failure counts, for exponential retry delays (client-go's
/// ItemExponentialFailureRateLimiter).
pub(crate) struct Failures<T> {
    counts: Mutex<HashMap<T, u32>>,
}

impl<T> Default for Failures<T> {
    fn default() -> Self {
        Self {
            counts: Mutex::default(),
        }
    }
}

impl<T: Hash + Eq> Failures<T> {
    /// The delay before retrying `item` once more, counting this failure.
    pub(crate) fn delay(&self, item: T) -> Duration {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(item).or_insert(0);
        let delay = FIRST_RETRY
            .saturating_mul(1u32 << (*n).min(20))
            .min(LAST_RETRY);
        *n += 1;
        delay
    }

    /// How many items are failing.
    pub(crate) fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn forget(&self, item: &T) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(item);
    }
}

/// Drives `controller` until it ends: `reconcile` for each triggered
/// object, retried with backoff when it fails. `name` is the
/// controller's upstream name, for logs.
pub async fn run<K, C, F, Fut, E>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: F,
    ctx: Arc<C>,
) where
    K: crate::Informed,
    C: Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let failures = Arc::new(Failures::<ObjectRef<K>>::default());
    let metrics = QueueMetrics::new(queue_name(name));
    let on_error = {
        let (failures, metrics) = (failures.clone(), metrics.clone());
        move |obj: Arc<K>, error: &E, _: Arc<C>| {
            metrics.retries.inc();
            let delay = failures.delay(ObjectRef::from_obj(&*obj));
            metrics.depth.set(failures.len() as i64);
            tracing::warn!(
                controller = name,
                object = %ObjectRef::from_obj(&*obj),
                "reconcile failed, retrying in {delay:?}: {error}"
            );
            Action::requeue(delay)
        }
    };
    // kube-runtime's scheduler keeps its queue to itself: what is seen of
    // it here is each object handed to reconcile (an add) and the objects
    // waiting out a retry delay (the depth).
    let mut reconcile = reconcile;
    let timed = {
        let metrics = metrics.clone();
        move |obj: Arc<K>, ctx: Arc<C>| {
            metrics.adds.inc();
            let work = reconcile(obj, ctx);
            let metrics = metrics.clone();
            async move {
                let started = Instant::now();
                let result = work.await;
                metrics.worked(started.elapsed());
                result
            }
        }
    };
    let mut results = std::pin::pin!(controller.run(timed, on_error, ctx));
    while let Some(result) = results.next().await {
        match result {
            Ok((obj, _)) => {
                failures.forget(&obj);
                metrics.depth.set(failures.len() as i64);
            }
            Err(e) => tracing::debug!(controller = name, "{e}"),
        }
    }
}
