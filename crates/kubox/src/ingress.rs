//! The ingress controller's flags and start-up, shared by `kubox server`
//! (which runs one on its node) and `kubox ingress` (one on its own,
//! against a running cluster).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kubox_ingress::{AccessLog, Config, IngressController};

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
    /// Where the ingress controller writes a line per request, in
    /// ingress-nginx's format: a file, `-` for standard output, or empty
    /// for none.
    #[arg(long, default_value = "-")]
    ingress_access_log: String,
}

/// Starts the controller with `kubeconfig`'s identity on `bind`'s ports,
/// reporting `node_ip` as the Ingresses' address, with its metrics in
/// `metrics`.
pub async fn start(
    args: &IngressArgs,
    kubeconfig: &Path,
    bind: IpAddr,
    node_ip: IpAddr,
    status: kubox_ingress::Status,
    metrics: &kubox_prometheus::Registry,
) -> anyhow::Result<IngressController> {
    let (client, _) = kubox_client::connect(kubeconfig).await?;
    let config = Config {
        http: SocketAddr::new(bind, args.ingress_http_port),
        https: SocketAddr::new(bind, args.ingress_https_port),
        node_ip,
        status,
        extra_classes: args
            .ingress_extra_classes
            .iter()
            .filter(|c| !c.is_empty())
            .cloned()
            .collect(),
        access_log: match args.ingress_access_log.as_str() {
            "" => AccessLog::Off,
            "-" => AccessLog::Stdout,
            path => AccessLog::File(path.into()),
        },
    };
    IngressController::start(client, config, metrics)
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
    /// The plain HTTP port of its `/metrics` (ingress-nginx's 10254); 0 for none.
    #[arg(long, default_value_t = 10254)]
    metrics_port: u16,
    #[command(flatten)]
    ingress: IngressArgs,
}

/// `kubox ingress`: the ingress controller alone, until SIGTERM or Ctrl-C.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let node_ip = args.node_ip.unwrap_or_else(crate::agent::default_ip);
    let metrics = std::sync::Arc::new(kubox_prometheus::Registry::default());
    let controller = start(
        &args.ingress,
        &args.kubeconfig,
        args.bind_address,
        node_ip,
        kubox_ingress::Status::Node,
        &metrics,
    )
    .await?;
    let _metrics =
        crate::component::serve_metrics("ingress", args.bind_address, args.metrics_port, metrics)
            .await?;
    println!(
        "kubox ingress: serving HTTP on {} and HTTPS on {}",
        controller.http_addr, controller.https_addr
    );
    crate::server::wait_for_shutdown().await
}
