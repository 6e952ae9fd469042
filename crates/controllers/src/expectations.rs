//! Expectations, as client-go's UIDTrackingControllerExpectations: a
//! controller that created or deleted children waits until its cache has
//! seen every one of those changes before it counts children again, so a
//! burst of events (or a cache running behind the API) never makes it
//! create or delete twice. Expectations nobody fulfils expire after five
//! minutes, in case a watch event was lost.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(5 * 60);

struct Expected {
    adds: i64,
    dels: i64,
    /// The children (`namespace/name`) whose deletion is awaited, so each
    /// counts once whether it is seen terminating or gone.
    deleting: HashSet<String>,
    since: Instant,
}

#[derive(Default)]
pub struct Expectations {
    by_controller: Mutex<HashMap<String, Expected>>,
}

impl Expectations {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Expected>) -> R) -> R {
        f(&mut self.by_controller.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `controller` may act: it awaits nothing, or waited too long.
    pub fn satisfied(&self, controller: &str) -> bool {
        self.with(|m| match m.get(controller) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels <= 0) || e.since.elapsed() > TIMEOUT,
        })
    }

    /// `controller` is about to create `n` children.
    pub fn expect_creations(&self, controller: &str, n: usize) {
        self.set(controller, n as i64, 0, HashSet::new());
    }

    /// `controller` is about to delete these children (`namespace/name`).
    pub fn expect_deletions(&self, controller: &str, children: Vec<String>) {
        let deleting: HashSet<String> = children.into_iter().collect();
        self.set(controller, 0, deleting.len() as i64, deleting);
    }

    fn set(&self, controller: &str, adds: i64, dels: i64, deleting: HashSet<String>) {
        self.with(|m| {
            m.insert(
                controller.to_owned(),
                Expected {
                    adds,
                    dels,
                    deleting,
                    since: Instant::now(),
                },
            )
        });
    }

    /// A child of `controller` was seen created (or will never be: its
    /// creation failed or was skipped).
    pub fn creation_observed(&self, controller: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(controller) {
                e.adds -= 1;
            }
        });
    }

    /// `child` (`namespace/name`) was seen terminating or deleted, or its
    /// deletion failed.
    pub fn deletion_observed(&self, controller: &str, child: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(controller)
                && e.deleting.remove(child)
            {
                e.dels -= 1;
            }
        });
    }

    /// Forgets `controller` (it was deleted; a new one of that name starts clean).
    pub fn forget(&self, controller: &str) {
        self.with(|m| m.remove(controller));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_and_deletions_are_awaited_once_each() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));

        e.expect_deletions("ns/rs", vec!["ns/a".into(), "ns/b".into()]);
        e.deletion_observed("ns/rs", "ns/a");
        // Terminating, then gone: the same pod counts once.
        e.deletion_observed("ns/rs", "ns/a");
        e.deletion_observed("ns/rs", "ns/other");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
        e.forget("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }
}
