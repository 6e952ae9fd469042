//! Opening and validating the database file.
//!
//! The log table holds one row per key per write (the kine model): `rev` is the
//! revision of the write, shared by all rows one transaction writes. `current`
//! points every live key at its latest row, so reads at the latest revision
//! never scan history.

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::{Error, Result};

/// Bumped whenever the layout changes incompatibly.
const FORMAT: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE log (
    id INTEGER PRIMARY KEY,
    rev INTEGER NOT NULL,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX log_name_rev ON log (name, rev);
CREATE INDEX log_rev ON log (rev);
CREATE TABLE current (name TEXT PRIMARY KEY, id INTEGER NOT NULL, lease INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX current_lease ON current (lease) WHERE lease != 0;
CREATE TABLE lease (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
";

pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACTED: &str = "compacted";
const META_FORMAT: &str = "format";

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Keeps each cached statement's plan for good. Without this SQLite marks a
/// statement whose plan might depend on a bound value (a range read's
/// `LIMIT ?` is one) to be prepared again after each use: the writer and the
/// readers spent a twelfth of the server's CPU parsing the same SQL again.
fn plan_once(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

fn configure(conn: &Connection, path: &Path) -> Result<()> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(corrupt(
            path,
            format!("cannot use write-ahead logging (journal mode {mode})"),
        ));
    }
    // FULL: every commit is fsynced before the writer acknowledges it.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")?;
    plan_once(conn)
}

/// Opens the writer's connection, creating the schema in a new file and
/// refusing, before writing anything, a file that is not a kubox store of this
/// format.
pub(crate) fn open_writer(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| corrupt(dir, format!("cannot create directory: {e}")))?;
    }
    let conn = Connection::open(path).map_err(|e| corrupt(path, e))?;
    // The first read parses the header: a file that is not SQLite fails here.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    if tables > 0 {
        let format: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                [META_FORMAT],
                |r| r.get(0),
            )
            .optional()
            .map_err(|_| corrupt(path, "not a kubox data file (no meta table)"))?;
        match format {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!("data format {other}, this kubox reads format {FORMAT}"),
                ));
            }
            None => return Err(corrupt(path, "not a kubox data file (no format marker)")),
        }
    }
    configure(&conn, path)?;
    if tables == 0 {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('{META_FORMAT}', {FORMAT}), ('{META_REVISION}', 0), ('{META_COMPACTED}', 0); COMMIT;"
        ))?;
    }
    Ok(conn)
}

/// Opens the connection that checkpoints the log into the database file.
pub(crate) fn open_checkpointer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| corrupt(path, e))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")?;
    Ok(conn)
}

pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| corrupt(path, e))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
    plan_once(&conn)?;
    Ok(conn)
}

pub(crate) fn meta(conn: &Connection, name: &str) -> Result<i64> {
    // Every read snapshot asks this twice: prepared once per connection.
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    #[test]
    fn statements_keep_their_plan_across_bindings() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("state.db");
        let writer = open_writer(&path).expect("a new store");
        let reader = open_reader(&path).expect("a reader");
        for conn in [&writer, &reader] {
            let mut stmt = conn
                .prepare(
                    "SELECT l.value FROM current c JOIN log l ON l.id = c.id
                     WHERE c.name >= ?1 AND c.name < ?2 ORDER BY c.name LIMIT ?3",
                )
                .expect("prepared");
            for (start, end, limit) in [("/a", "/b", -1), ("/c", "/d", 501), ("/e", "/f", 2)] {
                stmt.query(rusqlite::params![start, end, limit])
                    .and_then(|mut rows| rows.next().map(drop))
                    .expect("queried");
            }
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
        }
    }
}
