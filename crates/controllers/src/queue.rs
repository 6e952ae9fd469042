//! A work queue with client-go's guarantees, for controllers whose items are
//! not objects of one type (the garbage collector's graph nodes): an item
//! queued several times is processed once, never by two workers at once,
//! and one added while being processed is processed again afterwards.
//! Failed items come back after the runner's per-item exponential delay.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::queue_metrics::QueueMetrics;
use crate::runner::Failures;

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
}

pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    failures: Failures<T>,
    metrics: QueueMetrics,
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> WorkQueue<T> {
    /// A queue reporting its metrics as `name`, client-go's queue name.
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
            }),
            ready: Notify::new(),
            failures: Failures::default(),
            metrics: QueueMetrics::new(name),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, item: T) {
        let mut state = self.lock();
        if !state.dirty.insert(item.clone()) {
            return;
        }
        self.metrics.adds.inc();
        if !state.processing.contains(&item) {
            state.queue.push_back(item);
            self.metrics.depth.set(state.queue.len() as i64);
            self.ready.notify_one();
        }
    }

    /// Adds `item` once `delay` has passed (nothing if the queue is gone by then).
    pub fn add_after(self: &Arc<Self>, item: T, delay: Duration) {
        let queue: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(item);
            }
        });
    }

    /// Adds `item` again after its next exponential failure delay.
    pub fn add_rate_limited(self: &Arc<Self>, item: T) {
        self.metrics.retries.inc();
        let delay = self.failures.delay(item.clone());
        self.add_after(item, delay);
    }

    /// Resets `item`'s failure count.
    pub fn forget(&self, item: &T) {
        self.failures.forget(item);
    }

    /// The next item to process; hand it back with `done`.
    pub async fn get(&self) -> T {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(item) = state.queue.pop_front() {
                    self.metrics.depth.set(state.queue.len() as i64);
                    state.dirty.remove(&item);
                    state.processing.insert(item.clone());
                    // Another item may be waiting for another worker.
                    if !state.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return item;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, item: &T) {
        let mut state = self.lock();
        state.processing.remove(item);
        if state.dirty.contains(item) {
            state.queue.push_back(item.clone());
            self.metrics.depth.set(state.queue.len() as i64);
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_item_is_queued_once_and_requeued_when_added_while_processed() {
        let q = WorkQueue::new("test");
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.get().await, "a");
        q.add("a");
        assert_eq!(q.get().await, "b");
        q.done(&"b");
        // "a" is still being processed: it waits for done.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), q.get())
                .await
                .is_err()
        );
        q.done(&"a");
        assert_eq!(q.get().await, "a");
    }
}
