//! `kubox bench failover`: three `kubox server`s on a three-member etcd;
//! each trial kills (SIGKILL) the server leading the controller manager
//! and times, from the kill, until another server holds the Lease and until
//! its controllers act (a Deployment created right after the kill gets its
//! ReplicaSet). The killed server then starts again and rejoins.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, PostParams};
use kubox_testkit::{EtcdCluster, KuboxServer};

use crate::report::{Latencies, Table};

pub struct Options {
    pub trials: usize,
}

const LEASE: &str = "kube-controller-manager";
/// How long one trial may take before the benchmark gives up.
const TRIAL_LIMIT: Duration = Duration::from_secs(120);

async fn client(server: &KuboxServer) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let lease = leases.get_opt(LEASE).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Polls `check` every 20 ms until it holds, within [`TRIAL_LIMIT`].
async fn until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TRIAL_LIMIT;
    while !check().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let etcd = EtcdCluster::start(3).await;
    let endpoints = etcd.endpoints();
    let args = [
        "--datastore",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--token",
        "kubox-bench-failover",
        "--disable-agent",
        "--disable-dns",
    ];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(KuboxServer::start(&exe, &args).await);
    }
    let (mut takeover, mut acting) = (Latencies::default(), Latencies::default());
    for trial in 0..opts.trials {
        let probe = client(&servers[trial % 3]).await?;
        let leases: Api<Lease> = Api::namespaced(probe, "kube-system");
        until("a controller manager leader", || async {
            holder(&leases).await.is_some()
        })
        .await?;
        let old = holder(&leases).await.unwrap_or_default();
        let leader = servers
            .iter()
            .position(|s| {
                std::fs::read_to_string(s.data_dir().join("server.log"))
                    .is_ok_and(|log| log.contains(&old))
            })
            .ok_or_else(|| anyhow::anyhow!("no server logged leading as {old}"))?;
        let other = client(&servers[(leader + 1) % 3]).await?;
        let leases: Api<Lease> = Api::namespaced(other.clone(), "kube-system");
        let deployments: Api<Deployment> = Api::namespaced(other.clone(), "default");
        let replicasets: Api<ReplicaSet> = Api::namespaced(other, "default");
        let name = format!("failover-{trial}");
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                },
            },
        }))?;

        servers[leader].kill();
        let killed = Instant::now();
        deployments
            .create(&PostParams::default(), &deployment)
            .await?;
        until("another leader", || async {
            holder(&leases).await.is_some_and(|h| h != old)
        })
        .await?;
        takeover.record(killed.elapsed());
        until("the new leader's ReplicaSet", || async {
            replicasets
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| {
                    l.items.iter().any(|rs| {
                        rs.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with(&format!("{name}-")))
                    })
                })
        })
        .await?;
        acting.record(killed.elapsed());
        servers[leader].restart().await;
    }
    let mut table = Table::new(&["from the leader's kill to", "trials", "p50 s", "max s"]);
    for (what, lat) in [
        ("another server holding the Lease", &takeover),
        ("its controllers acting (ReplicaSet created)", &acting),
    ] {
        table.row(vec![
            what.to_owned(),
            opts.trials.to_string(),
            format!("{:.2}", lat.ms(0.5) / 1000.0),
            format!("{:.2}", lat.ms(1.0) / 1000.0),
        ]);
    }
    Ok(table.render())
}
