//! The ingress controller's flags and start-up, shared by `kubox server`
//! (which runs one on its node) and `kubox ingress` (one on its own,
//! against a running cluster).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kubox_ingress::{Config, IngressController};

#[derive(Args, Clone)]
pub struct IngressArgs {
    /// The ingress controller's plain HTTP port.
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// The ingress controller's HTTPS port.
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// Ingress class names served besides the IngressClasses naming kubox's
    /// controller; `nginx` lets manifests written for ingress-nginx work
    /// unchanged. Empty leaves them to a real ingress-nginx.
    #[arg(long, value_delimiter = ',', default_value = "nginx")]
    ingress_extra_classes: Vec<String>,
}

/// Starts the controller with `kubeconfig`'s identity on `bind`'s ports,
/// reporting `node_ip` as the Ingresses' address.
pub async fn start(
    args: &IngressArgs,
    kubeconfig: &Path,
    bind: IpAddr,
    node_ip: IpAddr,
) -> anyhow::Result<IngressController> {
    let (client, _) = kubox_client::connect(kubeconfig).await?;
    let config = Config {
        http: SocketAddr::new(bind, args.ingress_http_port),
        https: SocketAddr::new(bind, args.ingress_https_port),
        node_ip,
        extra_classes: args
            .ingress_extra_classes
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
    };
    IngressController::start(client, config)
        .await
        .context("starting the ingress controller")
}

#[derive(Args)]
pub struct StandaloneArgs {
    /// The controller's credentials and the API server to watch.
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The address written to Ingresses' status; the machine's by default.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    #[command(flatten)]
    ingress: IngressArgs,
}

/// `kubox ingress`: the ingress controller alone, until SIGTERM or Ctrl-C.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let node_ip = args.node_ip.unwrap_or_else(crate::agent::default_ip);
    let controller = start(&args.ingress, &args.kubeconfig, args.bind_address, node_ip).await?;
    println!(
        "kubox ingress: serving HTTP on {} and HTTPS on {}",
        controller.http_addr, controller.https_addr
    );
    crate::server::wait_for_shutdown().await
}
