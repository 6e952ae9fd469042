//! The scheduler's start-up, shared by `kubox server` and `kubox
//! scheduler` (the scheduler alone, as kube-scheduler, against a running
//! cluster).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kubox_client::leader::{self, LeaderElection};

use crate::component::{ElectArgs, RELEASE_TIMEOUT};

/// The Lease the schedulers of a cluster elect their leader with.
const LEASE: &str = "kube-scheduler";

/// The scheduler running, or campaigning to; dropping it stops it.
pub struct Running {
    candidate: Option<leader::Candidate>,
    _alone: Option<kubox_scheduler::Scheduler>,
}

impl Running {
    /// Stops, giving up the lease if it held it.
    pub async fn stop(self) {
        if let Some(candidate) = self.candidate {
            candidate.release(RELEASE_TIMEOUT).await;
        }
    }
}

/// Starts a scheduler with `kubeconfig`'s identity, with its metrics in
/// `registry`. Elected, it acts only while it holds the
/// `kube-system/kube-scheduler` Lease, so one scheduler acts among all
/// of a cluster's, in servers or apart.
pub async fn start(
    kubeconfig: &Path,
    elect: Option<leader::Timing>,
    registry: &kubox_prometheus::Registry,
) -> anyhow::Result<Running> {
    let (client, _) = kubox_client::connect(kubeconfig).await?;
    let metrics = kubox_scheduler::Metrics::new(registry);
    let Some(timing) = elect else {
        return Ok(Running {
            candidate: None,
            _alone: Some(kubox_scheduler::Scheduler::start(client, metrics)),
        });
    };
    let election = LeaderElection::with_timing(
        client.clone(),
        "kube-system",
        LEASE,
        leader::identity(),
        timing,
    );
    let candidate = election.spawn(move || {
        let scheduler = kubox_scheduler::Scheduler::start(client.clone(), metrics.clone());
        async move {
            let _scheduler = scheduler;
            std::future::pending::<()>().await
        }
    });
    Ok(Running {
        candidate: Some(candidate),
        _alone: None,
    })
}

#[derive(Args)]
pub struct StandaloneArgs {
    /// The scheduler's credentials (`system:kube-scheduler`) and the API
    /// server it talks to.
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    leader: ElectArgs,
    /// The address of its metrics and health checks.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The plain HTTP port of /metrics, /healthz and /readyz
    /// (kube-scheduler's former insecure port, 10251); 0 for none.
    #[arg(long, default_value_t = 10251)]
    metrics_port: u16,
}

/// `kubox scheduler`: the scheduler alone, until SIGTERM or Ctrl-C.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(kubox_prometheus::Registry::default());
    let scheduler = start(&args.kubeconfig, args.leader.elect(), &metrics)
        .await
        .context("starting the scheduler")?;
    let _metrics =
        crate::component::serve_metrics("scheduler", args.bind_address, args.metrics_port, metrics)
            .await?;
    println!("kubox scheduler: running");
    crate::server::wait_for_shutdown().await?;
    scheduler.stop().await;
    Ok(())
}
