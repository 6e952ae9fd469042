//! What this server has written, resource by resource: the revision of its
//! latest write under each, recorded by a store wrapper every write of the
//! server passes through. A read from a watch cache that has reached that
//! revision sees every write this server acknowledged (read-your-writes)
//! without asking the store; writes made through other servers show once
//! their watch events arrive, as upstream's listers see them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kubox_store::{
    DbStatus, LeaseId, Op, RangeRequest, RangeResponse, Result, Revision, Store, Txn, TxnResponse,
    WatchRequest, WatchStream, resource_of,
};

/// The latest revision this server wrote under each resource.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<String, Revision>>);

impl OwnWrites {
    /// The revision of the latest write under `prefix`'s resource; 0 if none.
    pub fn under(&self, prefix: &str) -> Revision {
        let written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        written.get(resource_of(prefix)).copied().unwrap_or(0)
    }

    fn record<'a>(&self, keys: impl Iterator<Item = &'a str>, revision: Revision) {
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let at = written.entry(resource_of(key).to_owned()).or_default();
            *at = (*at).max(revision);
        }
    }
}

/// A store that records in `OwnWrites` every write made through it.
pub struct Recording {
    inner: Arc<dyn Store>,
    written: Arc<OwnWrites>,
}

impl Recording {
    pub fn new(inner: Arc<dyn Store>, written: Arc<OwnWrites>) -> Self {
        Self { inner, written }
    }
}

fn written_keys(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Put { key, .. } | Op::Delete { key } => Some(key.clone()),
            Op::Get { .. } => None,
        })
        .collect()
}

#[async_trait]
impl Store for Recording {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let (success, failure) = (written_keys(&txn.success), written_keys(&txn.failure));
        let resp = self.inner.txn(txn).await?;
        let keys = if resp.succeeded { success } else { failure };
        self.written
            .record(keys.iter().map(String::as_str), resp.revision);
        Ok(resp)
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.inner.range(req).await
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        self.inner.watch(req).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn request_progress(&self) -> Result<()> {
        self.inner.request_progress().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn db_status(&self) -> Result<DbStatus> {
        self.inner.db_status().await
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        self.inner.lease_grant(ttl_seconds).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.inner.lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.inner.lease_revoke(lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn each_write_is_recorded_under_its_resource_and_refusals_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = kubox_store::SqliteConfig::new(dir.path().join("s.db"));
        let inner: Arc<dyn Store> = Arc::new(kubox_store::SqliteStore::open(config).await.unwrap());
        let written = Arc::new(OwnWrites::default());
        let store = Recording::new(inner, written.clone());
        assert_eq!(written.under("/registry/limitranges/"), 0);
        let kv = store
            .create("/registry/limitranges/a/l", Bytes::from("{}"), 0)
            .await
            .unwrap();
        assert_eq!(written.under("/registry/limitranges/"), kv.mod_revision);
        assert_eq!(written.under("/registry/limitranges/b/"), kv.mod_revision);
        assert_eq!(written.under("/registry/pods/"), 0);
        // A create of an existing key writes nothing.
        store
            .create("/registry/pods/a/p", Bytes::from("{}"), 0)
            .await
            .unwrap();
        let before = written.under("/registry/pods/");
        assert!(
            store
                .create("/registry/pods/a/p", Bytes::from("{}"), 0)
                .await
                .is_err()
        );
        assert_eq!(written.under("/registry/pods/"), before);
        assert_eq!(written.under("/registry/limitranges/"), kv.mod_revision);
    }
}
