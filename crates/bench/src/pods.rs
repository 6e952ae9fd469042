//! `kubox bench pods`: pods on one node of a real `kubox server` (scheduler,
//! node agent, container runtime): startup latency from create to Running
//! as a watch sees it, the server's memory and CPU with the pods running,
//! and what is left on the machine after many create/delete cycles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kubox_testkit::KuboxServer;

use crate::report::{Latencies, Table};

pub struct Options {
    pub pods: usize,
    pub cycles: usize,
    /// `kubox server --runtime`.
    pub runtime: String,
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
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
fn agent_mounts(server: &KuboxServer) -> usize {
    let dir = server.data_dir().join("agent").display().to_string();
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

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let server =
        KuboxServer::start(&exe, &["--node-name", "bench", "--runtime", &opts.runtime]).await;
    server.import_busybox();
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the server is not running"))?;
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

    let mut table = Table::new(&["measure", "value"]);
    let mut row = |k: &str, v: String| table.row(vec![k.to_owned(), v]);
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
        "server RSS, no pods",
        format!("{:.1} MiB", idle_rss as f64 / 1024.0),
    );
    row(
        &format!("server RSS, {} pods running", opts.pods),
        format!("{:.1} MiB", busy_rss as f64 / 1024.0),
    );
    row(
        "server's child processes' RSS (the embedded runtime's helper)",
        format!("{:.1} MiB", helper_rss as f64 / 1024.0),
    );
    row("server CPU, no pods", format!("{idle_cpu:.1} % of a core"));
    row(
        &format!("server CPU, {} pods running", opts.pods),
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
        "left behind: agent mounts",
        agent_mounts(&server).to_string(),
    );
    row("left behind: pod cgroups", pod_cgroups(&uids).to_string());
    Ok(table.render())
}
