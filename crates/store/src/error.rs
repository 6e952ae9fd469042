use std::path::PathBuf;

use crate::types::{KeyValue, Revision};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {0:?} already exists")]
    AlreadyExists(String, Box<KeyValue>),
    #[error("key {0:?} not found")]
    NotFound(String),
    /// A guarded write found the key at another revision (or gone).
    #[error("key {key:?} was modified: expected revision {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        current: Option<Box<KeyValue>>,
    },
    /// The requested revision is older than the oldest one kept. Maps to HTTP 410 Gone.
    #[error("required revision {requested} has been compacted")]
    Compacted { requested: Revision },
    #[error("required revision {requested} is a future revision (current is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    #[error("value of {size} bytes for key {key:?} exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// The watcher fell too far behind and was dropped; it must re-watch or re-list.
    #[error("watcher fell behind and was closed")]
    WatcherLagged,
    #[error("data file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The write was not made durable; no revision was handed out for it.
    #[error("storage write failed: {0}")]
    WriteFailed(String),
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("SQLite: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        match e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                Error::Unavailable(e.to_string())
            }
            other => Error::Backend(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
