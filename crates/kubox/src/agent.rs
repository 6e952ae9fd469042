//! The node agent's flags and start-up, shared by `kubox server` (which runs
//! an agent for its own node) and `kubox agent` (a node that joins a
//! running cluster with a kubeconfig). Each node also runs its pod network
//! and its service proxy.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use clap::Args;
use kubox_agent::runtime::{ContainerRuntime, Embedded, RuntimeCli};
use kubox_agent::{Agent, AgentConfig, node_labels};

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// The node's name; the machine's hostname by default.
    #[arg(long)]
    node_name: Option<String>,
    /// The address other nodes and the API server reach this node at.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// The container runtime: `embedded`, youki's libcontainer built into
    /// kubox, or a runc-compatible binary by name on PATH or by path
    /// (`runc`, `crun`, `/usr/local/bin/runc`).
    #[arg(long, default_value = Embedded::NAME)]
    runtime: String,
    /// The node agent's HTTPS port (logs, exec), as kubelet's 10250.
    #[arg(long, default_value_t = 10250)]
    agent_port: u16,
    /// Registries (`host:port`) to pull from over plain HTTP; those on this machine always are.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// Run no node agent on this server: it schedules pods onto other nodes only.
    #[arg(long)]
    disable_agent: bool,
    /// The cluster DNS Service's address, which pods' resolv.conf names.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's resolv.conf: pods with dnsPolicy Default get it, and cluster
    /// DNS forwards to its nameservers.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
}

/// The agent's state directory under a data directory.
pub fn state_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("agent")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// The address the machine's default route leaves from; loopback when it has none.
pub fn default_ip() -> IpAddr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The runtime's version, from `--version`; `None` when it cannot run.
fn runtime_version(program: &str) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    Some(version)
}

pub fn node_name(args: &AgentArgs) -> String {
    args.node_name.clone().unwrap_or_else(hostname)
}

pub fn node_ip(args: &AgentArgs) -> IpAddr {
    args.node_ip.unwrap_or_else(default_ip)
}

/// What runs for one node; dropping it stops them (containers and rules stay).
pub struct Node {
    _agent: Agent,
    _proxy: kubox_net::Proxy,
    _balanced: Option<kubox_client::failover::Balanced>,
    pub network: std::sync::Arc<kubox_net::PodNetwork>,
}

/// Starts the node agent, its pod network and its service proxy with
/// `kubeconfig`'s identity, unless disabled.
pub async fn start(
    args: &AgentArgs,
    net: &crate::net::NetArgs,
    data_dir: &Path,
    kubeconfig: &Path,
    control_plane: bool,
) -> anyhow::Result<Option<Node>> {
    if args.disable_agent {
        return Ok(None);
    }
    kubox_agent::ensure_root().context("starting the node agent")?;
    let node_name = node_name(args);
    let state = state_dir(data_dir);
    let net_config = net.config()?;
    let IpAddr::V4(node_ipv4) = node_ip(args) else {
        anyhow::bail!("the pod network needs an IPv4 --node-ip");
    };
    let runtimes = state.join("runtime");
    let (runtime, runtime_version): (Box<dyn ContainerRuntime>, _) = if args.runtime
        == Embedded::NAME
    {
        let embedded =
            Embedded::start(&runtimes).context("starting the embedded container runtime")?;
        // Built into kubox, the runtime's version is kubox's.
        (
            Box::new(embedded),
            Some(env!("CARGO_PKG_VERSION").to_owned()),
        )
    } else {
        let version = runtime_version(&args.runtime);
        if version.is_none() {
            tracing::warn!(
                "container runtime {} not found: pods cannot run until it is installed (Debian: apt install runc)",
                args.runtime
            );
        }
        (Box::new(RuntimeCli::new(&args.runtime, &runtimes)), version)
    };
    // A server's own node talks to its own API server, which it goes down
    // with; a joined node reaches every server through its load balancer.
    let (client, kubeconfig, balanced) = if control_plane {
        let (client, kubeconfig) = kubox_client::connect(kubeconfig).await?;
        (client, kubeconfig, None)
    } else {
        let (client, kubeconfig, balanced) =
            kubox_client::failover::connect_balanced(kubeconfig).await?;
        (client, kubeconfig, Some(balanced))
    };
    // The agent's endpoint trusts the clients of the cluster CA its kubeconfig trusts.
    let client_ca_pem = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|pem| String::from_utf8(pem).ok())
        .context("the node kubeconfig names no certificate authority")?;
    let network = kubox_net::PodNetwork::start(
        client.clone(),
        kubox_net::PodNetConfig {
            net: net_config.clone(),
            node_name: node_name.clone(),
            node_ip: node_ipv4,
            state_dir: state.clone(),
        },
    )
    .await
    .context("starting the pod network")?;
    let proxy = kubox_net::Proxy::start(
        client.clone(),
        kubox_net::ProxyConfig {
            net: net_config,
            node_name: node_name.clone(),
            sync_period: net.proxy_sync_period,
        },
    );
    let agent = Agent::start(
        client,
        AgentConfig {
            labels: node_labels(&node_name),
            node_name,
            node_ip: IpAddr::V4(node_ipv4),
            state_dir: state,
            runtime,
            runtime_version,
            port: args.agent_port,
            client_ca_pem,
            insecure_registries: args.insecure_registries.clone(),
            network: network.clone(),
            dns: kubox_agent::dns::ClusterDns {
                servers: vec![args.cluster_dns],
                domain: args.cluster_domain.clone(),
                host_resolv_conf: args.resolv_conf.clone(),
            },
        },
    )
    .await
    .context("starting the node agent")?;
    Ok(Some(Node {
        _agent: agent,
        _proxy: proxy,
        _balanced: balanced,
        network,
    }))
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("credentials").required(true).args(["kubeconfig", "server", "uninstall"]))]
pub struct StandaloneArgs {
    /// The node's credentials and the API server to join.
    #[arg(long, conflicts_with_all = ["server", "token"])]
    kubeconfig: Option<PathBuf>,
    /// The API server to join with a join token (`https://HOST:6443`).
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// The join token `kubox server` printed or `kubox token create` made.
    #[arg(long, env = "KUBOX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Remove what this node made (its network, as `kubox uninstall`, and
    /// the credentials it joined with), after `kubectl delete node`.
    #[arg(long)]
    uninstall: bool,
    /// Register this many hollow nodes instead of a real one, as kubemark
    /// and kwok do: simulated nodes whose pods are reported running without
    /// containers. Their credentials must allow writing any Node and Pod
    /// status (an admin kubeconfig).
    #[arg(long, value_name = "N", requires = "kubeconfig")]
    hollow: Option<usize>,
    /// Hollow nodes are named `{prefix}{index}`.
    #[arg(long, default_value = "hollow-", requires = "hollow")]
    hollow_prefix: String,
    /// Spread hollow nodes over this many zones (`topology.kubernetes.io/zone=zone-{i}`).
    #[arg(long, default_value_t = 0, requires = "hollow")]
    hollow_zones: usize,
    /// Where the node keeps its state.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    net: crate::net::NetArgs,
}

