//! `kubox bench pods`: pods on one node of a real `kubox server` (scheduler,
//! node agent, container runtime): startup latency from create to Running
//! as a watch sees it, the server's memory and CPU with the pods running,
//! and what is left on the machine after many create/delete cycles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kubox_testkit::{Hosts, KuboxServer, import_busybox};

use crate::report::{Latencies, Table};

pub struct Options {
    pub pods: usize,
    pub cycles: usize,
    /// `kubox server --runtime`.
    pub runtime: String,
    /// Run the node agent as `kubox agent` on a host of its own (a network
    /// namespace) rather than inside the server, so its memory and CPU are
    /// its own.
    pub agent_apart: bool,
}

pub(crate) fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
        }
    }))
    .expect("a valid pod")
}

/// Resident memory (KiB) and CPU time (clock ticks) of a process.
pub(crate) fn usage(pid: u32) -> (u64, u64) {
    let rss = status_kib(pid, "VmRSS:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    // Parsed in place: the state field (a letter) counts too.
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let cpu = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    (rss, cpu)
}

/// Anonymous resident memory (KiB) of a process: what it allocated, without
/// the pages of its binary and libraries.
fn anon_rss(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// A field in KiB of a process's `/proc/PID/status`; 0 once it is gone.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The processes whose parent is `pid`, containers (orphans the agent
/// adopted as a subreaper) left out: those in a cgroup of the node's pods.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|f| f.parse::<u32>().ok());
            let cgroups = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
            parent == Some(pid) && !cgroups.contains("/kubepods/")
        })
        .collect()
}

/// Linux reports CPU times in USER_HZ ticks, 100 a second on every architecture.
pub(crate) const USER_HZ: f64 = 100.0;

/// CPU use of a process over `window`, in percent of one core.
async fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let (_, before) = usage(pid);
    tokio::time::sleep(window).await;
    let (_, after) = usage(pid);
    (after - before) as f64 / USER_HZ / window.as_secs_f64() * 100.0
}

/// Mounts under the node agent's directory: namespaces and root filesystems still held.
fn agent_mounts(data_dir: &std::path::Path) -> usize {
    let dir = data_dir.join("agent").display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&dir))
        .count()
}

/// The memory cgroups of these pods that still exist.
fn pod_cgroups(uids: &[String]) -> usize {
    uids.iter()
        .filter(|uid| {
            ["", "besteffort/", "burstable/"].iter().any(|qos| {
                std::path::Path::new(&format!("/sys/fs/cgroup/memory/kubepods/{qos}pod{uid}"))
                    .exists()
            })
        })
        .count()
}

