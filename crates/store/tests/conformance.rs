//! One suite, written against the `Store` interface, run against every backend:
//! the embedded SQLite store and a real etcd started for each test.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kubox_store::*;
use kubox_testkit::{EtcdProcess, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// A backend under test: a store, and a way to restart what is behind it.
enum Harness {
    Sqlite {
        dir: tempfile::TempDir,
        store: SqliteStore,
    },
    Etcd {
        etcd: EtcdProcess,
        store: Box<EtcdStore>,
    },
}

fn sqlite_config(dir: &tempfile::TempDir) -> SqliteConfig {
    let mut config = SqliteConfig::new(dir.path().join("state.db"));
    // Long enough that only an on-demand progress request can arrive in a test.
    config.progress_interval = Duration::from_secs(600);
    config.lease_check_interval = Duration::from_millis(100);
    config
}

fn etcd_config(etcd: &EtcdProcess) -> EtcdConfig {
    let mut config = EtcdConfig::new(vec![etcd.endpoint()]);
    config.progress_interval = Duration::from_secs(600);
    config
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(sqlite_config(&dir)).await.unwrap();
        Harness::Sqlite { dir, store }
    }

    async fn etcd() -> Self {
        let etcd = EtcdProcess::start().await;
        let store = Box::new(EtcdStore::connect(etcd_config(&etcd)).await.unwrap());
        Harness::Etcd { etcd, store }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Harness::Sqlite { store, .. } => Arc::new(store.clone()),
            Harness::Etcd { store, .. } => Arc::new((**store).clone()),
        }
    }

    /// Stops the backend (SQLite: closes the database; etcd: kills the process)
    /// and opens it again on the same data.
    async fn restart(&mut self) {
        match self {
            Harness::Sqlite { dir, store } => {
                store.close().await.unwrap();
                *store = SqliteStore::open(sqlite_config(dir)).await.unwrap();
            }
            Harness::Etcd { etcd, store } => {
                etcd.restart().await;
                **store = EtcdStore::connect(etcd_config(etcd)).await.unwrap();
            }
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_events(w: &mut WatchStream) -> Vec<Event> {
    loop {
        let msg = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("watch event in time")
            .expect("watch still open")
            .expect("watch message");
        if let WatchMessage::Events(events) = msg {
            return events;
        }
    }
}

/// Collects watch events until `n` have arrived.
async fn collect_events(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut all = Vec::new();
    while all.len() < n {
        all.extend(next_events(w).await);
    }
    all
}

mod cases {
    use super::*;

    pub async fn create_get_update_delete(h: &mut Harness) {
        let s = h.store();
        let base = s.current_revision().await.unwrap();
        let created = s
            .create("/registry/pods/default/a", b("v1"), 0)
            .await
            .unwrap();
        assert!(created.mod_revision > base);
        assert_eq!(created.create_revision, created.mod_revision);
        assert_eq!(created.version, 1);
        let (got, rev) = s.get("/registry/pods/default/a").await.unwrap();
        assert_eq!(got.as_ref(), Some(&created));
        assert!(rev >= created.mod_revision);

        let updated = s
            .update("/registry/pods/default/a", b("v2"), created.mod_revision, 0)
            .await
            .unwrap();
        assert!(updated.mod_revision > created.mod_revision);
        assert_eq!(updated.create_revision, created.create_revision);
        assert_eq!(updated.version, 2);
        assert_eq!(updated.value, b("v2"));

        let deleted = s
            .delete("/registry/pods/default/a", Some(updated.mod_revision))
            .await
            .unwrap();
        assert_eq!(deleted, updated);
        assert_eq!(s.get("/registry/pods/default/a").await.unwrap().0, None);
        assert!(s.current_revision().await.unwrap() > updated.mod_revision);

        // A key created again starts over.
        let again = s
            .create("/registry/pods/default/a", b("v3"), 0)
            .await
            .unwrap();
        assert_eq!(again.version, 1);
        assert_eq!(again.create_revision, again.mod_revision);
    }

    pub async fn guarded_writes_conflict(h: &mut Harness) {
        let s = h.store();
        let kv = s.create("/k", b("1"), 0).await.unwrap();
        match s.create("/k", b("2"), 0).await {
            Err(Error::AlreadyExists(key, current)) => {
                assert_eq!(key, "/k");
                assert_eq!(*current, kv);
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        let newer = s.update("/k", b("2"), kv.mod_revision, 0).await.unwrap();
        match s.update("/k", b("3"), kv.mod_revision, 0).await {
            Err(Error::Conflict {
                current: Some(current),
                expected,
                ..
            }) => {
                assert_eq!(*current, newer);
                assert_eq!(expected, kv.mod_revision);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert!(matches!(
            s.delete("/k", Some(kv.mod_revision)).await,
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            s.update("/missing", b("x"), 5, 0).await,
            Err(Error::Conflict { current: None, .. })
        ));
        assert!(matches!(
            s.delete("/missing", None).await,
            Err(Error::NotFound(_))
        ));
        // Failed writes hand out no revision.
        assert_eq!(s.get("/k").await.unwrap().0.unwrap().value, b("2"));
    }

    pub async fn transactions_share_one_revision(h: &mut Harness) {
        let s = h.store();
        s.create("/t/a", b("a"), 0).await.unwrap();
        let resp = s
            .txn(Txn {
                compares: vec![Compare::new(
                    "/t/a",
                    CompareOp::Equal,
                    CompareTarget::Value(b("a")),
                )],
                success: vec![
                    Op::Put {
                        key: "/t/b".into(),
                        value: b("b"),
                        lease: 0,
                    },
                    Op::Delete { key: "/t/a".into() },
                    Op::Get { key: "/t/b".into() },
                ],
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(resp.succeeded);
        let OpResult::Put { kv, prev: None } = &resp.results[0] else {
            panic!("{resp:?}")
        };
        assert_eq!(kv.mod_revision, resp.revision);
        let OpResult::Delete { prev: Some(prev) } = &resp.results[1] else {
            panic!("{resp:?}")
        };
        assert_eq!(prev.value, b("a"));
        let OpResult::Get(Some(got)) = &resp.results[2] else {
            panic!("{resp:?}")
        };
        assert_eq!(got.mod_revision, resp.revision);

        let failed = s
            .txn(Txn {
                compares: vec![Compare::new(
                    "/t/a",
                    CompareOp::Greater,
                    CompareTarget::Version(0),
                )],
                success: vec![Op::Put {
                    key: "/t/c".into(),
                    value: b("c"),
                    lease: 0,
                }],
                failure: vec![Op::Get { key: "/t/b".into() }],
            })
            .await
            .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(
            failed.revision, resp.revision,
            "a transaction that writes nothing keeps the revision"
        );
        assert_eq!(s.get("/t/c").await.unwrap().0, None);
    }

    pub async fn range_pagination_is_consistent(h: &mut Harness) {
        let s = h.store();
        for i in 0..25 {
            s.create(&format!("/registry/cm/ns/{i:03}"), b(&i.to_string()), 0)
                .await
                .unwrap();
        }
        s.create("/registry/cmx", b("outside"), 0).await.unwrap();
        s.create("/registry/cl/ns/x", b("outside"), 0)
            .await
            .unwrap();

        let first = s
            .range(RangeRequest {
                limit: 10,
                ..RangeRequest::prefix("/registry/cm/")
            })
            .await
            .unwrap();
        assert_eq!(first.kvs.len(), 10);
        assert!(first.more);
        assert_eq!(first.count, 25);
        assert_eq!(first.kvs[0].key, "/registry/cm/ns/000");

        // Writes after the first page do not show in later pages read at its revision.
        s.create("/registry/cm/ns/999", b("late"), 0).await.unwrap();
        s.delete("/registry/cm/ns/020", None).await.unwrap();
        let mut keys: Vec<String> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
        let mut next = format!("{}\0", keys.last().unwrap());
        loop {
            let page = s
                .range(RangeRequest {
                    start: Some(next.clone()),
                    limit: 10,
                    revision: first.revision,
                    ..RangeRequest::prefix("/registry/cm/")
                })
                .await
                .unwrap();
            assert_eq!(page.revision, first.revision);
            keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
            if !page.more {
                break;
            }
            next = format!("{}\0", page.kvs.last().unwrap().key);
        }
        let expected: Vec<String> = (0..25).map(|i| format!("/registry/cm/ns/{i:03}")).collect();
        assert_eq!(keys, expected);

        let latest = s
            .range(RangeRequest::prefix("/registry/cm/"))
            .await
            .unwrap();
        assert_eq!(latest.kvs.len(), 25);
        assert!(!latest.more);
        assert!(latest.kvs.iter().any(|kv| kv.key == "/registry/cm/ns/999"));
        let counted = s
            .range(RangeRequest {
                count_only: true,
                ..RangeRequest::prefix("/registry/cm/")
            })
            .await
            .unwrap();
        assert_eq!(counted.count, 25);
        assert!(counted.kvs.is_empty());
    }

    pub async fn reads_at_old_revisions(h: &mut Harness) {
        let s = h.store();
        let v1 = s.create("/old/a", b("1"), 0).await.unwrap();
        let v2 = s
            .update("/old/a", b("2"), v1.mod_revision, 0)
            .await
            .unwrap();
        s.create("/old/b", b("b"), 0).await.unwrap();
        s.delete("/old/a", None).await.unwrap();
        let at = |revision| {
            s.range(RangeRequest {
                revision,
                ..RangeRequest::prefix("/old/")
            })
        };
        let r1 = at(v1.mod_revision).await.unwrap();
        assert_eq!(r1.kvs, vec![v1.clone()]);
        let r2 = at(v2.mod_revision).await.unwrap();
        assert_eq!(r2.kvs, vec![v2.clone()]);
        let now = at(0).await.unwrap();
        assert_eq!(
            now.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
            vec!["/old/b"]
        );
        let future = s.current_revision().await.unwrap() + 10;
        assert!(matches!(
            at(future).await,
            Err(Error::FutureRevision { .. })
        ));
    }

    pub async fn watch_delivers_changes_in_order(h: &mut Harness) {
        let s = h.store();
        let mut w = s
            .watch(WatchRequest {
                prefix: "/w/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let a = s.create("/w/a", b("1"), 0).await.unwrap();
        s.create("/other", b("x"), 0).await.unwrap();
        let a2 = s.update("/w/a", b("2"), a.mod_revision, 0).await.unwrap();
        s.delete("/w/a", None).await.unwrap();
        let events = collect_events(&mut w, 3).await;
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].kind, EventKind::Put);
        assert_eq!(events[0].kv, a);
        assert_eq!(events[0].prev_kv, None);
        assert_eq!(events[1].kv, a2);
        assert_eq!(events[1].prev_kv.as_ref(), Some(&a));
        assert_eq!(events[2].kind, EventKind::Delete);
        assert_eq!(events[2].kv.key, "/w/a");
        assert!(events[2].kv.mod_revision > a2.mod_revision);
        assert_eq!(events[2].prev_kv.as_ref(), Some(&a2));
    }

    /// A watch from an old revision replays history and continues live while a
    /// writer keeps going: every change exactly once, in order.
    pub async fn watch_from_old_revision_has_no_gap(h: &mut Harness) {
        let s = h.store();
        let first = s.create("/g/0", b("0"), 0).await.unwrap();
        for i in 1..50 {
            s.create(&format!("/g/{i}"), b("x"), 0).await.unwrap();
        }
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 50..250 {
                    s.create(&format!("/g/{i}"), b("x"), 0).await.unwrap();
                }
            })
        };
        let mut w = s
            .watch(WatchRequest {
                prefix: "/g/".into(),
                start_revision: first.mod_revision,
                ..Default::default()
            })
            .await
            .unwrap();
        let events = collect_events(&mut w, 250).await;
        writer.await.unwrap();
        assert_eq!(events.len(), 250);
        let revisions: Vec<Revision> = events.iter().map(Event::revision).collect();
        assert!(
            revisions.windows(2).all(|p| p[0] < p[1]),
            "strictly increasing"
        );
        let keys: HashSet<&str> = events.iter().map(|e| e.kv.key.as_str()).collect();
        assert_eq!(keys.len(), 250);
    }

    pub async fn compaction_expires_history(h: &mut Harness) {
        let s = h.store();
        let a = s.create("/c/a", b("1"), 0).await.unwrap();
        let a2 = s.update("/c/a", b("2"), a.mod_revision, 0).await.unwrap();
        let gone = s.create("/c/gone", b("x"), 0).await.unwrap();
        s.delete("/c/gone", None).await.unwrap();
        let keep = s.create("/c/b", b("b"), 0).await.unwrap();
        s.compact(keep.mod_revision).await.unwrap();

        let old = s
            .range(RangeRequest {
                revision: a.mod_revision,
                ..RangeRequest::prefix("/c/")
            })
            .await;
        assert!(matches!(old, Err(Error::Compacted { .. })), "{old:?}");
        let watch = s
            .watch(WatchRequest {
                prefix: "/c/".into(),
                start_revision: gone.mod_revision,
                ..Default::default()
            })
            .await;
        match watch {
            Err(Error::Compacted { .. }) => {}
            Ok(mut w) => assert!(matches!(w.next().await, Some(Err(Error::Compacted { .. })))),
            Err(other) => panic!("expected Compacted, got {other:?}"),
        }
        let now = s.range(RangeRequest::prefix("/c/")).await.unwrap();
        assert_eq!(now.kvs, vec![a2, keep.clone()]);
        let at_compacted = s
            .range(RangeRequest {
                revision: keep.mod_revision,
                ..RangeRequest::prefix("/c/")
            })
            .await
            .unwrap();
        assert_eq!(at_compacted.kvs.len(), 2);
        assert!(matches!(
            s.compact(keep.mod_revision).await,
            Err(Error::Compacted { .. })
        ));
        // Watching from the compacted revision itself still works.
        let mut w = s
            .watch(WatchRequest {
                prefix: "/c/".into(),
                start_revision: keep.mod_revision,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(next_events(&mut w).await[0].kv, keep);
    }

    /// The automatic compactor discards history older than one interval.
    pub async fn automatic_compaction(h: &mut Harness) {
        let s = h.store();
        let old = s.create("/auto/a", b("1"), 0).await.unwrap();
        s.update("/auto/a", b("2"), old.mod_revision, 0)
            .await
            .unwrap();
        let compactor = spawn_compactor(s.clone(), Duration::from_millis(100));
        eventually(
            "history before the first tick to be compacted",
            WAIT,
            || {
                let s = s.clone();
                async move {
                    let r = s
                        .range(RangeRequest {
                            revision: old.mod_revision,
                            ..RangeRequest::prefix("/auto/")
                        })
                        .await;
                    matches!(r, Err(Error::Compacted { .. })).then_some(())
                }
            },
        )
        .await;
        compactor.abort();
        assert_eq!(s.get("/auto/a").await.unwrap().0.unwrap().value, b("2"));
    }

    pub async fn leases_expire_and_revoke(h: &mut Harness) {
        let s = h.store();
        let short = s.lease_grant(1).await.unwrap();
        let long = s.lease_grant(600).await.unwrap();
        s.create("/l/short", b("x"), short).await.unwrap();
        let kv = s.create("/l/long", b("x"), long).await.unwrap();
        assert_eq!(kv.lease, long);
        s.lease_keep_alive(long).await.unwrap();
        eventually("the short lease's key to expire", WAIT, || {
            let s = s.clone();
            async move { s.get("/l/short").await.unwrap().0.is_none().then_some(()) }
        })
        .await;
        assert!(s.get("/l/long").await.unwrap().0.is_some());
        s.lease_revoke(long).await.unwrap();
        assert_eq!(s.get("/l/long").await.unwrap().0, None);
        assert!(matches!(
            s.lease_keep_alive(long).await,
            Err(Error::LeaseNotFound(_))
        ));
        assert!(matches!(
            s.create("/l/x", b("x"), long).await,
            Err(Error::LeaseNotFound(_))
        ));
    }

    pub async fn concurrent_writers_get_unique_revisions(h: &mut Harness) {
        let s = h.store();
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut revs = Vec::new();
                    for i in 0..40 {
                        revs.push(
                            s.create(&format!("/cw/{t}/{i}"), b("x"), 0)
                                .await
                                .unwrap()
                                .mod_revision,
                        );
                    }
                    revs
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            let revs = t.await.unwrap();
            assert!(
                revs.windows(2).all(|p| p[0] < p[1]),
                "one writer's revisions increase"
            );
            all.extend(revs);
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 64 * 40);
        let listed = s.range(RangeRequest::prefix("/cw/")).await.unwrap();
        assert_eq!(listed.count, 64 * 40);

        // Concurrent compare-and-swap on one key: exactly one wins each round.
        let kv = s.create("/cas", b("0"), 0).await.unwrap();
        let racers: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.update("/cas", b(&i.to_string()), kv.mod_revision, 0)
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut wins = 0;
        for r in racers {
            wins += r.await.unwrap() as usize;
        }
        assert_eq!(wins, 1);
    }

    pub async fn large_values(h: &mut Harness) {
        let s = h.store();
        let big = Bytes::from(vec![b'z'; 1_500_000]);
        let kv = s.create("/big", big.clone(), 0).await.unwrap();
        assert_eq!(s.get("/big").await.unwrap().0.unwrap().value, big);
        let bigger = Bytes::from(vec![b'z'; MAX_VALUE_BYTES + 1]);
        assert!(matches!(
            s.update("/big", bigger, kv.mod_revision, 0).await,
            Err(Error::ValueTooLarge { .. })
        ));
        assert_eq!(
            s.get("/big").await.unwrap().0.unwrap().mod_revision,
            kv.mod_revision
        );
    }

    pub async fn db_status_reports_the_size_on_disk(h: &mut Harness) {
        let s = h.store();
        let before = s.db_status().await.unwrap();
        assert!(
            before.cluster_id == "sqlite" || before.cluster_id.starts_with("etcd-"),
            "{before:?}"
        );
        for i in 0..4 {
            s.create(
                &format!("/sized/{i}"),
                Bytes::from(vec![b'x'; 1_000_000]),
                0,
            )
            .await
            .unwrap();
        }
        // etcd reports its database as of its last backend commit, a
        // batch interval after the write.
        let after = eventually("the store to count what was written", WAIT, || {
            let s = s.clone();
            async move {
                let after = s.db_status().await.unwrap();
                (after.size_bytes >= before.size_bytes + 4_000_000).then_some(after)
            }
        })
        .await;
        assert_eq!(after.cluster_id, before.cluster_id);
    }

    pub async fn many_keys(h: &mut Harness) {
        let s = h.store();
        const N: usize = 100_000;
        const WRITERS: usize = 64;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    for i in (t..N).step_by(WRITERS) {
                        s.create(&format!("/many/{i:06}"), b("value"), 0)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let first = s
            .range(RangeRequest {
                limit: 5000,
                ..RangeRequest::prefix("/many/")
            })
            .await
            .unwrap();
        assert_eq!(first.count, N as i64);
        let mut seen = first.kvs.len();
        let mut last = first.kvs.last().unwrap().key.clone();
        let mut more = first.more;
        while more {
            let page = s
                .range(RangeRequest {
                    start: Some(format!("{last}\0")),
                    limit: 5000,
                    revision: first.revision,
                    ..RangeRequest::prefix("/many/")
                })
                .await
                .unwrap();
            seen += page.kvs.len();
            last = page.kvs.last().unwrap().key.clone();
            more = page.more;
        }
        assert_eq!(seen, N);
        assert_eq!(last, format!("/many/{:06}", N - 1));
    }

    /// A watch that asked for progress reports, on request, a revision that
    /// covers writes outside its range.
    pub async fn progress_on_request(h: &mut Harness) {
        let s = h.store();
        let mut w = s
            .watch(WatchRequest {
                prefix: "/p/".into(),
                start_revision: 0,
                progress_notify: true,
            })
            .await
            .unwrap();
        let elsewhere = s.create("/elsewhere", b("x"), 0).await.unwrap();
        let progress = tokio::time::timeout(WAIT, async {
            loop {
                s.request_progress().await.unwrap();
                match tokio::time::timeout(Duration::from_millis(200), w.next()).await {
                    Ok(Some(Ok(WatchMessage::Progress(rev)))) if rev >= elsewhere.mod_revision => {
                        return rev;
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(other) => panic!("watch ended: {other:?}"),
                }
            }
        })
        .await
        .expect("a progress notification");
        assert!(progress >= elsewhere.mod_revision);
    }

    pub async fn restart_keeps_every_write(h: &mut Harness) {
        let mut written = BTreeMap::new();
        {
            let s = h.store();
            for i in 0..100 {
                let kv = s
                    .create(&format!("/r/{i:03}"), b(&i.to_string()), 0)
                    .await
                    .unwrap();
                written.insert(kv.key.clone(), kv);
            }
        }
        let before = h.store().current_revision().await.unwrap();
        h.restart().await;
        let s = h.store();
        assert_eq!(s.current_revision().await.unwrap(), before);
        let listed = s.range(RangeRequest::prefix("/r/")).await.unwrap();
        let after: BTreeMap<String, KeyValue> = listed
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        assert_eq!(after, written);
        let next = s.create("/r/next", b("x"), 0).await.unwrap();
        assert!(
            next.mod_revision > before,
            "revisions continue without reuse"
        );
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&mut super::Harness::sqlite().await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&mut super::Harness::etcd().await).await;
                }
            )*
        }
    };
}

suite!(
    create_get_update_delete,
    guarded_writes_conflict,
    transactions_share_one_revision,
    range_pagination_is_consistent,
    reads_at_old_revisions,
    watch_delivers_changes_in_order,
    watch_from_old_revision_has_no_gap,
    compaction_expires_history,
    leases_expire_and_revoke,
    automatic_compaction,
    concurrent_writers_get_unique_revisions,
    large_values,
    db_status_reports_the_size_on_disk,
    many_keys,
    progress_on_request,
    restart_keeps_every_write,
);
