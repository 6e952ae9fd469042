//! The embedded backend: SQLite in WAL mode, one writer thread with group
//! commit, watches pushed from the write path.

mod checkpoint;
mod schema;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use self::schema::{META_COMPACTED, META_REVISION};
use self::writer::Request;
use crate::hub::Hub;
use crate::types::*;
use crate::{Error, Result, Store, WatchRequest, WatchStream, check_txn_size};

/// Upper bound for keys in a range with no prefix end: above every UTF-8 key.
const KEY_MAX: &str = "\u{10FFFF}";
/// Idle read connections kept open.
const IDLE_READERS: usize = 8;

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub path: PathBuf,
    /// Most requests one commit takes.
    pub max_batch: usize,
    /// How often idle watchers that asked for it get a progress notification.
    pub progress_interval: Duration,
    /// How often expired leases are revoked.
    pub lease_check_interval: Duration,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_batch: 1024,
            progress_interval: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(500),
        }
    }
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Request>,
    readers: Mutex<Vec<Connection>>,
    hub: Arc<Hub>,
}

/// The embedded store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl SqliteStore {
    /// Opens (or creates) the store at `config.path`. Must be called within a
    /// Tokio runtime: background tasks deliver progress and expire leases.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        let path = config.path.clone();
        let (conn, revision) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut conn = schema::open_writer(&path)?;
            checkpoint::start(&mut conn, &path)?;
            let revision = schema::meta(&conn, META_REVISION)?;
            Ok((conn, revision))
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))??;
        let hub = Arc::new(Hub::new(revision));
        let (tx, rx) = mpsc::channel(4 * config.max_batch);
        let writer_hub = hub.clone();
        let max_batch = config.max_batch;
        std::thread::Builder::new()
            .name("kubox-store-writer".into())
            .spawn(move || writer::run(conn, rx, writer_hub, max_batch))
            .map_err(|e| Error::Backend(format!("cannot start writer thread: {e}")))?;
        let store = Self {
            inner: Arc::new(Inner {
                path: config.path.clone(),
                writer: tx,
                readers: Mutex::new(Vec::new()),
                hub,
            }),
        };
        spawn_ticker(
            Arc::downgrade(&store.inner),
            config.progress_interval,
            |inner| {
                inner.hub.notify_progress();
            },
        );
        spawn_ticker(
            Arc::downgrade(&store.inner),
            config.lease_check_interval,
            |inner| {
                let _ = inner.writer.try_send(Request::ExpireLeases);
            },
        );
        Ok(store)
    }

    /// Stops the writer after everything queued before this call is committed.
    pub async fn close(&self) -> Result<()> {
        self.request(Request::Shutdown).await
    }

    async fn request<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(make(tx))
            .await
            .map_err(|_| Error::Unavailable("store is closed".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("store is closed".into()))?
    }

    /// Runs a read on a pooled connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => schema::open_reader(&inner.path)?,
            };
            let result = f(&conn);
            let mut idle = inner.readers.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))?
    }
}

fn spawn_ticker(inner: Weak<Inner>, period: Duration, tick: impl Fn(&Inner) + Send + 'static) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match inner.upgrade() {
                Some(inner) => tick(&inner),
                None => return,
            }
        }
    });
}

/// A read snapshot: every query inside sees the same committed state.
struct Snapshot<'c> {
    tx: rusqlite::Transaction<'c>,
    revision: Revision,
    compacted: Revision,
}

impl<'c> Snapshot<'c> {
    fn begin(conn: &'c Connection) -> Result<Self> {
        let tx = conn.unchecked_transaction()?;
        let revision = schema::meta(&tx, META_REVISION)?;
        let compacted = schema::meta(&tx, META_COMPACTED)?;
        Ok(Self {
            tx,
            revision,
            compacted,
        })
    }

    /// Checks that history at `revision` is still there.
    fn check(&self, revision: Revision) -> Result<()> {
        if revision > self.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision < self.compacted {
            return Err(Error::Compacted {
                requested: revision,
            });
        }
        Ok(())
    }
}

fn key_value(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: Bytes::from(r.get::<_, Vec<u8>>(1)?),
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        version: r.get(4)?,
        lease: r.get(5)?,
    })
}

