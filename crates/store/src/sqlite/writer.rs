//! The single writer thread: group commit.
//!
//! Requests queue on a channel. The writer takes everything queued (up to a
//! batch limit), applies it in one SQLite transaction and commits once: one
//! fsync for the whole batch. Only after the commit is durable are the batch's events
//! published to watchers and its callers answered. If the commit fails, every
//! caller in the batch gets the error and the revision does not move.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::schema::{self, META_COMPACTED, META_REVISION};
use crate::hub::Hub;
use crate::types::*;
use crate::{Error, Result};

/// Rows of history one compaction step deletes, so that writers queued behind
/// it wait only briefly.
const COMPACTION_STEP: i64 = 2000;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Request {
    Txn(Txn, Reply<TxnResponse>),
    /// Marks history below the revision as gone; the rows go in `CompactStep`s.
    Compact(Revision, Reply<()>),
    /// Deletes superseded history rows with revisions from `from` below the
    /// compacted revision; answers where the next step starts, if anywhere.
    CompactStep {
        from: Revision,
        reply: Reply<Option<Revision>>,
    },
    LeaseGrant(i64, Reply<LeaseId>),
    LeaseKeepAlive(LeaseId, Reply<()>),
    LeaseRevoke(LeaseId, Reply<()>),
    ExpireLeases,
    Shutdown(Reply<()>),
}

/// An answer held back until the batch is committed.
enum Answer {
    Txn(Reply<TxnResponse>, Result<TxnResponse>),
    Unit(Reply<()>, Result<()>),
    Lease(Reply<LeaseId>, Result<LeaseId>),
    Step(Reply<Option<Revision>>, Result<Option<Revision>>),
}

impl Answer {
    fn send(self, commit_error: Option<&str>) {
        fn reply<T>(tx: Reply<T>, result: Result<T>, commit_error: Option<&str>) {
            // The caller may have given up waiting; nothing to do then.
            let _ = tx.send(match commit_error {
                None => result,
                Some(e) => Err(Error::WriteFailed(e.to_owned())),
            });
        }
        match self {
            Answer::Txn(tx, r) => reply(tx, r, commit_error),
            Answer::Unit(tx, r) => reply(tx, r, commit_error),
            Answer::Lease(tx, r) => reply(tx, r, commit_error),
            Answer::Step(tx, r) => reply(tx, r, commit_error),
        }
    }
}

/// What one batch has done so far inside its open transaction.
struct Batch {
    revision: Revision,
    events: Vec<Event>,
    answers: Vec<Answer>,
}

pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Request>,
    hub: Arc<Hub>,
    max_batch: usize,
) {
    let mut committed = hub.revision();
    let mut shutdown = None;
    while shutdown.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut requests = vec![first];
        while requests.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let mut batch = Batch {
            revision: committed,
            events: Vec::new(),
            answers: Vec::new(),
        };
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for request in requests {
                match request {
                    Request::Shutdown(reply) => shutdown = Some(reply),
                    other => apply(&tx, other, &mut batch)?,
                }
            }
            if batch.revision != committed {
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = ?2")?
                    .execute(params![batch.revision, META_REVISION])?;
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                committed = batch.revision;
                if !batch.events.is_empty() {
                    hub.publish(committed, batch.events);
                }
                batch.answers.into_iter().for_each(|a| a.send(None));
            }
            Err(e) => {
                tracing::error!(error = %e, "storage commit failed");
                let msg = e.to_string();
                batch.answers.into_iter().for_each(|a| a.send(Some(&msg)));
            }
        }
    }
    drop(conn);
    if let Some(reply) = shutdown {
        let _ = reply.send(Ok(()));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Applies one request inside the batch's transaction. Requests find every
/// reason to refuse (a failed compare, a missing lease) before they write, so
/// a refused request leaves no trace; an SQL error is returned and fails the
/// whole batch, as its transaction is rolled back.
fn apply(c: &Connection, request: Request, batch: &mut Batch) -> rusqlite::Result<()> {
    let answer = match request {
        Request::Txn(txn, reply) => Answer::Txn(reply, sql_fatal(txn_apply(c, batch, txn))?),
        Request::Compact(rev, reply) => Answer::Unit(reply, sql_fatal(compact(c, batch, rev))?),
        Request::CompactStep { from, reply } => {
            Answer::Step(reply, sql_fatal(compact_step(c, from))?)
        }
        Request::LeaseGrant(ttl, reply) => {
            c.execute(
                "INSERT INTO lease (ttl, expires_ms) VALUES (?1, ?2)",
                params![ttl, now_ms() + ttl * 1000],
            )?;
            Answer::Lease(reply, Ok(c.last_insert_rowid()))
        }
        Request::LeaseKeepAlive(id, reply) => {
            let n = c.execute(
                "UPDATE lease SET expires_ms = ?2 + ttl * 1000 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            Answer::Unit(
                reply,
                if n == 0 {
                    Err(Error::LeaseNotFound(id))
                } else {
                    Ok(())
                },
            )
        }
        Request::LeaseRevoke(id, reply) => Answer::Unit(reply, sql_fatal(revoke(c, batch, id))?),
        Request::ExpireLeases => {
            sql_fatal(expire_leases(c, batch))?.ok();
            return Ok(());
        }
        Request::Shutdown(_) => unreachable!("handled by the loop"),
    };
    batch.answers.push(answer);
    Ok(())
}

/// Splits a request's outcome: refusals go to its caller, SQL errors abort the batch.
fn sql_fatal<T>(r: Result<T>) -> rusqlite::Result<Result<T>> {
    match r {
        Err(Error::Sqlite(e)) => Err(e),
        other => Ok(other),
    }
}

fn load(conn: &Connection, key: &str) -> Result<Option<KeyValue>> {
    Ok(conn
        .prepare_cached(
            "SELECT l.value, l.create_rev, l.rev, l.version, l.lease FROM current c
             JOIN log l ON l.id = c.id WHERE c.name = ?1",
        )?
        .query_row([key], |r| {
            Ok(KeyValue {
                key: key.to_owned(),
                value: Bytes::from(r.get::<_, Vec<u8>>(0)?),
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
                version: r.get(3)?,
                lease: r.get(4)?,
            })
        })
        .optional()?)
}

fn insert_row(
    conn: &Connection,
    rev: Revision,
    kv: &KeyValue,
    deleted: bool,
    prev_rev: Revision,
) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO log (rev, name, deleted, create_rev, version, lease, prev_rev, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        rev,
        kv.key,
        deleted,
        kv.create_revision,
        kv.version,
        kv.lease,
        prev_rev,
        kv.value.as_ref()
    ])?;
    Ok(conn.last_insert_rowid())
}

/// The revision writes of the current transaction get: one more than the last.
fn write_revision(batch: &mut Batch, wrote: &mut bool) -> Revision {
    if !*wrote {
        *wrote = true;
        batch.revision += 1;
    }
    batch.revision
}

/// Keys one transaction has read or written, so each is loaded once.
type Seen = HashMap<String, Option<KeyValue>>;

fn load_seen(conn: &Connection, seen: &mut Seen, key: &str) -> Result<Option<KeyValue>> {
    if let Some(kv) = seen.get(key) {
        return Ok(kv.clone());
    }
    let kv = load(conn, key)?;
    seen.insert(key.to_owned(), kv.clone());
    Ok(kv)
}

fn put(
    conn: &Connection,
    batch: &mut Batch,
    wrote: &mut bool,
    seen: &mut Seen,
    key: String,
    value: Bytes,
    lease: LeaseId,
) -> Result<OpResult> {
    let prev = load_seen(conn, seen, &key)?;
    let rev = write_revision(batch, wrote);
    let kv = KeyValue {
        key,
        value,
        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
        mod_revision: rev,
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        lease,
    };
    let id = insert_row(
        conn,
        rev,
        &kv,
        false,
        prev.as_ref().map_or(0, |p| p.mod_revision),
    )?;
    conn.prepare_cached("INSERT OR REPLACE INTO current (name, id, lease) VALUES (?1, ?2, ?3)")?
        .execute(params![kv.key, id, lease])?;
    batch.events.push(Event {
        kind: EventKind::Put,
        kv: kv.clone(),
        prev_kv: prev.clone(),
    });
    seen.insert(kv.key.clone(), Some(kv.clone()));
    Ok(OpResult::Put { prev, kv })
}

