//! Checkpoints the write-ahead log on a thread of its own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: that commit's callers, and every watcher of it, wait while pages
//! are copied into the database file and fsynced. Instead the writer's commit
//! only signals, and a second connection copies the pages while the writer goes
//! on. A passive checkpoint never blocks the writer, but the log restarts from
//! its beginning only once everything in it is copied, which cannot happen
//! while the writer keeps appending; so when the log has grown several times
//! the threshold, the writer copies the (by then short) rest itself, as SQLite
//! would have.
//!
//! Durability does not change: commits are fsynced to the log as before, and a
//! checkpoint fsyncs the database file before the log may be reused.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use super::schema;
use crate::{Error, Result};

/// Log pages appended between two signals to the checkpointer (SQLite's own
/// automatic checkpoint threshold).
const SIGNAL_PAGES: c_int = 1000;
/// Log pages at which the writer checkpoints itself.
const WRITER_PAGES: c_int = 16 * SIGNAL_PAGES;

/// Starts the checkpointer for the database at `path` and hands it the
/// writer's commits. It stops when the writer's connection is closed.
pub(crate) fn start(writer: &mut Connection, path: &Path) -> Result<()> {
    let conn = schema::open_checkpointer(path)?;
    let (signal, signals) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("kubox-store-checkpoint".into())
        .spawn(move || {
            while signals.recv().is_ok() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "storage checkpoint failed");
                }
            }
        })
        .map_err(|e| Error::Backend(format!("cannot start checkpoint thread: {e}")))?;
    let mut signalled_at = 0;
    writer.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
        if pages < signalled_at {
            // The log restarted from its beginning.
            signalled_at = 0;
        }
        if pages >= WRITER_PAGES {
            // Busy when the checkpointer is copying; the next commit tries again.
            // An error here must not reach SQLite: the commit has happened, and
            // SQLite would report it as failed.
            if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                tracing::debug!(error = %e, "writer checkpoint deferred");
            }
        } else if pages - signalled_at >= SIGNAL_PAGES {
            signalled_at = pages;
            // A full channel means a checkpoint is already due.
            let _ = signal.try_send(());
        }
        Ok(())
    }))?;
    Ok(())
}