fn range(conn: &Connection, req: &RangeRequest) -> Result<RangeResponse> {
    let snap = Snapshot::begin(conn)?;
    let revision = if req.revision <= 0 {
        snap.revision
    } else {
        req.revision
    };
    snap.check(revision)?;
    let start = match &req.start {
        Some(s) if s.as_str() > req.prefix.as_str() => s.clone(),
        _ => req.prefix.clone(),
    };
    let end = prefix_end(&req.prefix).unwrap_or_else(|| KEY_MAX.to_owned());
    // At the latest revision the `current` index answers; older reads pick, per
    // key, its last row at or below the revision.
    let latest = revision == snap.revision;
    let (count_sql, rows_sql) = if latest {
        (
            "SELECT count(*) FROM current WHERE name >= ?1 AND name < ?2",
            "SELECT l.name, l.value, l.create_rev, l.rev, l.version, l.lease FROM current c
             JOIN log l ON l.id = c.id WHERE c.name >= ?1 AND c.name < ?2 ORDER BY c.name LIMIT ?3",
        )
    } else {
        (
            "SELECT count(*) FROM log l WHERE l.name >= ?1 AND l.name < ?2 AND l.deleted = 0
             AND l.rev = (SELECT max(x.rev) FROM log x WHERE x.name = l.name AND x.rev <= ?3)",
            "SELECT l.name, l.value, l.create_rev, l.rev, l.version, l.lease FROM log l
             WHERE l.name >= ?1 AND l.name < ?2 AND l.deleted = 0
             AND l.rev = (SELECT max(x.rev) FROM log x WHERE x.name = l.name AND x.rev <= ?4)
             ORDER BY l.name LIMIT ?3",
        )
    };
    let mut count_stmt = snap.tx.prepare_cached(count_sql)?;
    let count: i64 = if latest {
        count_stmt.query_row(params![start, end], |r| r.get(0))?
    } else {
        count_stmt.query_row(params![start, end, revision], |r| r.get(0))?
    };
    if req.count_only {
        return Ok(RangeResponse {
            kvs: Vec::new(),
            more: count > 0,
            count,
            revision,
        });
    }
    // One extra row tells whether there is more.
    let fetch = if req.limit == 0 {
        -1
    } else {
        req.limit as i64 + 1
    };
    let mut stmt = snap.tx.prepare_cached(rows_sql)?;
    let rows = if latest {
        stmt.query_map(params![start, end, fetch], key_value)?
    } else {
        stmt.query_map(params![start, end, fetch, revision], key_value)?
    };
    let mut kvs: Vec<KeyValue> = rows.collect::<Result<_, _>>()?;
    let more = req.limit > 0 && kvs.len() > req.limit;
    kvs.truncate(if req.limit == 0 { kvs.len() } else { req.limit });
    Ok(RangeResponse {
        kvs,
        more,
        count,
        revision,
    })
}

/// The changes under `prefix` with revisions `from..=to`, with their previous values.
fn history(conn: &Connection, prefix: &str, from: Revision, to: Revision) -> Result<Vec<Event>> {
    let snap = Snapshot::begin(conn)?;
    snap.check(from.min(snap.revision))?;
    let end = prefix_end(prefix).unwrap_or_else(|| KEY_MAX.to_owned());
    let mut stmt = snap.tx.prepare_cached(
        "SELECT l.name, l.value, l.create_rev, l.rev, l.version, l.lease, l.deleted,
                p.value, p.create_rev, p.rev, p.version, p.lease
         FROM log l LEFT JOIN log p ON p.name = l.name AND p.rev = l.prev_rev AND l.prev_rev > 0
         WHERE l.rev >= ?1 AND l.rev <= ?2 AND l.name >= ?3 AND l.name < ?4
         ORDER BY l.rev, l.name",
    )?;
    let rows = stmt.query_map(params![from, to, prefix, end], |r| {
        let kv = key_value(r)?;
        let deleted: bool = r.get(6)?;
        let prev_kv = match r.get::<_, Option<i64>>(9)? {
            Some(mod_revision) => Some(KeyValue {
                key: kv.key.clone(),
                value: Bytes::from(r.get::<_, Vec<u8>>(7)?),
                create_revision: r.get(8)?,
                mod_revision,
                version: r.get(10)?,
                lease: r.get(11)?,
            }),
            None => None,
        };
        Ok(Event {
            kind: if deleted {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv,
            prev_kv,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        check_txn_size(&txn)?;
        self.request(|reply| Request::Txn(txn, reply)).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.read(move |conn| range(conn, &req)).await
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        let mut seen = self.inner.hub.revision();
        let start = if req.start_revision > 0 {
            req.start_revision
        } else {
            seen + 1
        };
        let mut replay = Vec::new();
        let mut from = start;
        // Replay history until the hub has published nothing newer than what
        // was read, then switch to live delivery without a gap.
        let live = loop {
            if from <= seen {
                let prefix = req.prefix.clone();
                let events = self
                    .read(move |conn| history(conn, &prefix, from, seen))
                    .await?;
                replay.extend(events);
                from = seen + 1;
            }
            match self
                .inner
                .hub
                .register(&req.prefix, req.progress_notify, seen, start)
            {
                Ok(live) => break live,
                Err(now) => seen = now,
            }
        };
        let replayed = group_by_revision(replay)
            .into_iter()
            .map(|events| Ok(WatchMessage::Events(events)));
        Ok(futures::stream::iter(replayed).chain(live).boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.hub.revision())
    }

    async fn request_progress(&self) -> Result<()> {
        self.inner.hub.notify_progress();
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.request(|reply| Request::Compact(revision, reply))
            .await?;
        let mut from = 0;
        while let Some(next) = self
            .request(|reply| Request::CompactStep { from, reply })
            .await?
        {
            from = next;
        }
        Ok(())
    }

    async fn db_status(&self) -> Result<DbStatus> {
        // The write-ahead log is part of what the database holds on disk
        // until a checkpoint folds it back.
        let len = |suffix: &str| {
            let mut path = self.inner.path.clone().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        Ok(DbStatus {
            cluster_id: "sqlite".to_owned(),
            size_bytes: len("") + len("-wal"),
        })
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        self.request(|reply| Request::LeaseGrant(ttl_seconds.max(1), reply))
            .await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.request(|reply| Request::LeaseKeepAlive(lease, reply))
            .await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.request(|reply| Request::LeaseRevoke(lease, reply))
            .await
    }
}

/// Splits replayed events into one message per revision.
fn group_by_revision(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut groups: Vec<Vec<Event>> = Vec::new();
    for event in events {
        match groups.last_mut() {
            Some(g) if g[0].revision() == event.revision() => g.push(event),
            _ => groups.push(vec![event]),
        }
    }
    groups
}
