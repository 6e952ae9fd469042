//! What the control-plane components share, in `kubox server` and when
//! run apart (`kubox scheduler`, `kubox controller-manager`): leader
//! election's flags and the plain listener of a component's own
//! `/metrics`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args};
use kubox_client::leader;

use crate::server::parse_duration;

/// Upstream's `--leader-elect-*` timing flags.
#[derive(Args, Clone)]
pub struct LeaderElectArgs {
    /// How long the scheduler's and the controller manager's leader lease
    /// lasts without renewal before another candidate takes it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up leading.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often leaders renew and candidates try to acquire.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
}

impl LeaderElectArgs {
    pub fn timing(&self) -> leader::Timing {
        leader::Timing {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }
}

/// A component apart's `--leader-elect` and its timing.
#[derive(Args)]
pub struct ElectArgs {
    /// Act only while holding the component's Lease (`--leader-elect=false`:
    /// always, for a cluster with one of it).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    leader_elect: bool,
    #[command(flatten)]
    leader: LeaderElectArgs,
}

impl ElectArgs {
    /// The election's timing, unless the component runs unelected.
    pub fn elect(&self) -> Option<leader::Timing> {
        self.leader_elect.then(|| self.leader.timing())
    }
}

/// Serves `metrics` (and the health checks) over plain HTTP on
/// `bind:port`, until dropped; nothing when `port` is 0.
pub async fn serve_metrics(
    component: &str,
    bind: IpAddr,
    port: u16,
    metrics: Arc<kubox_prometheus::Registry>,
) -> anyhow::Result<Option<kubox_client::Tasks>> {
    if port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(bind, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    println!(
        "kubox {component}: metrics on http://{}/metrics",
        listener.local_addr()?
    );
    Ok(Some(kubox_client::Tasks::new(vec![tokio::spawn(
        kubox_prometheus::serve(listener, metrics),
    )])))
}

/// How long a stopping component tries to give up its leader lease.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
