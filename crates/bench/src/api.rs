//! `kubox bench api`: the API server over HTTPS on loopback, measured with the
//! kube-rs client: create/get/list/update/delete latency and throughput,
//! LIST of many pods, and watch fan-out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use kubox_apiserver::ApiServer;
use kubox_store::{EtcdConfig, EtcdStore, SqliteConfig, SqliteStore, Store};
use kubox_testkit::EtcdProcess;

use crate::load::load;
use crate::report::{Latencies, Table};

pub struct Options {
    pub duration: Duration,
    pub pods: usize,
    pub watchers: usize,
    /// Also measure the API server on a real etcd (started on loopback).
    pub etcd: bool,
}

async fn client(server: &ApiServer) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

fn configmap(name: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.data = Some([("key".to_owned(), "v".repeat(256))].into());
    cm
}

/// LISTs of all the pods measured, each way.
const LISTS: usize = 20;

/// A row for a load phase: operation, clients, rate and latency quantiles.
fn load_row(table: &mut Table, op: &str, clients: usize, rate: f64, lat: &Latencies) {
    table.row(vec![
        op.to_owned(),
        clients.to_string(),
        format!("{rate:.0}"),
        format!("{:.2}", lat.ms(0.5)),
        format!("{:.2}", lat.ms(0.99)),
    ]);
}

/// The same phases against the embedded store, then (with `etcd`) a real
/// etcd started on loopback, one table each.
pub async fn run(opts: Options) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let sqlite =
        Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("db/state.db"))).await?);
    let mut out = format!(
        "Embedded store (SQLite):\n\n{}",
        run_on(sqlite, dir.path(), &opts).await?
    );
    if opts.etcd {
        let etcd = EtcdProcess::start().await;
        let store = Arc::new(EtcdStore::connect(EtcdConfig::new(vec![etcd.endpoint()])).await?);
        let dir = tempfile::tempdir()?;
        let table = run_on(store, dir.path(), &opts).await?;
        out.push_str(&format!("\netcd 3 (real, same machine):\n\n{table}"));
    }
    Ok(out)
}

