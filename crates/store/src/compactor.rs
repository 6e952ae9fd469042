//! Automatic compaction, as upstream's API server does it: every interval,
//! discard history older than the revision seen one interval earlier, so at
//! least one interval of history stays for watches to resume from.

use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Store};

/// Runs until the returned task is aborted or the store goes away.
pub fn spawn_compactor(store: Arc<dyn Store>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut previous = None;
        loop {
            ticker.tick().await;
            if let Some(revision) = previous.filter(|r| *r > 0) {
                match store.compact(revision).await {
                    Ok(()) => tracing::debug!(revision, "compacted"),
                    // Another server (sharing etcd) compacted as far already.
                    Err(Error::Compacted { .. }) => {}
                    Err(Error::Unavailable(e)) if e.contains("closed") => return,
                    Err(e) => tracing::warn!(revision, error = %e, "compaction failed"),
                }
            }
            previous = store.current_revision().await.ok();
        }
    })
}
