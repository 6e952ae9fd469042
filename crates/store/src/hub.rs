//! In-process fan-out of committed changes to watchers.
//!
//! The writer publishes every committed batch here; a watcher is registered only
//! once it has caught up with the hub's revision, so between history replay and
//! live delivery there is no gap and no duplicate. Each watcher has a bounded
//! queue: one that falls behind is dropped and told so, and never slows the
//! writer or the other watchers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_stream::wrappers::ReceiverStream;

use crate::types::{Event, Revision, WatchMessage};
use crate::{Error, WatchStream};

/// Messages a watcher may have queued before it counts as lagging.
const WATCHER_QUEUE: usize = 1024;

struct Watcher {
    prefix: String,
    progress_notify: bool,
    tx: mpsc::Sender<WatchMessage>,
    lagged: Arc<AtomicBool>,
}

struct Inner {
    revision: Revision,
    watchers: Vec<Watcher>,
}

pub(crate) struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    pub(crate) fn new(revision: Revision) -> Self {
        Self {
            inner: Mutex::new(Inner {
                revision,
                watchers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: every update is a single push or retain.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// Publishes the events of a committed batch, sorted by revision, and
    /// advances the hub to `revision`.
    pub(crate) fn publish(&self, revision: Revision, events: &[Event]) {
        let mut inner = self.lock();
        inner.revision = revision;
        inner.watchers.retain(|w| {
            let matching: Vec<Event> = events
                .iter()
                .filter(|e| e.kv.key.starts_with(&w.prefix))
                .cloned()
                .collect();
            if matching.is_empty() {
                return !w.tx.is_closed();
            }
            deliver(w, WatchMessage::Events(matching))
        });
    }

    /// Sends a progress notification to every idle watcher that asked for them.
    pub(crate) fn notify_progress(&self) {
        let mut inner = self.lock();
        let revision = inner.revision;
        inner.watchers.retain(|w| {
            if !w.progress_notify || w.tx.capacity() < WATCHER_QUEUE {
                return !w.tx.is_closed();
            }
            deliver(w, WatchMessage::Progress(revision))
        });
    }

    /// Registers a live watcher that has seen every change up to `seen`. Fails,
    /// returning the hub's revision, when more has been published since: the
    /// caller replays the difference and tries again.
    pub(crate) fn register(
        &self,
        prefix: &str,
        progress_notify: bool,
        seen: Revision,
    ) -> Result<WatchStream, Revision> {
        let mut inner = self.lock();
        if inner.revision != seen {
            return Err(inner.revision);
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        inner.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            progress_notify,
            tx,
            lagged: lagged.clone(),
        });
        let live = ReceiverStream::new(rx).map(Ok);
        let end = futures::stream::once(async move {
            if lagged.load(Ordering::Acquire) {
                Err(Error::WatcherLagged)
            } else {
                Err(Error::Unavailable("store closed".into()))
            }
        });
        Ok(live.chain(end).boxed())
    }
}

/// Queues a message for a watcher; returns whether to keep the watcher.
fn deliver(w: &Watcher, msg: WatchMessage) -> bool {
    match w.tx.try_send(msg) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            w.lagged.store(true, Ordering::Release);
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}
