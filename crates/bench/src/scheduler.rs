//! `kubox bench scheduler`: pods placed per second, from creation to bound,
//! on a real `kubox server` whose nodes are hollow (simulated in this
//! process, as upstream's scheduler_perf does with fake nodes): the basic
//! workload, pods with required anti-affinity, and pods spread over zones.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kubox_agent::hollow::{HollowConfig, HollowNodes};
use kubox_testkit::{Apart, KuboxServer, eventually};

use crate::pods::{USER_HZ, usage};
use crate::report::{Latencies, Table};

pub struct Options {
    /// Cluster sizes, each measured on a fresh server.
    pub nodes: Vec<usize>,
    /// Pods per workload.
    pub pods: usize,
    /// Zones the hollow nodes are spread over, for the topology spread workload.
    pub zones: usize,
    /// Run the scheduler as its own process (`kubox scheduler`), whose
    /// memory and CPU are then reported.
    pub apart: bool,
}

/// Pods created at once: enough that creation outpaces scheduling.
const CREATORS: usize = 16;

#[derive(Clone, Copy)]
enum Workload {
    Basic,
    AntiAffinity,
    TopologySpread,
}

impl Workload {
    const ALL: [Workload; 3] = [Self::Basic, Self::AntiAffinity, Self::TopologySpread];

    fn name(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::AntiAffinity => "anti-affinity",
            Self::TopologySpread => "topology-spread",
        }
    }

    /// Pod `i` of the workload. Anti-affine pods come in groups no larger
    /// than the cluster, each pod of a group on a node of its own.
    fn pod(self, i: usize, groups: usize) -> Pod {
        let group = format!("g{}", i % groups);
        let mut spec = serde_json::json!({
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
        });
        let selector = serde_json::json!({"matchLabels": {"group": group}});
        match self {
            Self::Basic => {}
            Self::AntiAffinity => {
                spec["affinity"] = serde_json::json!({"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname"}]}});
            }
            Self::TopologySpread => {
                spec["topologySpreadConstraints"] = serde_json::json!([
                    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                     "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}]);
            }
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{i}"), "labels": {"group": group}},
            "spec": spec,
        }))
        .expect("a valid pod")
    }
}

struct Measured {
    rate: f64,
    latencies: Latencies,
    took: Duration,
}

