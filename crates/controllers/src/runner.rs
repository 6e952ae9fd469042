//! Runs a kube-runtime `Controller` with client-go's retry discipline: a
//! failed reconcile is retried per object after 5 ms, doubling up to
//! 1000 s, and the count resets once it succeeds. A reconcile that panics
//! is retried the same way: kube-runtime would otherwise end the whole
//! controller, leaving every object it owns unreconciled while the
//! process goes on.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
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

/// Why a reconcile did not succeed.
#[derive(Debug, thiserror::Error)]
enum Failure<E> {
    #[error(transparent)]
    Failed(E),
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

/// A panic's message, as the standard hook prints it.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned())
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
        move |obj: Arc<K>, failure: &Failure<E>, _: Arc<C>| {
            metrics.retries.inc();
            let delay = failures.delay(ObjectRef::from_obj(&*obj));
            metrics.depth.set(failures.len() as i64);
            let object = ObjectRef::from_obj(&*obj);
            match failure {
                Failure::Failed(error) => tracing::warn!(
                    controller = name,
                    %object,
                    "reconcile failed, retrying in {delay:?}: {error}"
                ),
                Failure::Panicked(_) => tracing::error!(
                    controller = name,
                    %object,
                    "{failure}; retrying in {delay:?}"
                ),
            }
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
                // The reconcile's state is its own future, dropped with the
                // panic; what it shares (caches, clients) stays consistent
                // across awaits, so going on after a panic is safe.
                let result = std::panic::AssertUnwindSafe(work).catch_unwind().await;
                metrics.worked(started.elapsed());
                match result {
                    Ok(result) => result.map_err(Failure::Failed),
                    Err(payload) => Err(Failure::Panicked(panic_message(&*payload))),
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use tokio::sync::mpsc;

    /// A fake API server that lists one ConfigMap, then never answers the
    /// watch that follows.
    fn one_configmap() -> kube::Client {
        let service = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
            if req.uri().query().is_some_and(|q| q.contains("watch=true")) {
                futures::future::pending::<()>().await;
            }
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": {"resourceVersion": "1"},
                "items": [{"metadata": {"name": "a", "namespace": "default", "resourceVersion": "1"}}],
            });
            let body = http_body_util::Full::new(bytes::Bytes::from(list.to_string()));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn a_reconcile_that_panics_is_retried_and_the_controller_goes_on() {
        let controller = Controller::new(
            kube::Api::<ConfigMap>::all(one_configmap()),
            Default::default(),
        );
        let (calls, mut called) = mpsc::unbounded_channel();
        type Ctx = (std::sync::atomic::AtomicBool, mpsc::UnboundedSender<()>);
        let reconcile = |_: Arc<ConfigMap>, ctx: Arc<Ctx>| async move {
            let (panicked, calls) = &*ctx;
            calls.send(()).expect("the test is listening");
            if !panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("the first reconcile panics");
            }
            Ok::<_, std::io::Error>(Action::await_change())
        };
        let ctx = Arc::new((std::sync::atomic::AtomicBool::new(false), calls));
        let running = tokio::spawn(run("panics", controller, reconcile, ctx));
        for n in ["first", "retried"] {
            tokio::time::timeout(Duration::from_secs(10), called.recv())
                .await
                .unwrap_or_else(|_| panic!("no {n} reconcile within 10 s"))
                .expect("the controller holds the sender");
        }
        assert!(!running.is_finished(), "the controller still runs");
        running.abort();
    }
}