async fn run_on(
    store: Arc<dyn Store>,
    dir: &std::path::Path,
    opts: &Options,
) -> anyhow::Result<String> {
    let config = kubox_apiserver::Config {
        data_dir: dir.to_owned(),
        bind_address: "127.0.0.1".parse()?,
        advertise_address: "127.0.0.1".parse()?,
        https_port: 0,
        extra_sans: Vec::new(),
        event_ttl: Duration::from_secs(3600),
        authorization_mode: Default::default(),
        metrics: Default::default(),
        token: None,
        encryption_provider_config: None,
        audit: None,
        token_auth_file: None,
    };
    let server = ApiServer::start(store, &config).await?;
    let client = client(&server).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let mut table = Table::new(&["operation", "clients", "ops/s", "p50 ms", "p99 ms"]);
    for clients in [1usize, 16, 128] {
        let api = cms.clone();
        let (rate, lat) = load(clients, opts.duration, move |c, i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &configmap(&format!("b{clients}-{c}-{i}")),
                )
                .await?;
                Ok(())
            }
        })
        .await?;
        load_row(&mut table, "create", clients, rate, &lat);
        // One object per client for the read and update phases.
        for c in 0..clients {
            if cms.get_opt(&format!("t{clients}-{c}")).await?.is_none() {
                cms.create(
                    &PostParams::default(),
                    &configmap(&format!("t{clients}-{c}")),
                )
                .await?;
            }
        }

        let api = cms.clone();
        let (rate, lat) = load(clients, opts.duration, move |c, _| {
            let api = api.clone();
            async move {
                api.get(&format!("t{clients}-{c}")).await?;
                Ok(())
            }
        })
        .await?;
        load_row(&mut table, "get", clients, rate, &lat);

        let api = cms.clone();
        let (rate, lat) = load(clients, opts.duration, move |c, i| {
            let api = api.clone();
            async move {
                let name = format!("t{clients}-{c}");
                let mut cm = api.get(&name).await?;
                cm.data = Some([("key".to_owned(), i.to_string())].into());
                api.replace(&name, &PostParams::default(), &cm).await?;
                Ok(())
            }
        })
        .await?;
        load_row(&mut table, "get+update", clients, rate, &lat);
    }
    let api = cms.clone();
    let (rate, lat) = load(16, opts.duration, move |c, i| {
        let api = api.clone();
        async move {
            let name = format!("d-{c}-{i}");
            api.create(&PostParams::default(), &configmap(&name))
                .await?;
            api.delete(&name, &DeleteParams::default()).await?;
            Ok(())
        }
    })
    .await?;
    load_row(&mut table, "create+delete", 16, rate, &lat);

    // No controller manager runs here to make the account pods run as.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let mut default = ServiceAccount::default();
    default.metadata.name = Some("default".into());
    accounts.create(&PostParams::default(), &default).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let template: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]},
    }))?;
    let n = opts.pods;
    let api = pods.clone();
    let fill: Vec<_> = (0..32)
        .map(|w| {
            let api = api.clone();
            let template = template.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(32) {
                    let mut pod = template.clone();
                    pod.metadata.name = Some(format!("pod-{i:05}"));
                    api.create(&PostParams::default(), &pod).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for f in fill {
        f.await??;
    }
    // The LIST as the server answers it (its body read whole, not parsed),
    // then as kube-rs returns it, decoded into typed Pods. The first of
    // each is reported apart: both processes then still take fresh memory
    // from the kernel for a body of this size (the allocator reuses it
    // afterwards), which made it several times slower than the rest.
    let mut served = Vec::new();
    let mut decoded = Vec::new();
    for _ in 0..=LISTS {
        let t = Instant::now();
        let body = client
            .request_text(http::Request::get("/api/v1/namespaces/default/pods").body(Vec::new())?)
            .await?;
        served.push(t.elapsed());
        let head = body.get(..64).unwrap_or(&body);
        anyhow::ensure!(head.contains("\"kind\":\"PodList\""), "not a PodList");
        let t = Instant::now();
        let got = pods.list(&ListParams::default()).await?;
        decoded.push(t.elapsed());
        anyhow::ensure!(
            got.items.len() == n,
            "listed {} of {n} pods",
            got.items.len()
        );
    }
    for (how, times) in [("served", &served), ("decoded by kube-rs", &decoded)] {
        let (first, rest) = times.split_first().expect("at least one LIST");
        let mut lat = Latencies::default();
        rest.iter().for_each(|t| lat.record(*t));
        let first_ms = first.as_secs_f64() * 1000.0;
        for (label, p50, p99) in [
            (format!("list {n} pods, {how}, first"), first_ms, first_ms),
            (
                format!("list {n} pods, {how}, next {LISTS}"),
                lat.ms(0.5),
                lat.ms(0.99),
            ),
        ] {
            table.row(vec![
                label,
                "1".into(),
                format!("{:.1}", 1000.0 / p50),
                format!("{p50:.2}"),
                format!("{p99:.2}"),
            ]);
        }
    }

    let (p50, p99) = watch_fanout(&cms, opts.watchers).await?;
    table.row(vec![
        format!("watch delivery to {} watchers", opts.watchers),
        "1".into(),
        "-".into(),
        format!("{p50:.2}"),
        format!("{p99:.2}"),
    ]);
    Ok(table.render())
}

/// Latency from issuing a create to each watcher receiving its ADDED event.
async fn watch_fanout(api: &Api<ConfigMap>, watchers: usize) -> anyhow::Result<(f64, f64)> {
    const WRITES: usize = 50;
    let epoch = Instant::now();
    // Watches open one after another, so the figure is delivery, not a storm
    // of handshakes; each is established before any write is made.
    let params = WatchParams::default().labels("bench=watch");
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut stream = api.watch(&params, "0").await?.boxed();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut seen = 0;
            while seen < WRITES {
                match stream.next().await {
                    Some(Ok(WatchEvent::Added(cm))) => {
                        let sent: u64 = cm
                            .data
                            .and_then(|d| d.get("sent").cloned())
                            .unwrap_or_default()
                            .parse()?;
                        lat.record(epoch.elapsed().saturating_sub(Duration::from_nanos(sent)));
                        seen += 1;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("watch ended early"),
                }
            }
            anyhow::Ok(lat)
        }));
    }
    for i in 0..WRITES {
        let mut cm = configmap(&format!("w-{i}"));
        cm.metadata.labels = Some([("bench".to_owned(), "watch".to_owned())].into());
        cm.data = Some([("sent".to_owned(), epoch.elapsed().as_nanos().to_string())].into());
        api.create(&PostParams::default(), &cm).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.merge(&t.await??);
    }
    Ok((all.ms(0.5), all.ms(0.99)))
}
