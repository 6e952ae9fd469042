//! In-process fan-out of committed changes to watchers.
//!
//! The writer publishes every committed batch here; a watcher is registered only
//! once it has caught up with the hub's revision, so between history replay and
//! live delivery there is no gap and no duplicate. Each watcher has a bounded
//! queue: one that falls behind is dropped and told so, and never slows the
//! writer or the other watchers.
//!
//! The writer thread does as little per watcher as it can: a batch is shared
//! (one `Arc` for all watchers), and each watcher's own task picks out and
//! copies the events under its prefix. The writer only checks that at least
//! one event matches, so a watcher of an unrelated prefix is not woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::types::{Event, Revision, WatchMessage};
use crate::{Error, WatchStream};

/// Messages a watcher may have queued before it counts as lagging.
const WATCHER_QUEUE: usize = 1024;

/// What the hub queues for a watcher: whole batches, filtered on the watcher's side.
enum Published {
    Events(Arc<[Event]>),
    Progress(Revision),
}

struct Watcher {
    prefix: String,
    progress_notify: bool,
    tx: mpsc::Sender<Published>,
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
    pub(crate) fn publish(&self, revision: Revision, events: Vec<Event>) {
        let batch: Arc<[Event]> = events.into();
        let mut inner = self.lock();
        inner.revision = revision;
        inner.watchers.retain(|w| {
            if !batch.iter().any(|e| e.kv.key.starts_with(&w.prefix)) {
                return !w.tx.is_closed();
            }
            deliver(w, Published::Events(batch.clone()))
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
            deliver(w, Published::Progress(revision))
        });
    }

    /// Registers a live watcher that has seen every change up to `seen` and
    /// wants the changes from revision `start` on. Fails, returning the hub's
    /// revision, when more has been published since: the caller replays the
    /// difference and tries again.
    pub(crate) fn register(
        &self,
        prefix: &str,
        progress_notify: bool,
        seen: Revision,
        start: Revision,
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
        let live = Live {
            rx,
            prefix: prefix.to_owned(),
            start,
            held: None,
        };
        let live = futures::stream::unfold(live, |mut live| async move {
            live.next().await.map(|msg| (Ok(msg), live))
        });
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

/// A watcher's end of its queue.
struct Live {
    rx: mpsc::Receiver<Published>,
    prefix: String,
    /// A watch that starts in the future skips what comes before.
    start: Revision,
    /// A progress notification found behind events, delivered after them.
    held: Option<Revision>,
}

impl Live {
    fn select(&self, batch: &[Event], into: &mut Vec<Event>) {
        into.extend(
            batch
                .iter()
                .filter(|e| e.revision() >= self.start && e.kv.key.starts_with(&self.prefix))
                .cloned(),
        );
    }

    /// The next message; every batch already queued goes into one, so a
    /// watcher that was slow to be scheduled catches up in one wake-up.
    async fn next(&mut self) -> Option<WatchMessage> {
        loop {
            if let Some(revision) = self.held.take() {
                return Some(WatchMessage::Progress(revision));
            }
            let mut events = Vec::new();
            match self.rx.recv().await? {
                Published::Progress(revision) => return Some(WatchMessage::Progress(revision)),
                Published::Events(batch) => self.select(&batch, &mut events),
            }
            while let Ok(queued) = self.rx.try_recv() {
                match queued {
                    Published::Events(batch) => self.select(&batch, &mut events),
                    Published::Progress(revision) => {
                        self.held = Some(revision);
                        break;
                    }
                }
            }
            if !events.is_empty() {
                return Some(WatchMessage::Events(events));
            }
        }
    }
}

/// Queues a message for a watcher; returns whether to keep the watcher.
fn deliver(w: &Watcher, msg: Published) -> bool {
    match w.tx.try_send(msg) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            w.lagged.store(true, Ordering::Release);
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}
