//! `kubox bench controllers`: the controller manager's cost, run as its
//! own process (`kubox controller-manager`, with `kubox scheduler` beside
//! it) against a server running neither: Deployments totalling N pods on
//! hollow nodes, the resident memory and CPU seconds of each process from
//! an empty cluster until every replica is available, then at idle.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, PostParams};
use kubox_testkit::{Apart, eventually};

use crate::pods::{USER_HZ, usage};
use crate::report::Table;

pub struct Options {
    /// Pods in all, over Deployments of `per_deployment` replicas.
    pub pods: usize,
    pub per_deployment: usize,
    pub nodes: usize,
    /// How long the converged cluster is watched idle.
    pub idle: Duration,
}

const NAMESPACE: &str = "default";
const POLL: Duration = Duration::from_secs(1);

fn deployment(name: &str, replicas: usize) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}
            }
        }
    }))?)
}

/// A process whose resident memory is sampled while converging, for its peak.
struct Watched {
    name: &'static str,
    pid: u32,
    peak: u64,
}

impl Watched {
    /// Resident memory (KiB) and CPU time (ticks) now.
    fn usage(&mut self) -> (u64, u64) {
        let (rss, cpu) = usage(self.pid);
        self.peak = self.peak.max(rss);
        (rss, cpu)
    }
}

fn all(watched: &mut [Watched]) -> Vec<(u64, u64)> {
    watched.iter_mut().map(Watched::usage).collect()
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn seconds(ticks: u64) -> String {
    format!("{:.1} s", ticks as f64 / USER_HZ)
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let (server, client, _hollow) = crate::scheduler::hollow_cluster(
        &exe,
        opts.nodes,
        1,
        &["--disable-scheduler", "--disable-controllers"],
    )
    .await?;
    let controllers = Apart::controller_manager(&server, &[]).await;
    let scheduler = Apart::scheduler(&server, &[]).await;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    eventually(
        "the controller manager to lead (the default ServiceAccount)",
        Duration::from_secs(120),
        || async { sa.get_opt("default").await.ok().flatten() },
    )
    .await;
    // Start-up work (informers' first lists, per-namespace objects) settles.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut watched = [
        ("controller manager", controllers.pid()),
        ("scheduler", scheduler.pid()),
        ("kubox server (no scheduler, no controllers)", server.pid()),
    ]
    .map(|(name, pid)| Watched {
        name,
        pid: pid.unwrap_or_default(),
        peak: 0,
    });
    let before = all(&mut watched);

    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments = opts.pods.div_ceil(opts.per_deployment);
    let started = Instant::now();
    for i in 0..deployments {
        let replicas = opts.per_deployment.min(opts.pods - i * opts.per_deployment);
        api.create(
            &PostParams::default(),
            &deployment(&format!("d-{i}"), replicas)?,
        )
        .await?;
    }
    let limit = Duration::from_secs(600).max(Duration::from_millis(opts.pods as u64 * 100));
    loop {
        all(&mut watched);
        let available: i32 = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|d| d.status.as_ref()?.available_replicas)
            .sum();
        if available as usize >= opts.pods {
            break;
        }
        if started.elapsed() > limit {
            anyhow::bail!(
                "{available} of {} pods available after {limit:?}",
                opts.pods
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let converged = started.elapsed();
    let converging = all(&mut watched);
    tokio::time::sleep(opts.idle).await;
    let idle = all(&mut watched);

    let mut table = Table::new(&[
        "process",
        "RSS before",
        "RSS peak",
        "RSS converged",
        "CPU to converge",
        "RSS idle after",
        "CPU idle",
    ]);
    for (i, w) in watched.iter().enumerate() {
        let ((rss_0, cpu_0), (rss_1, cpu_1), (rss_2, cpu_2)) = (before[i], converging[i], idle[i]);
        table.row(vec![
            w.name.to_owned(),
            mib(rss_0),
            mib(w.peak),
            mib(rss_1),
            seconds(cpu_1 - cpu_0),
            mib(rss_2),
            format!(
                "{:.1}% of a core",
                (cpu_2 - cpu_1) as f64 / USER_HZ / opts.idle.as_secs_f64() * 100.0
            ),
        ]);
    }
    Ok(format!(
        "{} pods in {deployments} Deployments on {} hollow nodes: all available {:.1} s after the first was created; idle window {} s.\n\n{}",
        opts.pods,
        opts.nodes,
        converged.as_secs_f64(),
        opts.idle.as_secs(),
        table.render()
    ))
}
