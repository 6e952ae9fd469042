//! kubox's storage engine: a revisioned key-value store with etcd v3 semantics.
//!
//! The API server is written against [`Store`]. Two backends implement it:
//! [`SqliteStore`], embedded and the default, and [`EtcdStore`], over a real
//! etcd v3 cluster for several API servers. Both pass one conformance suite
//! (`tests/conformance.rs`).

mod compactor;
mod error;
mod etcd;
mod hub;
mod metered;
mod sqlite;
mod types;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use compactor::spawn_compactor;
pub use error::{Error, Result};
pub use etcd::{EtcdConfig, EtcdStore};
pub use metered::{MeteredStore, resource as resource_of};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use types::*;

/// Values larger than this are refused, as etcd refuses requests over its
/// default `--max-request-bytes` (1.5 MiB) plus room for the key.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024 + 512;

/// A stream of watch messages; it ends with an error when the watch cannot go on
/// (compacted start revision, lagging watcher, backend gone).
pub type WatchStream = BoxStream<'static, Result<WatchMessage>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub prefix: String,
    /// Deliver every change from this revision on; 0 means changes after now.
    pub start_revision: Revision,
    /// Also send [`WatchMessage::Progress`] periodically when idle.
    pub progress_notify: bool,
}

/// The storage interface, with etcd v3 semantics.
///
/// Invariants every backend keeps:
/// - each committed transaction that writes gets one revision, strictly larger
///   than every earlier one, never reused, also across restarts;
/// - a write is acknowledged only once durable;
/// - a watch delivers every change in its range from its start revision on, in
///   revision order, with no gap and no duplicate, or ends with an error.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream>;

    /// The latest committed revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Asks every watch that wants progress notifications to report the
    /// revision it has reached now, rather than at its next interval: a
    /// reader waiting for a watch-fed cache to catch up uses it.
    async fn request_progress(&self) -> Result<()>;

    /// Discards history older than `revision`; the latest version of every
    /// live key is kept.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The database's identity and size on disk.
    async fn db_status(&self) -> Result<DbStatus>;

    /// Grants a lease; keys attached to it are deleted when it expires.
    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId>;

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Revokes a lease and deletes every key attached to it.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()>;

    /// Reads one key at the latest revision, returning the revision read at.
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let resp = self
            .txn(Txn {
                success: vec![Op::Get { key: key.into() }],
                ..Txn::default()
            })
            .await?;
        match resp.results.into_iter().next() {
            Some(OpResult::Get(kv)) => Ok((kv, resp.revision)),
            other => Err(Error::Backend(format!("unexpected txn result {other:?}"))),
        }
    }

    /// Creates `key` only if it does not exist.
    async fn create(&self, key: &str, value: Bytes, lease: LeaseId) -> Result<KeyValue> {
        let resp = self
            .txn(Txn {
                compares: vec![Compare::new(
                    key,
                    CompareOp::Equal,
                    CompareTarget::ModRevision(0),
                )],
                success: vec![Op::Put {
                    key: key.into(),
                    value,
                    lease,
                }],
                failure: vec![Op::Get { key: key.into() }],
            })
            .await?;
        match (resp.succeeded, resp.results.into_iter().next()) {
            (true, Some(OpResult::Put { kv, .. })) => Ok(kv),
            (false, Some(OpResult::Get(Some(current)))) => {
                Err(Error::AlreadyExists(key.into(), Box::new(current)))
            }
            other => Err(Error::Backend(format!("unexpected txn result {other:?}"))),
        }
    }

    /// Replaces `key` if its mod_revision is still `expected` (compare-and-swap).
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
        lease: LeaseId,
    ) -> Result<KeyValue> {
        let resp = self
            .txn(Txn {
                compares: vec![Compare::new(
                    key,
                    CompareOp::Equal,
                    CompareTarget::ModRevision(expected),
                )],
                success: vec![Op::Put {
                    key: key.into(),
                    value,
                    lease,
                }],
                failure: vec![Op::Get { key: key.into() }],
            })
            .await?;
        match (resp.succeeded, resp.results.into_iter().next()) {
            (true, Some(OpResult::Put { kv, .. })) => Ok(kv),
            (false, Some(OpResult::Get(current))) => Err(Error::Conflict {
                key: key.into(),
                expected,
                current: current.map(Box::new),
            }),
            other => Err(Error::Backend(format!("unexpected txn result {other:?}"))),
        }
    }

    /// Deletes `key`, guarded by its mod_revision when `expected` is given.
    /// Returns the deleted key-value.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let compares = match expected {
            Some(rev) => vec![Compare::new(
                key,
                CompareOp::Equal,
                CompareTarget::ModRevision(rev),
            )],
            None => vec![Compare::new(
                key,
                CompareOp::Greater,
                CompareTarget::ModRevision(0),
            )],
        };
        let resp = self
            .txn(Txn {
                compares,
                success: vec![Op::Delete { key: key.into() }],
                failure: vec![Op::Get { key: key.into() }],
            })
            .await?;
        match (resp.succeeded, resp.results.into_iter().next()) {
            (true, Some(OpResult::Delete { prev: Some(prev) })) => Ok(prev),
            (false, Some(OpResult::Get(None))) => Err(Error::NotFound(key.into())),
            (false, Some(OpResult::Get(Some(current)))) => Err(Error::Conflict {
                key: key.into(),
                expected: expected.unwrap_or_default(),
                current: Some(Box::new(current)),
            }),
            other => Err(Error::Backend(format!("unexpected txn result {other:?}"))),
        }
    }
}

/// Refuses writes whose key and value exceed [`MAX_VALUE_BYTES`], before they
/// reach a backend, so every backend answers the same error.
pub(crate) fn check_txn_size(txn: &Txn) -> Result<()> {
    for op in txn.success.iter().chain(&txn.failure) {
        if let Op::Put { key, value, .. } = op {
            let size = key.len() + value.len();
            if size > MAX_VALUE_BYTES {
                return Err(Error::ValueTooLarge {
                    key: key.clone(),
                    size,
                    limit: MAX_VALUE_BYTES,
                });
            }
        }
    }
    Ok(())
}