/// Creates the workload's pods in a namespace of its own and times each
/// from its creation until a watch shows it bound.
async fn measure(
    client: &kube::Client,
    workload: Workload,
    pods: usize,
    nodes: usize,
) -> anyhow::Result<Measured> {
    let ns = format!("bench-{}", workload.name());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let groups = pods.div_ceil(nodes).max(1) * 2;
    let created: std::sync::Mutex<HashMap<String, Instant>> = Default::default();
    let watch = watcher(api.clone(), watcher::Config::default());
    let bound = async {
        let mut latencies = Latencies::default();
        let mut last = Instant::now();
        let mut seen = std::collections::HashSet::new();
        let mut stream = std::pin::pin!(watch);
        while seen.len() < pods {
            let Some(event) = stream.try_next().await? else {
                anyhow::bail!("the watch ended");
            };
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                && let Some(name) = p.metadata.name
                && seen.insert(name.clone())
            {
                last = Instant::now();
                if let Some(at) = created.lock().expect("not poisoned").get(&name) {
                    latencies.record(last - *at);
                }
            }
        }
        anyhow::Ok((latencies, last))
    };
    let started = Instant::now();
    let create = futures::stream::iter(0..pods)
        .map(|i| {
            let (api, created) = (&api, &created);
            async move {
                let pod = workload.pod(i, groups);
                created
                    .lock()
                    .expect("not poisoned")
                    .insert(format!("p-{i}"), Instant::now());
                api.create(&PostParams::default(), &pod).await.map(drop)
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<()>();
    let limit = Duration::from_secs(120).max(Duration::from_millis(pods as u64 * 50));
    let Ok((created_all, bound_all)) =
        tokio::time::timeout(limit, futures::future::join(create, bound)).await
    else {
        let pods = api.list(&ListParams::default()).await?.items;
        let bound = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        anyhow::bail!(
            "{}: {bound} of {} pods created were bound within {limit:?}",
            workload.name(),
            pods.len()
        );
    };
    created_all?;
    let (latencies, last) = bound_all?;
    let took = last - started;
    Ok(Measured {
        rate: pods as f64 / took.as_secs_f64(),
        latencies,
        took,
    })
}

/// Waits until the scheduler places a pod, which it does only once its
/// first lists of the cluster are in, and deletes the pod.
async fn placing(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut probe = Workload::Basic.pod(0, 1);
    probe.metadata.name = Some("scheduler-probe".into());
    api.create(&PostParams::default(), &probe).await?;
    eventually(
        "the scheduler to place its first pod",
        Duration::from_secs(120),
        || async {
            let pod = api.get("scheduler-probe").await.ok()?;
            pod.spec.and_then(|s| s.node_name).map(drop)
        },
    )
    .await;
    api.delete("scheduler-probe", &Default::default()).await?;
    Ok(())
}

/// A fresh `kubox server` without a node agent (and with `server_args`),
/// `nodes` hollow nodes over `zones` zones registered with it, and a
/// client of it.
pub(crate) async fn hollow_cluster(
    exe: &std::path::Path,
    nodes: usize,
    zones: usize,
    server_args: &[&str],
) -> anyhow::Result<(KuboxServer, kube::Client, HollowNodes)> {
    // Hollow nodes serve no kubelet endpoint: each scrape of the built-in
    // metrics-server is a failed request through the server's node proxy,
    // one per node every 15 s (330/s at 5,000 nodes, as many as the Lease
    // renewals), load that measures the proxy and not the control loops.
    // One scrape an hour keeps it out of the measurement.
    let args: Vec<&str> = ["--disable-agent", "--metric-resolution=1h"]
        .into_iter()
        .chain(server_args.iter().copied())
        .collect();
    let server = KuboxServer::start(exe, &args).await;
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await?;
    let hollow = HollowNodes::start(
        client.clone(),
        HollowConfig {
            prefix: "hollow-".into(),
            count: nodes,
            zones,
        },
    )
    .await?;
    let node_api: Api<Node> = Api::all(client.clone());
    eventually(
        "the hollow nodes to register",
        Duration::from_secs(600),
        || async {
            let listed = node_api.list_metadata(&ListParams::default()).await.ok()?;
            (listed.items.len() >= nodes).then_some(())
        },
    )
    .await;
    Ok((server, client, hollow))
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let mut table = Table::new(&[
        "nodes",
        "pods",
        "workload",
        "pods/s (created → bound)",
        "all bound after",
        "latency p50",
        "latency p99",
        "server RSS after",
        "scheduler RSS before",
        "scheduler RSS after",
        "scheduler CPU",
        "server CPU",
        "bench CPU",
    ]);
    for &nodes in &opts.nodes {
        let server_args: &[&str] = if opts.apart {
            &["--disable-scheduler"]
        } else {
            &[]
        };
        let (server, client, _hollow) =
            hollow_cluster(&exe, nodes, opts.zones, server_args).await?;
        let scheduler = match opts.apart {
            true => {
                let scheduler = Apart::scheduler(&server, &[]).await;
                placing(&client).await?;
                Some(scheduler)
            }
            false => None,
        };
        let scheduler_usage = || scheduler.as_ref().and_then(Apart::pid).map(usage);
        // The server's and this process's CPU (the creators, the hollow
        // nodes and the watch timing binds) too: on a saturated machine
        // throughput follows the CPU a pod costs all of them.
        let server_usage = || server.pid().map_or((0, 0), usage);
        let own_cpu = || usage(std::process::id()).1;
        let seconds = |ticks: u64| format!("{:.1} s", ticks as f64 / USER_HZ);
        for workload in Workload::ALL {
            let before = scheduler_usage();
            let (server_0, own_0) = (server_usage().1, own_cpu());
            let m = measure(&client, workload, opts.pods, nodes).await?;
            let ((rss, server_1), own_1) = (server_usage(), own_cpu());
            let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
            let cells = match (before, scheduler_usage()) {
                (Some((rss_0, cpu_0)), Some((rss_1, cpu_1))) => {
                    [mib(rss_0), mib(rss_1), seconds(cpu_1 - cpu_0)]
                }
                _ => ["in the server".to_owned(), "".to_owned(), "".to_owned()],
            };
            let mut row = vec![
                nodes.to_string(),
                opts.pods.to_string(),
                workload.name().to_owned(),
                format!("{:.0}", m.rate),
                format!("{:.1} s", m.took.as_secs_f64()),
                format!("{:.0} ms", m.latencies.ms(0.5)),
                format!("{:.0} ms", m.latencies.ms(0.99)),
                mib(rss),
            ];
            row.extend(cells);
            row.push(seconds(server_1 - server_0));
            row.push(seconds(own_1 - own_0));
            table.row(row);
        }
    }
    Ok(table.render())
}
