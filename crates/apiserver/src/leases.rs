//! Storage leases for objects that expire (Events): one lease serves every
//! write for a while (5% of the TTL, at most a minute, as upstream's lease
//! manager), so a burst of events costs one lease grant, not one each.

use std::time::{Duration, Instant};

use kubox_store::{LeaseId, Store};
use tokio::sync::Mutex;

use crate::status::ApiResult;

/// The longest one lease is handed out before a fresh one is granted.
const MAX_REUSE: Duration = Duration::from_secs(60);

pub struct ExpiringLeases {
    ttl: Duration,
    current: Mutex<Option<(LeaseId, Instant)>>,
}

impl ExpiringLeases {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            current: Mutex::new(None),
        }
    }

    /// A lease under which a key lives at least `ttl` from now.
    pub async fn lease(&self, store: &dyn Store) -> ApiResult<LeaseId> {
        let reuse = (self.ttl / 20).min(MAX_REUSE);
        let mut current = self.current.lock().await;
        if let Some((id, granted)) = *current
            && granted.elapsed() < reuse
        {
            return Ok(id);
        }
        // Handed out for `reuse`, so it must outlive the TTL by as much.
        let seconds = (self.ttl + reuse).as_secs().max(1) as i64;
        let id = store.lease_grant(seconds).await?;
        *current = Some((id, Instant::now()));
        Ok(id)
    }
}
