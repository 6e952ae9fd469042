//! The cluster network's flags, shared by `kubox server`, `kubox agent` and
//! `kubox uninstall`. Clusters sharing one network namespace (tests) tell
//! theirs apart by the bridge, the nft table prefix, the cluster CIDR and
//! the VXLAN network identifier.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;
use kubox_net::NetConfig;

#[derive(Args, Clone)]
pub struct NetArgs {
    /// Every pod address of the cluster; each node gets one range of it.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// The bridge pods are attached to (at most 12 characters: its VXLAN device is `<bridge>-vx`).
    #[arg(long, default_value = "kubox0", value_parser = bridge_name)]
    pub pod_bridge: String,
    /// The node's nft tables are `<prefix>-pods` (masquerade) and `<prefix>-proxy` (services).
    #[arg(long, default_value = "kubox")]
    pub nft_table_prefix: String,
    /// The VXLAN network identifier nodes reach each other's pods over.
    #[arg(long, default_value_t = 1)]
    pub vxlan_vni: u32,
    /// The UDP port of the VXLAN between nodes.
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    /// How often the service proxy checks that its rules are in place
    /// (a table deleted by hand comes back within this).
    #[arg(long, default_value = "30s", value_parser = crate::server::parse_duration)]
    pub proxy_sync_period: Duration,
}

fn bridge_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 12
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("{s:?}: 1 to 12 letters, digits, '-' or '_'"));
    }
    Ok(s.to_owned())
}

impl NetArgs {
    pub fn config(&self) -> anyhow::Result<NetConfig> {
        Ok(NetConfig {
            cluster_cidr: self.cluster_cidr.trunc(),
            service_cidr: kubox_apiserver::allocator::SERVICE_RANGE
                .parse()
                .context("the service range")?,
            bridge: self.pod_bridge.clone(),
            nft_prefix: self.nft_table_prefix.clone(),
            vxlan_vni: self.vxlan_vni,
            vxlan_port: self.vxlan_port,
        })
    }
}

#[derive(Args)]
pub struct UninstallArgs {
    /// The data directory of the server or agent whose network goes.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: std::path::PathBuf,
    #[command(flatten)]
    net: NetArgs,
}

/// `kubox uninstall`: removes the node's nft tables, bridge, veths, VXLAN
/// device and routes, and the pod network's records.
pub async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let state = crate::agent::state_dir(&args.data_dir);
    kubox_net::uninstall(&args.net.config()?, Path::new(&state))
        .await
        .context("removing the node's network")?;
    println!("kubox uninstall: network removed");
    Ok(())
}