fn delete(
    conn: &Connection,
    batch: &mut Batch,
    wrote: &mut bool,
    seen: &mut Seen,
    key: String,
) -> Result<OpResult> {
    let Some(prev) = load_seen(conn, seen, &key)? else {
        return Ok(OpResult::Delete { prev: None });
    };
    let rev = write_revision(batch, wrote);
    let tombstone = KeyValue {
        key,
        value: Bytes::new(),
        create_revision: 0,
        mod_revision: rev,
        version: 0,
        lease: 0,
    };
    insert_row(conn, rev, &tombstone, true, prev.mod_revision)?;
    conn.prepare_cached("DELETE FROM current WHERE name = ?1")?
        .execute([&tombstone.key])?;
    seen.insert(tombstone.key.clone(), None);
    batch.events.push(Event {
        kind: EventKind::Delete,
        kv: tombstone,
        prev_kv: Some(prev.clone()),
    });
    Ok(OpResult::Delete { prev: Some(prev) })
}

fn txn_apply(conn: &Connection, batch: &mut Batch, txn: Txn) -> Result<TxnResponse> {
    let mut seen = Seen::new();
    let mut succeeded = true;
    for cmp in &txn.compares {
        if !cmp.holds(load_seen(conn, &mut seen, &cmp.key)?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { txn.success } else { txn.failure };
    // Refusals come before any write, so a refused transaction writes nothing.
    for op in &ops {
        if let Op::Put { lease, .. } = op
            && *lease != 0
        {
            let exists: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM lease WHERE id = ?1)")?
                .query_row([lease], |r| r.get(0))?;
            if !exists {
                return Err(Error::LeaseNotFound(*lease));
            }
        }
    }
    let mut wrote = false;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            Op::Get { key } => OpResult::Get(load_seen(conn, &mut seen, &key)?),
            Op::Put { key, value, lease } => {
                put(conn, batch, &mut wrote, &mut seen, key, value, lease)?
            }
            Op::Delete { key } => delete(conn, batch, &mut wrote, &mut seen, key)?,
        });
    }
    Ok(TxnResponse {
        succeeded,
        revision: batch.revision,
        results,
    })
}

fn revoke(conn: &Connection, batch: &mut Batch, id: LeaseId) -> Result<()> {
    if conn.execute("DELETE FROM lease WHERE id = ?1", [id])? == 0 {
        return Err(Error::LeaseNotFound(id));
    }
    let keys: Vec<String> = conn
        .prepare_cached("SELECT name FROM current WHERE lease = ?1 ORDER BY name")?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (mut wrote, mut seen) = (false, Seen::new());
    for key in keys {
        delete(conn, batch, &mut wrote, &mut seen, key)?;
    }
    Ok(())
}

fn expire_leases(conn: &Connection, batch: &mut Batch) -> Result<()> {
    let expired: Vec<LeaseId> = conn
        .prepare_cached("SELECT id FROM lease WHERE expires_ms <= ?1")?
        .query_map([now_ms()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in expired {
        revoke(conn, batch, id)?;
    }
    Ok(())
}

fn compact(conn: &Connection, batch: &mut Batch, revision: Revision) -> Result<()> {
    let compacted = schema::meta(conn, META_COMPACTED)?;
    if revision > batch.revision {
        return Err(Error::FutureRevision {
            requested: revision,
            current: batch.revision,
        });
    }
    if revision <= compacted {
        return Err(Error::Compacted {
            requested: revision,
        });
    }
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE name = ?2",
        params![revision, META_COMPACTED],
    )?;
    Ok(())
}

fn compact_step(conn: &Connection, from: Revision) -> Result<Option<Revision>> {
    let compacted = schema::meta(conn, META_COMPACTED)?;
    let from = match conn.query_row("SELECT min(rev) FROM log WHERE rev >= ?1", [from], |r| {
        r.get::<_, Option<i64>>(0)
    })? {
        Some(first) if first < compacted => first,
        _ => return Ok(None),
    };
    let to = (from + COMPACTION_STEP).min(compacted);
    // A row older than the compacted revision goes when a later row of its key
    // is at or below that revision (so no read that is still allowed sees it),
    // or when it is a tombstone (the key is gone for every allowed read).
    conn.prepare_cached(
        "DELETE FROM log WHERE rev >= ?1 AND rev < ?2 AND (
            deleted = 1 OR EXISTS (
                SELECT 1 FROM log n WHERE n.name = log.name AND n.rev > log.rev AND n.rev <= ?3))",
    )?
    .execute(params![from, to, compacted])?;
    Ok((to < compacted).then_some(to))
}
