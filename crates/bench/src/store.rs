//! `kubox bench store`: the storage engine's write latency and throughput,
//! range reads and watch fan-out, for the embedded store and a real etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kubox_store::{
    EtcdConfig, EtcdStore, RangeRequest, SqliteConfig, SqliteStore, Store, WatchMessage,
    WatchRequest,
};
use kubox_testkit::EtcdProcess;

use crate::load::load;
use crate::report::{Latencies, Table};

pub struct Options {
    /// Also measure a real etcd (started on loopback) in the same run.
    pub etcd: bool,
    /// How long each throughput phase runs.
    pub duration: Duration,
    pub watchers: usize,
    /// Size of each written value, like a small Kubernetes object.
    pub value_bytes: usize,
}

struct Results {
    backend: &'static str,
    seq_p50: f64,
    seq_p99: f64,
    throughput: Vec<(usize, f64, f64)>,
    range_per_s: f64,
    watch_p50: f64,
    watch_p99: f64,
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let mut results = Vec::new();
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(SqliteConfig::new(dir.path().join("bench.db"))).await?;
    results.push(measure("kubox embedded (SQLite)", Arc::new(sqlite), &opts).await?);
    let _etcd = if opts.etcd {
        let etcd = EtcdProcess::start().await;
        let store = EtcdStore::connect(EtcdConfig::new(vec![etcd.endpoint()])).await?;
        results.push(measure("etcd 3 (real, same machine)", Arc::new(store), &opts).await?);
        Some(etcd)
    } else {
        None
    };
    let mut table = Table::new(&[
        "backend",
        "seq write p50 ms",
        "seq write p99 ms",
        "writes/s @1",
        "writes/s @16",
        "writes/s @256",
        "p99 ms @256",
        "range reads/s (100 keys)",
        &format!("watch p50 ms ({} watchers)", opts.watchers),
        "watch p99 ms",
    ]);
    for r in &results {
        let mut row = vec![
            r.backend.to_string(),
            format!("{:.2}", r.seq_p50),
            format!("{:.2}", r.seq_p99),
        ];
        row.extend(r.throughput.iter().map(|(_, tput, _)| format!("{tput:.0}")));
        row.push(format!("{:.2}", r.throughput.last().map_or(0.0, |t| t.2)));
        row.push(format!("{:.0}", r.range_per_s));
        row.push(format!("{:.2}", r.watch_p50));
        row.push(format!("{:.2}", r.watch_p99));
        table.row(row);
    }
    Ok(table.render())
}

async fn measure(
    backend: &'static str,
    store: Arc<dyn Store>,
    opts: &Options,
) -> anyhow::Result<Results> {
    let value = Bytes::from(vec![b'v'; opts.value_bytes]);

    let mut seq = Latencies::default();
    for i in 0..2000 {
        let start = Instant::now();
        store
            .create(&format!("/bench/seq/{i}"), value.clone(), 0)
            .await?;
        seq.record(start.elapsed());
    }

    let mut throughput = Vec::new();
    for writers in [1usize, 16, 256] {
        let (store, value) = (store.clone(), value.clone());
        let (rate, lat) = load(writers, opts.duration, move |w, i| {
            let (store, value) = (store.clone(), value.clone());
            async move {
                store
                    .create(&format!("/bench/tput/{writers}/{w}/{i}"), value, 0)
                    .await?;
                Ok(())
            }
        })
        .await?;
        throughput.push((writers, rate, lat.ms(0.99)));
    }

    let reader = store.clone();
    let (range_per_s, _) = load(16, opts.duration, move |_, _| {
        let store = reader.clone();
        async move {
            store
                .range(RangeRequest {
                    limit: 100,
                    ..RangeRequest::prefix("/bench/seq/")
                })
                .await?;
            Ok(())
        }
    })
    .await?;

    let (watch_p50, watch_p99) = watch_fanout(&store, opts.watchers).await?;
    Ok(Results {
        backend,
        seq_p50: seq.ms(0.5),
        seq_p99: seq.ms(0.99),
        throughput,
        range_per_s,
        watch_p50,
        watch_p99,
    })
}

/// Latency from issuing a write to each of `watchers` watchers receiving it.
/// Timing starts once every watcher has received a first write, so what is
/// measured is delivery to live watchers, not the start of their tasks (the
/// first writes after 1000 tasks are spawned wait for them to be polled
/// once, tens of ms, whatever the store).
async fn watch_fanout(store: &Arc<dyn Store>, watchers: usize) -> anyhow::Result<(f64, f64)> {
    const WRITES: usize = 100;
    const WARM_UP: &str = "/bench/watch/warm-up";
    let epoch = Instant::now();
    let (live_tx, mut live) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut stream = store
            .watch(WatchRequest {
                prefix: "/bench/watch/".into(),
                ..Default::default()
            })
            .await?;
        let live_tx = live_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut seen = 0;
            while seen < WRITES {
                match stream.next().await {
                    Some(Ok(WatchMessage::Events(events))) => {
                        let now = epoch.elapsed();
                        for e in events {
                            if e.kv.key == WARM_UP {
                                live_tx.send(()).await?;
                                continue;
                            }
                            let sent: u64 = std::str::from_utf8(&e.kv.value)?.parse()?;
                            lat.record(now.saturating_sub(Duration::from_nanos(sent)));
                            seen += 1;
                        }
                    }
                    Some(Ok(WatchMessage::Progress(_))) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("watch ended early"),
                }
            }
            anyhow::Ok(lat)
        }));
    }
    drop(live_tx);
    store.create(WARM_UP, Bytes::from_static(b"0"), 0).await?;
    for _ in 0..watchers {
        tokio::time::timeout(Duration::from_secs(30), live.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("a watcher ended before the first write"))?;
    }
    for i in 0..WRITES {
        let sent = epoch.elapsed().as_nanos().to_string();
        store
            .create(&format!("/bench/watch/{i}"), Bytes::from(sent), 0)
            .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.merge(&t.await??);
    }
    Ok((all.ms(0.5), all.ms(0.99)))
}