pub(crate) async fn running(api: &Api<Pod>, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = api
            .list(&ListParams::default().labels("bench=pods"))
            .await?;
        let up = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if up >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {up} of {count} pods running after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gone(api: &Api<Pod>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api
        .list(&ListParams::default().labels("bench=pods"))
        .await?
        .items
        .is_empty()
    {
        anyhow::ensure!(Instant::now() < deadline, "pods still there after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The server the pods are created on, and the node agent measured.
pub(crate) struct Node {
    pub(crate) server: KuboxServer,
    /// The agent's own host when it runs apart, held for as long as the
    /// bench runs; dropped after the server.
    _hosts: Option<Hosts>,
    /// The process that runs the node agent: the server's, or its own.
    pub(crate) pid: u32,
    /// The agent's data directory.
    data_dir: std::path::PathBuf,
}

/// Starts a server with node `bench`, whose agent runs inside it or, with
/// `agent_apart`, as `kubox agent` on a host of its own; busybox imported.
pub(crate) async fn start(
    exe: &std::path::Path,
    runtime: &str,
    agent_apart: bool,
) -> anyhow::Result<Node> {
    if !agent_apart {
        let server = KuboxServer::start(exe, &["--node-name", "bench", "--runtime", runtime]).await;
        server.import_busybox();
        let pid = server
            .pid()
            .ok_or_else(|| anyhow::anyhow!("the server is not running"))?;
        let data_dir = server.data_dir().to_owned();
        return Ok(Node {
            server,
            _hosts: None,
            pid,
            data_dir,
        });
    }
    let mut hosts = Hosts::new(1);
    let gateway = hosts.gateway();
    let server = KuboxServer::start(exe, &["--disable-agent", "--bind-address", &gateway]).await;
    let token = server.join_token().await;
    let url = format!("https://{gateway}:{}", server.port());
    let host = hosts.host(0);
    let data_dir = host.data_dir().to_owned();
    import_busybox(exe, &data_dir, "docker.io/library/busybox:latest");
    let mut args = server.agent_join_args(&url, &token, host.ip(), "bench", &data_dir);
    args.extend(["--runtime".to_owned(), runtime.to_owned()]);
    host.spawn(exe, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = host
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
    server.wait_node_ready("bench").await;
    Ok(Node {
        server,
        _hosts: Some(hosts),
        pid,
        data_dir,
    })
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let node = start(&exe, &opts.runtime, opts.agent_apart).await?;
    let (server, pid) = (&node.server, node.pid);
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    // The node is ready once its first heartbeat lands; give it a moment to settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = usage(pid);
    let idle_cpu = cpu_percent(pid, Duration::from_secs(5)).await;

    let mut watch = api
        .watch(&WatchParams::default().labels("bench=pods"), "0")
        .await?
        .boxed();
    // The watch is read while the pods are created, so each event's time
    // is when it arrived, not when the last create returned.
    let started = Instant::now();
    let creating = tokio::spawn({
        let api = api.clone();
        let pods = opts.pods;
        async move {
            let mut created = Vec::new();
            for i in 0..pods {
                let name = format!("bench-{i}");
                let at = Instant::now();
                let made = api.create(&PostParams::default(), &pod(&name)).await?;
                created.push((name, at, made.metadata.uid));
            }
            anyhow::Ok(created)
        }
    });
    let mut bound_at: HashMap<String, Instant> = HashMap::new();
    let mut running_at: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while running_at.len() < opts.pods {
        let event = tokio::time::timeout_at(deadline.into(), watch.next()).await;
        let Ok(Some(event)) = event else {
            anyhow::bail!(
                "only {} of {} pods running after 120 s",
                running_at.len(),
                opts.pods
            );
        };
        let WatchEvent::Modified(p) = event? else {
            continue;
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        let now = Instant::now();
        if p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
            bound_at.entry(name.clone()).or_insert(now);
        }
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            running_at.entry(name).or_insert(now);
        }
    }
    let mut uids = Vec::new();
    let mut latencies = Latencies::default();
    // Create to bound: the scheduler's share of the start, the rest is the agent's.
    let mut bound = Latencies::default();
    for (name, at, uid) in creating.await?? {
        uids.extend(uid);
        latencies.record(running_at[&name] - at);
        if let Some(b) = bound_at.get(&name) {
            bound.record(*b - at);
        }
    }
    let all_running = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (busy_rss, _) = usage(pid);
    let busy_anon = anon_rss(pid);
    let helper_rss: u64 = children(pid).into_iter().map(|c| usage(c).0).sum();
    let busy_cpu = cpu_percent(pid, Duration::from_secs(10)).await;

    let delete_started = Instant::now();
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=pods"),
    )
    .await?;
    gone(&api).await?;
    let deleted = delete_started.elapsed();

    // Create/delete cycles, then count what the node holds: nothing, when all is well.
    let cycles_started = Instant::now();
    for i in 0..opts.cycles {
        let made = api
            .create(&PostParams::default(), &pod(&format!("cycle-{i}")))
            .await?;
        uids.extend(made.metadata.uid);
        if let Err(e) = running(&api, 1).await {
            let stuck = api
                .get(&format!("cycle-{i}"))
                .await
                .map(|p| serde_json::to_string(&p.status))
                .ok();
            let log =
                std::fs::read_to_string(server.data_dir().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            anyhow::bail!(
                "{e}: cycle {i}: {stuck:?}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        api.delete(&format!("cycle-{i}"), &DeleteParams::default())
            .await?;
        gone(&api).await?;
    }
    let cycles_took = cycles_started.elapsed();
    // A pod leaves the API once its containers are stopped; its mounts and
    // cgroup go after that, as upstream's kubelet tidies them. Count what
    // is still there once that has had its time.
    let tidy_started = Instant::now();
    let leftovers = || (agent_mounts(&node.data_dir), pod_cgroups(&uids));
    while leftovers() != (0, 0) && tidy_started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tidied = tidy_started.elapsed();
    let (mounts_left, cgroups_left) = leftovers();

    let mut table = Table::new(&["measure", "value"]);
    let mut row = |k: &str, v: String| table.row(vec![k.to_owned(), v]);
    let who = if opts.agent_apart {
        "agent (own process)"
    } else {
        "server"
    };
    row("runtime", opts.runtime.clone());
    row("pods", opts.pods.to_string());
    row(
        "startup p50 (create → Running, watch)",
        format!("{:.0} ms", latencies.ms(0.5)),
    );
    row("startup p99", format!("{:.0} ms", latencies.ms(0.99)));
    row(
        "of which create → bound p50 / p99",
        format!("{:.0} ms / {:.0} ms", bound.ms(0.5), bound.ms(0.99)),
    );
    row(
        "all pods running after",
        format!("{:.2} s", all_running.as_secs_f64()),
    );
    row(
        &format!("{who} RSS, no pods"),
        format!("{:.1} MiB", idle_rss as f64 / 1024.0),
    );
    row(
        &format!("{who} RSS, {} pods running", opts.pods),
        format!("{:.1} MiB", busy_rss as f64 / 1024.0),
    );
    row(
        "of which anonymous (heap, stacks) / file-backed (the binary's pages)",
        format!(
            "{:.1} MiB / {:.1} MiB",
            busy_anon as f64 / 1024.0,
            busy_rss.saturating_sub(busy_anon) as f64 / 1024.0
        ),
    );
    row(
        &format!("{who}'s child processes' RSS (the embedded runtime's helper)"),
        format!("{:.1} MiB", helper_rss as f64 / 1024.0),
    );
    row(
        &format!("{who} CPU, no pods"),
        format!("{idle_cpu:.1} % of a core"),
    );
    row(
        &format!("{who} CPU, {} pods running", opts.pods),
        format!("{busy_cpu:.1} % of a core"),
    );
    row(
        &format!("delete {} pods", opts.pods),
        format!("{:.2} s", deleted.as_secs_f64()),
    );
    row(
        &format!("{} create/run/delete cycles", opts.cycles),
        format!("{:.1} s", cycles_took.as_secs_f64()),
    );
    row(
        "last pod's mounts and cgroup gone after it left the API",
        format!("{:.2} s", tidied.as_secs_f64()),
    );
    row(
        "left behind after 30 s: agent mounts",
        mounts_left.to_string(),
    );
    row(
        "left behind after 30 s: pod cgroups",
        cgroups_left.to_string(),
    );
    Ok(table.render())
}