/// `kubox agent`: one more node for a running cluster, until SIGTERM or Ctrl-C.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    if let (Some(count), Some(kubeconfig)) = (args.hollow, &args.kubeconfig) {
        let (client, _, _balanced) = kubox_client::failover::connect_balanced(kubeconfig).await?;
        let config = kubox_agent::hollow::HollowConfig {
            prefix: args.hollow_prefix,
            count,
            zones: args.hollow_zones,
        };
        let _nodes = kubox_agent::hollow::HollowNodes::start(client, config)
            .await
            .context("registering hollow nodes")?;
        println!("kubox agent: {count} hollow nodes running");
        return crate::server::wait_for_shutdown().await;
    }
    if args.uninstall {
        return uninstall(&args).await;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot use data directory {}", args.data_dir.display()))?;
    let name = node_name(&args.agent);
    let (Some(server), Some(token)) = (&args.server, &args.token) else {
        let kubeconfig = args
            .kubeconfig
            .as_deref()
            .context("--kubeconfig or --server")?;
        let _node = start(&args.agent, &args.net, &args.data_dir, kubeconfig, false).await?;
        println!("kubox agent: node {name} running");
        return crate::server::wait_for_shutdown().await;
    };
    let join = crate::join::Join {
        server: server.trim_end_matches('/').to_owned(),
        token: kubox_apiserver::bootstrap_token::JoinToken::parse(token)
            .map_err(|e| anyhow::anyhow!("--token: {e}"))?,
        node_name: name.clone(),
        state_dir: state_dir(&args.data_dir),
    };
    let shutdown = crate::server::wait_for_shutdown();
    tokio::pin!(shutdown);
    let mut renewed = false;
    loop {
        let kubeconfig = tokio::select! {
            k = join.credentials() => k,
            r = &mut shutdown => return r,
        };
        let node = match start(&args.agent, &args.net, &args.data_dir, &kubeconfig, false).await {
            Ok(node) => node,
            // The components just stopped may hold their port a moment longer.
            Err(e) if renewed => {
                tracing::warn!("restarting the node's components: {e:#}; retrying in 1s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        println!("kubox agent: node {name} running");
        tokio::select! {
            () = join.renew_when_due() => {}
            r = &mut shutdown => return r,
        }
        // The components' clients hold the old certificate: they start
        // again with the new one (pods and network stay as they are).
        drop(node);
        renewed = true;
        tracing::info!("restarting the node's components with the renewed certificate");
    }
}

/// `kubox agent --uninstall`: the node's network and join credentials go,
/// so the machine can join again afresh (under its name too, once the Node
/// is deleted).
async fn uninstall(args: &StandaloneArgs) -> anyhow::Result<()> {
    let state = state_dir(&args.data_dir);
    kubox_net::uninstall(&args.net.config()?, &state)
        .await
        .context("removing the node's network")?;
    for file in crate::join::CREDENTIALS {
        match std::fs::remove_file(state.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {file}"));
            }
            _ => {}
        }
    }
    println!("kubox agent: node network and credentials removed");
    Ok(())
}

/// Gives the server's own Node the control-plane role, as the server
/// rather than the node (as k3s's server does): NodeRestriction refuses a
/// node its own `node-role.kubernetes.io/*` labels.
pub async fn mark_control_plane(
    api: &kubox_apiserver::api::Api,
    node_name: &str,
) -> anyhow::Result<()> {
    let rt = api
        .registry
        .get("", "v1", "nodes")
        .context("nodes are not served")?;
    let target = kubox_apiserver::api::ObjectRef {
        rt,
        ns: None,
        name: node_name,
        subresource: None,
    };
    let patch = serde_json::json!({"metadata": {"labels": {CONTROL_PLANE_LABEL: ""}}});
    api.patch(
        target,
        kubox_apiserver::patch::PatchType::Merge,
        patch.to_string().as_bytes(),
        &kubox_apiserver::api::WriteOptions::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("labelling node {node_name}: {}", e.message))?;
    Ok(())
}

const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
