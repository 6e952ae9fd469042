//! The controller manager's flags and start-up, shared by `kubox server`
//! and `kubox controller-manager` (the control loops alone, as
//! kube-controller-manager, against a running cluster).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;
use kubox_controllers::{ControllerManager, SigningCa};

use crate::component::{ElectArgs, RELEASE_TIMEOUT};
use crate::server::parse_duration;

/// kube-controller-manager's flags that `kubox server` takes too.
#[derive(Args, Clone)]
pub struct ControllerArgs {
    /// The prefix length of each node's pod range within --cluster-cidr.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// How long a node may go silent (no Lease renewal, no status) before
    /// the node controller marks it unreachable and taints it.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// The longest a certificate signed for a CertificateSigningRequest
    /// lives (nodes rotate theirs at 70-90% of it).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    cluster_signing_duration: Duration,
    /// How often the HorizontalPodAutoscaler controller syncs each HPA.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// How long the HPA keeps the highest recent recommendation before
    /// scaling down (for HPAs without a scale-down behavior).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// How long after a pod starts its CPU samples may predate its readiness.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// How long after a pod starts its readiness may still change.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    horizontal_pod_autoscaler_initial_readiness_delay: Duration,
    /// The ratio of usage to target within which the HPA does not scale.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
}

/// What a controller manager is given besides its flags: by the server
/// from its data directory, apart from files named on the command line.
pub struct Inputs {
    pub cluster_cidr: Ipv4Net,
    /// Which controllers run, as `--controllers` takes them.
    pub controllers: Vec<String>,
    pub local_path_dir: PathBuf,
    /// The CA published to every namespace; the kubeconfig's when `None`.
    pub root_ca: Option<String>,
    pub signing_ca: Option<SigningCa>,
    pub service_account_key: Option<String>,
}

/// Starts the controller manager with `kubeconfig`'s identity, with the
/// controllers' metrics in `registry`; elected, it runs them while it holds
/// the `kube-system/kube-controller-manager` Lease.
pub async fn start(
    kubeconfig: &Path,
    args: &ControllerArgs,
    inputs: Inputs,
    elect: Option<kubox_client::leader::Timing>,
    registry: &kubox_prometheus::Registry,
) -> anyhow::Result<ControllerManager> {
    kubox_controllers::check_selection(&inputs.controllers).map_err(anyhow::Error::msg)?;
    if args.node_cidr_mask_size < inputs.cluster_cidr.prefix_len() {
        anyhow::bail!("--node-cidr-mask-size is shorter than --cluster-cidr's prefix");
    }
    let (client, kubeconfig) = kubox_client::connect(kubeconfig).await?;
    let root_ca = match inputs.root_ca {
        Some(ca) => ca,
        None => crate::token::kubeconfig_ca(&kubeconfig)
            .context("the controller manager's kubeconfig names no cluster CA")?,
    };
    let config = kubox_controllers::Config {
        pod_ranges: kubox_controllers::PodRanges {
            cluster_cidr: inputs.cluster_cidr.trunc(),
            node_mask: args.node_cidr_mask_size,
        },
        root_ca,
        controllers: inputs.controllers,
        node_monitor_grace_period: args.node_monitor_grace_period,
        local_path_dir: inputs.local_path_dir,
        cluster_signing_duration: args.cluster_signing_duration,
        signing_ca: inputs.signing_ca,
        service_account_key: inputs.service_account_key,
        hpa: kubox_controllers::HpaSettings {
            sync_period: args.horizontal_pod_autoscaler_sync_period,
            downscale_stabilization: args.horizontal_pod_autoscaler_downscale_stabilization,
            timing: kubox_controllers::HpaTiming {
                cpu_initialization_period: args.horizontal_pod_autoscaler_cpu_initialization_period,
                initial_readiness_delay: args.horizontal_pod_autoscaler_initial_readiness_delay,
                tolerance: args.horizontal_pod_autoscaler_tolerance,
            },
        },
    };
    Ok(ControllerManager::start(client, config, elect, registry))
}

#[derive(Args)]
pub struct StandaloneArgs {
    /// The controller manager's credentials (`system:kube-controller-manager`)
    /// and the API server it talks to.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Every pod address of the cluster, as the servers' --cluster-cidr.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// Controllers to run: `*` for all, `foo` to run foo, `-foo` not to.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// The CA certificate (PEM) CertificateSigningRequests are signed
    /// with; without it and its key, none are signed.
    #[arg(long, requires = "cluster_signing_key_file")]
    cluster_signing_cert_file: Option<PathBuf>,
    /// The key (PEM) of --cluster-signing-cert-file.
    #[arg(long, requires = "cluster_signing_cert_file")]
    cluster_signing_key_file: Option<PathBuf>,
    /// The ServiceAccount token signing key (PEM) legacy token Secrets are
    /// filled with; without it, they are not.
    #[arg(long)]
    service_account_private_key_file: Option<PathBuf>,
    /// The CA certificate (PEM) published to every namespace as
    /// `kube-root-ca.crt`; the kubeconfig's by default.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// Where the local-path provisioner makes its volumes' directories.
    #[arg(long, default_value = "/var/lib/kubox/storage")]
    local_path_dir: PathBuf,
    #[command(flatten)]
    controller: ControllerArgs,
    #[command(flatten)]
    leader: ElectArgs,
    /// The address of its metrics and health checks.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The plain HTTP port of /metrics, /healthz and /readyz
    /// (kube-controller-manager's former insecure port, 10252); 0 for none.
    #[arg(long, default_value_t = 10252)]
    metrics_port: u16,
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// `kubox controller-manager`: the controllers alone, until SIGTERM or Ctrl-C.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let signing_ca = match (
        &args.cluster_signing_cert_file,
        &args.cluster_signing_key_file,
    ) {
        (Some(cert), Some(key)) => Some(SigningCa {
            cert_pem: read(cert, "--cluster-signing-cert-file")?,
            key_pem: read(key, "--cluster-signing-key-file")?,
        }),
        _ => None,
    };
    let inputs = Inputs {
        cluster_cidr: args.cluster_cidr,
        controllers: args.controllers.clone(),
        local_path_dir: args.local_path_dir.clone(),
        root_ca: args
            .root_ca_file
            .as_deref()
            .map(|f| read(f, "--root-ca-file"))
            .transpose()?,
        signing_ca,
        service_account_key: args
            .service_account_private_key_file
            .as_deref()
            .map(|f| read(f, "--service-account-private-key-file"))
            .transpose()?,
    };
    let metrics = Arc::new(kubox_prometheus::Registry::default());
    let controllers = start(
        &args.kubeconfig,
        &args.controller,
        inputs,
        args.leader.elect(),
        &metrics,
    )
    .await
    .context("starting the controller manager")?;
    let _metrics = crate::component::serve_metrics(
        "controller-manager",
        args.bind_address,
        args.metrics_port,
        metrics,
    )
    .await?;
    println!("kubox controller-manager: running");
    crate::server::wait_for_shutdown().await?;
    controllers.stop(RELEASE_TIMEOUT).await;
    Ok(())
}
