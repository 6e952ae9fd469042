//! `kubox bench net`: the service proxy's programming latency (an
//! EndpointSlice change to its rules being in the kernel) with many
//! Services, and throughput through a ClusterIP against the pod's own
//! address, on a real node's pod network.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kubox_testkit::{KuboxServer, TestNet, eventually};
use serde_json::{Value, json};

use kubox_net::proxy::version;

use crate::report::{Latencies, Table};

pub struct Options {
    pub services: usize,
    pub endpoints: usize,
    pub changes: usize,
    /// The size of the file downloaded for throughput.
    pub megabytes: usize,
}

const TIMEOUT: Duration = Duration::from_secs(300);

fn slice(svc: usize, endpoints: usize, generation: usize) -> EndpointSlice {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            // A fresh address per change: 10.99.<svc / 256>.<...>, never routed.
            let n = (generation * endpoints + e) % 250 + 1;
            json!({"addresses": [format!("10.{}.{}.{n}", 96 + svc / 65536 % 4, svc / 256 % 256)],
                   "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("bench-{svc}"),
            "labels": {"kubernetes.io/service-name": format!("bench-{svc}"),
                       "endpointslice.kubernetes.io/managed-by": "kubox-bench"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .expect("a valid slice")
}

async fn applied(proxy: &kubox_net::Proxy, version: u64) -> anyhow::Result<()> {
    let mut applied = proxy.applied();
    tokio::time::timeout(TIMEOUT, applied.wait_for(|v| *v >= version)).await??;
    Ok(())
}

/// Deletes the bench proxy's nft table however the bench ends.
struct DeleteTable(String);

impl Drop for DeleteTable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .output();
    }
}

/// Services (without selectors, so no controller touches their slices)
/// with one slice each, then one slice changed at a time.
async fn programming(opts: &Options, table: &mut Table) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let server = KuboxServer::start(&exe, &["--disable-agent"]).await;
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await?;
    let names = TestNet::claim();
    let net = kubox_net::NetConfig {
        cluster_cidr: "10.96.0.0/14".parse()?,
        service_cidr: kubox_apiserver::allocator::SERVICE_RANGE.parse()?,
        bridge: names.bridge(),
        nft_prefix: names.nft_prefix(),
        vxlan_vni: 1,
        vxlan_port: 8472,
    };
    let _rules = DeleteTable(net.proxy_table());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let created = Instant::now();
    let writes = futures::stream::iter(0..opts.services).map(|i| {
        let (services, slices) = (services.clone(), slices.clone());
        let endpoints = opts.endpoints;
        async move {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("bench-{i}")},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
            }))?;
            services.create(&PostParams::default(), &svc).await?;
            let s = slices
                .create(&PostParams::default(), &slice(i, endpoints, 0))
                .await?;
            anyhow::Ok(version(&s))
        }
    });
    let versions: Vec<u64> = writes
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let last = versions.into_iter().max().unwrap_or(0);
    let objects = created.elapsed();
    let started = Instant::now();
    let proxy = kubox_net::Proxy::start(
        client,
        kubox_net::ProxyConfig {
            net,
            node_name: "bench".into(),
            sync_period: Duration::from_secs(30),
        },
    );
    applied(&proxy, last).await?;
    let first = started.elapsed();
    let mut latencies = Latencies::default();
    let mut current: BTreeMap<usize, EndpointSlice> = BTreeMap::new();
    for change in 0..opts.changes {
        let i = (change * 7919) % opts.services;
        let stored = match current.remove(&i) {
            Some(s) => s,
            None => slices.get(&format!("bench-{i}")).await?,
        };
        let mut next = slice(i, opts.endpoints, change + 1);
        next.metadata.resource_version = stored.metadata.resource_version.clone();
        let t0 = Instant::now();
        let written = slices
            .replace(&format!("bench-{i}"), &PostParams::default(), &next)
            .await?;
        applied(&proxy, version(&written)).await?;
        latencies.record(t0.elapsed());
        current.insert(i, written);
    }
    drop(proxy);
    table.row(vec![
        format!("{} Services × {} endpoints", opts.services, opts.endpoints),
        format!("{:.1} s", objects.as_secs_f64()),
        format!("{:.2} s", first.as_secs_f64()),
        format!("{:.1}", latencies.ms(0.5)),
        format!("{:.1}", latencies.ms(0.99)),
        latencies.len().to_string(),
    ]);
    Ok(())
}

