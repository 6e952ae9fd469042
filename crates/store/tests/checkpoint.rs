//! The embedded store copies its write-ahead log into the database file while
//! it runs, on its checkpoint thread (not only when it closes).

use std::time::Duration;

use bytes::Bytes;
use kubox_store::*;
use kubox_testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_while_the_store_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let created = std::fs::metadata(&path).unwrap().len();
    // About 2,500 log pages: past the checkpointer's threshold, well short of
    // the writer's own, so only the checkpoint thread can copy them.
    let value = Bytes::from(vec![b'x'; 8192]);
    for i in 0..1200 {
        store
            .create(&format!("/c/{i}"), value.clone(), 0)
            .await
            .unwrap();
    }
    let checkpointed = 8 * 1024 * 1024;
    eventually(
        "the database file holds the written values",
        Duration::from_secs(30),
        || async {
            let len = std::fs::metadata(&path).unwrap().len();
            (len > checkpointed).then_some(())
        },
    )
    .await;
    assert!(created < checkpointed);
    store.close().await.unwrap();
}
