//! The scheduling queue, as upstream's: pods wait in an active queue
//! (highest priority first, then oldest), go to back-off after a failed
//! attempt (1 s doubling to 10 s), and, when unschedulable, wait until a
//! cluster event (a node added or changed, a pod gone) may have made room.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Unschedulable pods are tried again this long after their last attempt
/// even without an event (upstream's podMaxInUnschedulablePodsDuration).
const UNSCHEDULABLE_MAX: Duration = Duration::from_secs(300);

/// `namespace/name`.
pub type Key = String;

#[derive(Default)]
struct State {
    /// (priority, arrival): the order pods are tried in.
    active: BTreeSet<(Reverse<i32>, u64, Key)>,
    queued: HashMap<Key, (i32, u64)>,
    /// Pods that failed, with when they may be tried again.
    backoff: HashMap<Key, (Instant, i32)>,
    unschedulable: HashMap<Key, (Instant, i32)>,
    attempts: HashMap<Key, u32>,
    seq: u64,
}

impl State {
    fn activate(&mut self, key: Key, priority: i32) {
        if self.queued.contains_key(&key) {
            return;
        }
        self.seq += 1;
        self.active
            .insert((Reverse(priority), self.seq, key.clone()));
        self.queued.insert(key, (priority, self.seq));
    }

    fn remove(&mut self, key: &str) {
        if let Some((priority, seq)) = self.queued.remove(key) {
            self.active
                .remove(&(Reverse(priority), seq, key.to_owned()));
        }
        self.backoff.remove(key);
        self.unschedulable.remove(key);
    }

    fn backoff_for(&self, key: &str) -> Duration {
        let n = self.attempts.get(key).copied().unwrap_or(1).max(1);
        BACKOFF_INITIAL
            .saturating_mul(1 << (n - 1).min(8))
            .min(BACKOFF_MAX)
    }
}

#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    wake: Notify,
}

impl Queue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new or changed pending pod: try it (again) soon, unless it is backing off.
    pub fn add(&self, key: Key, priority: i32) {
        let mut s = self.state();
        if s.backoff.contains_key(&key) {
            return;
        }
        s.unschedulable.remove(&key);
        s.activate(key, priority);
        drop(s);
        self.wake.notify_one();
    }

    /// How many pods wait in the active queue, in back-off, and unschedulable.
    pub fn lengths(&self) -> (usize, usize, usize) {
        let s = self.state();
        (s.active.len(), s.backoff.len(), s.unschedulable.len())
    }

    /// A pod that no longer needs scheduling.
    pub fn forget(&self, key: &str) {
        let mut s = self.state();
        s.remove(key);
        s.attempts.remove(key);
    }

    /// An attempt failed for a reason the cluster must change first.
    pub fn unschedulable(&self, key: Key, priority: i32) {
        let mut s = self.state();
        *s.attempts.entry(key.clone()).or_default() += 1;
        s.remove(&key);
        s.unschedulable.insert(key, (Instant::now(), priority));
    }

    /// An attempt failed for a passing reason (an API error): retry after back-off.
    pub fn retry(&self, key: Key, priority: i32) {
        let mut s = self.state();
        *s.attempts.entry(key.clone()).or_default() += 1;
        s.remove(&key);
        let until = Instant::now() + s.backoff_for(&key);
        s.backoff.insert(key, (until, priority));
        drop(s);
        self.wake.notify_one();
    }

    /// Something changed that may let unschedulable pods fit: try them again
    /// once their back-off is over.
    pub fn move_all_to_active(&self) {
        let mut s = self.state();
        let waiting: Vec<(Key, (Instant, i32))> = s.unschedulable.drain().collect();
        for (key, (tried, priority)) in waiting {
            let until = tried + s.backoff_for(&key);
            s.backoff.insert(key, (until, priority));
        }
        drop(s);
        self.wake.notify_one();
    }

    /// The next pod to try, waiting for one.
    pub async fn pop(&self) -> Key {
        loop {
            let notified = self.wake.notified();
            let next_wake = {
                let mut s = self.state();
                let now = Instant::now();
                let due: Vec<(Key, i32)> = s
                    .backoff
                    .iter()
                    .filter(|(_, (until, _))| *until <= now)
                    .map(|(k, (_, p))| (k.clone(), *p))
                    .collect();
                for (key, priority) in due {
                    s.backoff.remove(&key);
                    s.activate(key, priority);
                }
                let stale: Vec<(Key, i32)> = s
                    .unschedulable
                    .iter()
                    .filter(|(_, (tried, _))| now.duration_since(*tried) >= UNSCHEDULABLE_MAX)
                    .map(|(k, (_, p))| (k.clone(), *p))
                    .collect();
                for (key, priority) in stale {
                    s.unschedulable.remove(&key);
                    s.activate(key, priority);
                }
                if let Some(first) = s.active.pop_first() {
                    s.queued.remove(&first.2);
                    return first.2;
                }
                let backoff = s.backoff.values().map(|(until, _)| *until).min();
                let unschedulable = s
                    .unschedulable
                    .values()
                    .map(|(tried, _)| *tried + UNSCHEDULABLE_MAX)
                    .min();
                [backoff, unschedulable].into_iter().flatten().min()
            };
            match next_wake {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn higher_priority_first_then_arrival() {
        let q = Queue::default();
        q.add("a".into(), 0);
        q.add("b".into(), 100);
        q.add("c".into(), 0);
        assert_eq!(q.pop().await, "b");
        assert_eq!(q.pop().await, "a");
        assert_eq!(q.pop().await, "c");
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_wait_for_an_event_then_their_backoff() {
        let q = Queue::default();
        q.unschedulable("a".into(), 0);
        q.add("b".into(), 0);
        assert_eq!(q.pop().await, "b");
        let start = Instant::now();
        q.move_all_to_active();
        assert_eq!(q.pop().await, "a");
        assert!(
            start.elapsed() >= BACKOFF_INITIAL,
            "waited out the back-off"
        );
        q.retry("a".into(), 0);
        let start = Instant::now();
        assert_eq!(q.pop().await, "a");
        assert!(
            start.elapsed() >= 2 * BACKOFF_INITIAL,
            "the second back-off doubles"
        );
    }
}
