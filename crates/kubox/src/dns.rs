//! Cluster DNS in `kubox server`: where it listens, what it forwards to,
//! and the `kube-dns` Service pods reach it through.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct DnsArgs {
    /// The port cluster DNS answers on (UDP and TCP); the `kube-dns` Service forwards 53 to it.
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// Where cluster DNS listens: by default the node's address or, when
    /// that is loopback (which pods cannot be forwarded to), the address of
    /// the node's pod bridge.
    #[arg(long)]
    dns_bind_address: Option<IpAddr>,
    /// Resolvers (`ip` or `ip:port`) for names outside the cluster; by default
    /// the nameservers of --resolv-conf.
    #[arg(long = "dns-upstream", value_delimiter = ',', value_parser = upstream)]
    dns_upstreams: Vec<SocketAddr>,
    /// Run no cluster DNS (and create no `kube-dns` Service).
    #[arg(long)]
    disable_dns: bool,
}

fn upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address (ip or ip:port)"))
}

/// Starts cluster DNS in the background once its address is known,
/// publishes the `kube-dns` Service and announces the address on the
/// server's lease, from which the API servers write the Service's
/// endpoints for all live servers. The task holds the DNS server until
/// aborted.
pub async fn start(
    args: &DnsArgs,
    agent: &crate::agent::AgentArgs,
    node: Option<&crate::agent::Node>,
    server: &kubox_apiserver::ApiServer,
) -> anyhow::Result<Option<kubox_client::Tasks>> {
    if args.disable_dns {
        return Ok(None);
    }
    let kubeconfig = server
        .component_kubeconfig("dns", "system:serviceaccount:kube-system:coredns", &[])
        .context("writing cluster DNS's credentials")?;
    let (client, _) = kubox_client::connect(&kubeconfig).await?;
    let domain = kubox_dns::domain_name(&agent.cluster_domain)?;
    let upstreams = if args.dns_upstreams.is_empty() {
        kubox_dns::ResolvConf::read(&agent.resolv_conf)
            .nameservers
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    } else {
        args.dns_upstreams.clone()
    };
    let node_ip = crate::agent::node_ip(agent);
    let network = node.map(|n| n.network.clone());
    let port = args.dns_port;
    let bind = args.dns_bind_address;
    let cluster_ip = agent.cluster_dns;
    let announcer = server.announcer();
    let task = tokio::spawn(async move {
        let ip = match (bind, network) {
            (Some(ip), _) => ip,
            (None, Some(network)) if node_ip.is_loopback() => match network.pod_range().await {
                Some(range) => IpAddr::V4(kubox_net::gateway(&range)),
                None => return,
            },
            (None, _) => node_ip,
        };
        let config = kubox_dns::Config {
            domain,
            listen: SocketAddr::new(ip, port),
            upstreams,
        };
        let server = match kubox_dns::DnsServer::start(client.clone(), config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cluster DNS: {e}");
                return;
            }
        };
        // Pods are sent to an address of the node: one they can reach.
        let endpoint = if server.addr().ip().is_unspecified() {
            SocketAddr::new(node_ip, server.addr().port())
        } else {
            server.addr()
        };
        let mut wait = Duration::from_millis(200);
        while let Err(e) =
            kubox_dns::publish_service(client.clone(), cluster_ip, endpoint.port()).await
        {
            tracing::warn!("publishing the kube-dns Service: {e}");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        announcer
            .announce(kubox_apiserver::DNS_ADDRESS, endpoint.to_string())
            .await;
        std::future::pending::<()>().await;
        drop(server);
    });
    Ok(Some(kubox_client::Tasks::new(vec![task])))
}
