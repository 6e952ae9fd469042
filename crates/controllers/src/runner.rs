//! Runs a kube-runtime `Controller` with client-go's retry discipline: a
//! failed reconcile is retried per object after 5 ms, doubling up to
//! 1000 s, and the count resets once it succeeds.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

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
    let on_error = {
        let failures = failures.clone();
        move |obj: Arc<K>, error: &E, _: Arc<C>| {
            let delay = failures.delay(ObjectRef::from_obj(&*obj));
            tracing::warn!(
                controller = name,
                object = %ObjectRef::from_obj(&*obj),
                "reconcile failed, retrying in {delay:?}: {error}"
            );
            Action::requeue(delay)
        }
    };
    let mut results = std::pin::pin!(controller.run(reconcile, on_error, ctx));
    while let Some(result) = results.next().await {
        match result {
            Ok((obj, _)) => failures.forget(&obj),
            Err(e) => tracing::debug!(controller = name, "{e}"),
        }
    }
}
