//! The data model shared by every backend, mirroring etcd v3's mvccpb types.

use bytes::Bytes;

/// A cluster-wide revision. Every committed write gets a strictly larger one.
pub type Revision = i64;

/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 right after a create.
    pub version: i64,
    pub lease: LeaseId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watcher. For a delete, `kv` carries the key and the
/// deletion's revision with an empty value, as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// What a backend reports of its database, as etcd's Status call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbStatus {
    /// Names the cluster holding the data: `sqlite` for the embedded store,
    /// `etcd-<cluster id>` for etcd, as upstream labels its storage metrics.
    pub cluster_id: String,
    /// Bytes the database takes on disk, including space compaction freed
    /// but the file still holds.
    pub size_bytes: u64,
}

/// What a watch stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes in revision order; all events of one revision arrive together.
    Events(Vec<Event>),
    /// Every change up to and including this revision has been delivered.
    Progress(Revision),
}

/// A key range: all keys starting with `prefix`, from `start` (inclusive) on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub prefix: String,
    /// First key to return; must start with `prefix`. Used to continue a paginated read.
    pub start: Option<String>,
    /// Maximum number of keys returned; 0 means no limit.
    pub limit: usize,
    /// Read at this revision; 0 means the latest.
    pub revision: Revision,
    /// Only count the keys, return none.
    pub count_only: bool,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// There are keys in the range past the last one returned.
    pub more: bool,
    /// Number of keys in the whole range (from `start`), not just the ones returned.
    pub count: i64,
    /// The revision the read was served at.
    pub revision: Revision,
}

/// The end of the key range that holds every key starting with `prefix`
/// (etcd's `GetPrefixRangeEnd`), or `None` when the prefix has no upper bound.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

impl CompareOp {
    pub fn holds<T: Ord>(self, actual: T, expected: T) -> bool {
        match self {
            CompareOp::Equal => actual == expected,
            CompareOp::NotEqual => actual != expected,
            CompareOp::Greater => actual > expected,
            CompareOp::Less => actual < expected,
        }
    }
}

/// What a compare looks at. As in etcd, a missing key has mod_revision,
/// create_revision and version 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(i64),
    Value(Bytes),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<String>, op: CompareOp, target: CompareTarget) -> Self {
        Self {
            key: key.into(),
            op,
            target,
        }
    }

    /// Whether the compare holds against the key's current state.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match &self.target {
            CompareTarget::ModRevision(r) => {
                self.op.holds(current.map_or(0, |kv| kv.mod_revision), *r)
            }
            CompareTarget::CreateRevision(r) => self
                .op
                .holds(current.map_or(0, |kv| kv.create_revision), *r),
            CompareTarget::Version(v) => self.op.holds(current.map_or(0, |kv| kv.version), *v),
            // etcd: a value compare against a missing key fails.
            CompareTarget::Value(v) => current.is_some_and(|kv| self.op.holds(&kv.value, v)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Bytes,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Put {
        prev: Option<KeyValue>,
        kv: KeyValue,
    },
    /// `prev` is `None` when the key did not exist (nothing was deleted).
    Delete {
        prev: Option<KeyValue>,
    },
    Get(Option<KeyValue>),
}

/// An etcd transaction: if every compare holds, run `success`, else `failure`.
/// All writes of one transaction share one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}