/// Bytes per second of downloading `url` (`host:port`, path `/big`) from here.
fn download(addr: &str) -> anyhow::Result<f64> {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.write_all(b"GET /big HTTP/1.0\r\n\r\n")?;
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Seconds `wget` takes inside `pod` for `url`, from busybox `time`.
fn wget_seconds(server: &KuboxServer, pod: &str, url: &str) -> anyhow::Result<f64> {
    let out = server.kubectl(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        &format!("time wget -qO /dev/null {url}"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let real = stderr
        .lines()
        .find_map(|l| l.strip_prefix("real\t"))
        .ok_or_else(|| anyhow::anyhow!("no time from wget: {stderr}"))?;
    let (m, s) = real
        .trim()
        .trim_end_matches('s')
        .split_once("m ")
        .unwrap_or(("0", real));
    Ok(m.parse::<f64>()? * 60.0 + s.trim().parse::<f64>()?)
}

fn pod_ip(server: &KuboxServer, pod: &str) -> String {
    server.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
}

/// Requests per second wrk sustains against `url` (busybox httpd closes
/// each connection, so every request is a new connection through NAT).
fn wrk(url: &str) -> anyhow::Result<f64> {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c16", "-d5s", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate from wrk: {text}"))
}

async fn throughput(opts: &Options, table: &mut Table) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let server = KuboxServer::start(&exe, &["--node-name", "bench"]).await;
    server.import_busybox();
    let dir = server.data_dir();
    let sink = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sink", "labels": {"app": "sink"}},
        "spec": {"containers": [{
            "name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", format!("mkdir /www && echo ok > /www/small && dd if=/dev/zero of=/www/big bs=1M count={} 2>/dev/null && exec httpd -f -p 8080 -h /www", opts.megabytes)],
            "readinessProbe": {"httpGet": {"path": "/small", "port": 8080}, "periodSeconds": 1},
        }]},
    });
    let client_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {"containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]},
    });
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sink"},
        "spec": {"selector": {"app": "sink"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    for (name, obj) in [("sink", sink), ("client", client_pod), ("svc", svc)] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, obj.to_string())?;
        server.kubectl_ok(&["apply", "-f", file.to_str().unwrap_or_default()]);
    }
    let ready = |pod: &'static str| {
        let server = &server;
        move || async move {
            let out = server.kubectl(&[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (out.stdout == b"True").then_some(())
        }
    };
    eventually("the sink is ready", TIMEOUT, ready("sink")).await;
    eventually("the client runs", TIMEOUT, ready("client")).await;
    let direct = format!("{}:8080", pod_ip(&server, "sink"));
    let cluster = format!(
        "{}:80",
        server.kubectl_ok(&["get", "service", "sink", "-o", "jsonpath={.spec.clusterIP}"])
    );
    eventually("the ClusterIP answers", TIMEOUT, || async {
        download(&cluster).ok()
    })
    .await;
    let mb = |bps: f64| bps / 1e6;
    let best = |f: &dyn Fn() -> anyhow::Result<f64>| -> anyhow::Result<f64> {
        let mut best = 0f64;
        for _ in 0..3 {
            best = best.max(f()?);
        }
        Ok(best)
    };
    let bytes = (opts.megabytes << 20) as f64;
    let measures: [(&str, f64, f64); 3] = [
        (
            "node → pod, download MB/s",
            mb(best(&|| download(&direct))?),
            mb(best(&|| download(&cluster))?),
        ),
        (
            "pod → pod, download MB/s",
            mb(best(&|| {
                Ok(bytes / wget_seconds(&server, "client", &format!("http://{direct}/big"))?)
            })?),
            mb(best(&|| {
                Ok(bytes / wget_seconds(&server, "client", &format!("http://{cluster}/big"))?)
            })?),
        ),
        (
            "node → pod, new connections/s (wrk)",
            wrk(&format!("http://{direct}/small"))?,
            wrk(&format!("http://{cluster}/small"))?,
        ),
    ];
    for (what, d, c) in measures {
        table.row(vec![
            what.to_owned(),
            format!("{d:.0}"),
            format!("{c:.0}"),
            format!("{:.2}", c / d),
        ]);
    }
    Ok(())
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let mut programming_table = Table::new(&[
        "rules for",
        "objects written in",
        "first sync",
        "change p50 ms",
        "change p99 ms",
        "changes",
    ]);
    programming(&opts, &mut programming_table).await?;
    let mut throughput_table = Table::new(&["path", "pod IP", "ClusterIP", "ratio"]);
    throughput(&opts, &mut throughput_table).await?;
    Ok(format!(
        "{}\n{}",
        programming_table.render(),
        throughput_table.render()
    ))
}
