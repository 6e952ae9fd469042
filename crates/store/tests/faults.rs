//! Faults of the embedded store: bad data files, a full disk, and a crash
//! (SIGKILL) in the middle of concurrent writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use kubox_store::*;

const CHILD_ENV: &str = "KUBOX_CRASH_WRITER_DB";

fn config(path: &Path) -> SqliteConfig {
    SqliteConfig::new(path)
}

#[tokio::test]
async fn refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let garbage =
        b"this is not an sqlite database, but it is long enough to have a header".repeat(64);
    std::fs::write(&path, &garbage).unwrap();
    match SqliteStore::open(config(&path)).await {
        Err(Error::Corrupt { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("not a database"), "{reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("opened a corrupt file"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "nothing overwritten"
    );
}

#[tokio::test]
async fn refuses_a_foreign_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('ada');")
        .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    match SqliteStore::open(config(&path)).await {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("not a kubox data file"), "{reason}")
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("opened a foreign database"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing overwritten");
}

/// A small tmpfs mounted for one test; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "kubox-test",
                dir.path().to_str().unwrap(),
            ])
            .status()
            .expect("running mount (the tests run as root)");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_write_and_hands_out_no_revision() {
    let disk = SmallDisk::mount("4m");
    let store = SqliteStore::open(config(&disk.path())).await.unwrap();
    let value = Bytes::from(vec![7u8; 256 * 1024]);
    let mut acked = BTreeMap::new();
    let mut failure = None;
    for i in 0..64 {
        match store.create(&format!("/full/{i}"), value.clone(), 0).await {
            Ok(kv) => {
                acked.insert(kv.key.clone(), kv.mod_revision);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a 4 MiB disk fills up");
    assert!(matches!(failure, Error::WriteFailed(_)), "{failure:?}");
    let last = *acked.values().max().unwrap();
    assert_eq!(
        store.current_revision().await.unwrap(),
        last,
        "the failed write got no revision"
    );
    // Reads still work, and every acknowledged write is there after a restart.
    store.close().await.unwrap();
    let store = SqliteStore::open(config(&disk.path())).await.unwrap();
    for (key, rev) in &acked {
        assert_eq!(store.get(key).await.unwrap().0.unwrap().mod_revision, *rev);
    }
    assert_eq!(store.current_revision().await.unwrap(), last);
}

/// The writer side of the crash test: runs only in the child process started
/// by `kill_9_during_concurrent_writes_loses_no_acknowledged_write`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_writer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = SqliteStore::open(config(Path::new(&path))).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for i in 0..1000 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for round in 0.. {
                let key = format!("/crash/{i:04}/{round}");
                let kv = store
                    .create(&key, Bytes::from(key.clone()), 0)
                    .await
                    .unwrap();
                let _ = tx.send(format!("ack {key} {}", kv.mod_revision));
            }
        });
    }
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = BTreeMap::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 5000 {
        let line = lines
            .next()
            .expect("the writer acknowledges writes")
            .unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.insert(key.to_owned(), rev.parse::<i64>().unwrap());
        }
    }
    // SIGKILL while 1000 writers are mid-flight.
    child.kill().unwrap();
    child.wait().unwrap();
    // Acknowledgements already in the pipe were acknowledged before the kill too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ack ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.insert(key.to_owned(), rev.parse::<i64>().unwrap());
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(config(&db)).await.unwrap();
        let listed = store.range(RangeRequest::prefix("/crash/")).await.unwrap();
        let found: BTreeMap<String, i64> = listed
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect();
        for (key, rev) in &acked {
            assert_eq!(
                found.get(key),
                Some(rev),
                "acknowledged write {key} at {rev} lost"
            );
        }
        let max_acked = *acked.values().max().unwrap();
        let current = store.current_revision().await.unwrap();
        assert!(current >= max_acked);
        let next = store
            .create("/after-crash", Bytes::from_static(b"x"), 0)
            .await
            .unwrap();
        assert!(
            next.mod_revision > current,
            "revisions continue without reuse"
        );
    });
}
