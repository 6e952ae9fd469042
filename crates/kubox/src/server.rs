//! `kubox server`: one process running the whole single-node cluster.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use kubox_apiserver::{ApiServer, Config};
use kubox_store::{
    EtcdConfig, EtcdStore, MeteredStore, SqliteConfig, SqliteStore, Store, spawn_compactor,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Datastore {
    /// Embedded SQLite under the data directory.
    Sqlite,
    /// An etcd v3 cluster (--etcd-endpoints).
    Etcd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AuthorizationMode {
    #[value(name = "Node,RBAC")]
    NodeRbac,
    #[value(name = "RBAC")]
    Rbac,
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Where all state lives.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    /// The API server's HTTPS port.
    #[arg(long, default_value_t = 6443)]
    https_port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The address the `kubernetes` Service sends pods to: the bind
    /// address when it is one, else the node's address.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    #[arg(long, value_enum, default_value = "sqlite")]
    datastore: Datastore,
    /// Comma-separated etcd client URLs, with --datastore etcd.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// The cluster's shared secret: servers given the same token and
    /// datastore share the cluster CA, the service-account key and the rest
    /// of DATA/pki, which the first one makes and stores encrypted with it.
    #[arg(long, env = "KUBOX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How often the datastore's size is read for
    /// `apiserver_storage_size_bytes`; 0 disables.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    etcd_db_metric_poll_interval: Duration,
    /// How often history older than one interval is compacted; 0 disables.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: Duration,
    /// How long Events are kept after their last update.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: Duration,
    /// How requests are authorized: Node,RBAC (nodes reach only what their
    /// pods need, then roles and bindings), RBAC (roles and bindings
    /// alone), or AlwaysAllow (everything, anonymous requests too).
    #[arg(long, value_enum, default_value = "Node,RBAC")]
    authorization_mode: AuthorizationMode,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1) saying how
    /// resources are encrypted in the datastore. Without it Secrets are
    /// encrypted with a key made at first start, in
    /// DATA/pki/encryption-config.yaml.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// An audit Policy (audit.k8s.io/v1) saying which requests are logged
    /// at which level; with --audit-log-path.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events go, one JSON line each; `-` is standard output.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Megabytes the audit log may reach before it is rotated (0: never).
    #[arg(long, default_value_t = 0)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long, default_value_t = 0)]
    audit_log_maxbackup: usize,
    /// Days a rotated audit log is kept (0: no limit).
    #[arg(long, default_value_t = 0)]
    audit_log_maxage: u64,
    /// Static bearer tokens: a CSV file of `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// More names or addresses for the API server's certificate.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Run no scheduler in this server (another one places pods).
    #[arg(long)]
    disable_scheduler: bool,
    /// Run no controller manager in this server (another one runs the
    /// control loops), or, given names (`--disable-controllers=job,cronjob`,
    /// kube-controller-manager's names), run it without those controllers.
    #[arg(long, num_args = 0..=1, require_equals = true, value_delimiter = ',', default_missing_value = "*")]
    disable_controllers: Option<Vec<String>>,
    /// Run no ingress controller in this server.
    #[arg(long)]
    disable_ingress: bool,
    /// How often the built-in metrics-server scrapes the nodes' resource
    /// metrics (metrics-server's flag).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    metric_resolution: Duration,
    #[command(flatten)]
    controller: crate::controller_manager::ControllerArgs,
    #[command(flatten)]
    leader: crate::component::LeaderElectArgs,
    #[command(flatten)]
    ingress: crate::ingress::IngressArgs,
    #[command(flatten)]
    agent: crate::agent::AgentArgs,
    #[command(flatten)]
    net: crate::net::NetArgs,
    #[command(flatten)]
    dns: crate::dns::DnsArgs,
}

/// Durations as `300s`, `5m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match args.datastore {
        Datastore::Sqlite => {
            let path = args.data_dir.join("db").join("state.db");
            Arc::new(
                SqliteStore::open(SqliteConfig::new(&path))
                    .await
                    .context("opening the embedded datastore")?,
            )
        }
        Datastore::Etcd => Arc::new(
            EtcdStore::connect(EtcdConfig::new(args.etcd_endpoints.clone()))
                .await
                .context("connecting to etcd")?,
        ),
    })
}

/// `apiserver_storage_size_bytes`: the datastore's size on disk, asked of
/// the store every `interval` as upstream polls etcd's Status.
fn db_size_metric(
    metrics: &kubox_prometheus::Registry,
    store: Arc<dyn Store>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        storage_cluster_id: String,
    }
    let size = Family::<Labels, Gauge>::default();
    metrics.register(
        "apiserver_storage_size_bytes",
        "[STABLE] Size of the storage database file physically allocated in bytes.",
        size.clone(),
    );
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match store.db_status().await {
                Ok(status) => {
                    size.get_or_create(&Labels {
                        storage_cluster_id: status.cluster_id,
                    })
                    .set(i64::try_from(status.size_bytes).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "reading the datastore's size"),
            }
        }
    })
}

/// Auditing needs both a policy and a log, as upstream's: either alone is
/// refused rather than silently logging nothing.
fn audit_config(
    args: &ServerArgs,
) -> anyhow::Result<Option<(PathBuf, kubox_apiserver::audit::LogConfig)>> {
    match (&args.audit_policy_file, &args.audit_log_path) {
        (Some(policy), Some(path)) => Ok(Some((
            policy.clone(),
            kubox_apiserver::audit::LogConfig {
                path: path.clone(),
                max_size_mb: args.audit_log_maxsize,
                max_backups: args.audit_log_maxbackup,
                max_age_days: args.audit_log_maxage,
            },
        ))),
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!("--audit-policy-file needs --audit-log-path"),
        (None, Some(_)) => anyhow::bail!("--audit-log-path needs --audit-policy-file"),
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot use data directory {}", args.data_dir.display()))?;
    // One registry for every in-process component; the API server serves it.
    let metrics = Arc::new(kubox_prometheus::Registry::default());
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(open_store(&args).await?, &metrics));
    let _db_size = (!args.etcd_db_metric_poll_interval.is_zero())
        .then(|| db_size_metric(&metrics, store.clone(), args.etcd_db_metric_poll_interval));
    let _compactor = (!args.compaction_interval.is_zero())
        .then(|| spawn_compactor(store.clone(), args.compaction_interval));
    let advertise_address =
        args.advertise_address
            .unwrap_or(if args.bind_address.is_unspecified() {
                crate::agent::node_ip(&args.agent)
            } else {
                args.bind_address
            });
    let config = Config {
        data_dir: args.data_dir.clone(),
        bind_address: args.bind_address,
        advertise_address,
        https_port: args.https_port,
        extra_sans: args.tls_sans.clone(),
        event_ttl: args.event_ttl,
        authorization_mode: match args.authorization_mode {
            AuthorizationMode::NodeRbac => kubox_apiserver::AuthorizationMode::NodeRbac,
            AuthorizationMode::Rbac => kubox_apiserver::AuthorizationMode::Rbac,
            AuthorizationMode::AlwaysAllow => kubox_apiserver::AuthorizationMode::AlwaysAllow,
        },
        metrics: metrics.clone(),
        token: args.token.clone(),
        encryption_provider_config: args.encryption_provider_config.clone(),
        audit: audit_config(&args)?,
        token_auth_file: args.token_auth_file.clone(),
    };
    let server = ApiServer::start(store, &config)
        .await
        .context("starting the API server")?;
    let node_kubeconfig = server
        .component_kubeconfig(
            "node",
            &format!("system:node:{}", crate::agent::node_name(&args.agent)),
            &["system:nodes"],
        )
        .context("writing the node agent's credentials")?;
    let _node = crate::agent::start(
        &args.agent,
        &args.net,
        &args.data_dir,
        &node_kubeconfig,
        true,
    )
    .await?;
    if _node.is_some() {
        crate::agent::mark_control_plane(&server.api, &crate::agent::node_name(&args.agent))
            .await?;
    }
    let _dns = crate::dns::start(&args.dns, &args.agent, _node.as_ref(), &server).await?;
    // Written also when disabled here, as kubeadm's scheduler.conf and
    // controller-manager.conf: what `kubox scheduler` and `kubox
    // controller-manager` run apart on this machine connect with.
    let scheduler_kubeconfig = server
        .component_kubeconfig("scheduler", "system:kube-scheduler", &[])
        .context("writing the scheduler's credentials")?;
    let controllers_kubeconfig = server
        .component_kubeconfig("controller-manager", "system:kube-controller-manager", &[])
        .context("writing the controller manager's credentials")?;
    let scheduler = if args.disable_scheduler {
        None
    } else {
        Some(
            crate::scheduler::start(&scheduler_kubeconfig, Some(args.leader.timing()), &metrics)
                .await
                .context("starting the scheduler")?,
        )
    };
    // Not leader-elected: every API server serves metrics.k8s.io from its
    // own window, so each server's metrics-server fills its own (scraping
    // is read-only, so N of them are safe).
    let _metrics_server = {
        let kubeconfig = server
            .component_kubeconfig("metrics-server", "system:metrics-server", &[])
            .context("writing the metrics-server's credentials")?;
        let (client, _) = kubox_client::connect(&kubeconfig).await?;
        kubox_metrics_server::MetricsServer::start(
            client,
            server.resource_metrics.clone(),
            args.metric_resolution,
        )
    };
    let disabled = args.disable_controllers.clone().unwrap_or_default();
    let controllers = if disabled.iter().any(|d| d == "*") {
        None
    } else {
        let inputs = crate::controller_manager::Inputs {
            cluster_cidr: args.net.cluster_cidr,
            controllers: std::iter::once("*".to_owned())
                .chain(disabled.iter().map(|d| format!("-{d}")))
                .collect(),
            local_path_dir: args.data_dir.join("storage"),
            root_ca: None,
            signing_ca: Some(kubox_controllers::SigningCa {
                cert_pem: std::fs::read_to_string(args.data_dir.join("pki/ca.crt"))
                    .context("reading the cluster CA for the CSR signer")?,
                key_pem: std::fs::read_to_string(args.data_dir.join("pki/ca.key"))
                    .context("reading the cluster CA key for the CSR signer")?,
            }),
            service_account_key: Some(
                server
                    .service_account_key_pem()
                    .context("reading the service-account key for the token controller")?,
            ),
        };
        Some(
            crate::controller_manager::start(
                &controllers_kubeconfig,
                &args.controller,
                inputs,
                Some(args.leader.timing()),
                &metrics,
            )
            .await
            .context("starting the controller manager")?,
        )
    };
    let ingress = if args.disable_ingress {
        None
    } else {
        let kubeconfig = server
            .component_kubeconfig("ingress", "system:kubox-ingress", &[])
            .context("writing the ingress controller's credentials")?;
        let node_ip = crate::agent::node_ip(&args.agent);
        let controller = crate::ingress::start(
            &args.ingress,
            &kubeconfig,
            args.bind_address,
            node_ip,
            kubox_ingress::Status::Servers(args.leader.timing()),
            &metrics,
        )
        .await?;
        server
            .announcer()
            .announce(kubox_client::peers::INGRESS_ADDRESS, node_ip.to_string())
            .await;
        Some(controller)
    };
    println!("kubox server: API at https://{}", server.addr);
    if let Some(ingress) = &ingress {
        println!(
            "kubox server: ingress on http://{} and https://{}",
            ingress.http_addr, ingress.https_addr
        );
    }
    let join = join_token(&args.data_dir, &server.kubeconfig).await?;
    println!(
        "kubox server: nodes join with: kubox agent --server https://{} --token {join}",
        std::net::SocketAddr::new(advertise_address, server.addr.port())
    );
    println!("kubox server: data in {}", args.data_dir.display());
    println!(
        "kubox server: admin kubeconfig at {}",
        server.kubeconfig.display()
    );
    wait_for_shutdown().await?;
    // Given up while this API server still serves, so the next leader (or
    // this server restarted) need not wait out leases nobody renews.
    tokio::join!(
        async {
            if let Some(scheduler) = scheduler {
                scheduler.stop().await;
            }
        },
        async {
            if let Some(controllers) = controllers {
                controllers.stop(crate::component::RELEASE_TIMEOUT).await;
            }
        },
    );
    server.leave().await;
    Ok(())
}

/// The server's join token, `DATA/token` (mode 0600), made at first start
/// and valid until its Secret is deleted, as k3s's server token.
async fn join_token(data_dir: &std::path::Path, admin: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token = crate::token::create_with(admin, None, "the server's join token")
        .await
        .context("making the server's join token")?
        .to_string();
    kubox_apiserver::pki::write_file(&path, format!("{token}\n").as_bytes(), true)?;
    Ok(token)
}

/// Until SIGTERM or Ctrl-C.
pub async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for a shutdown signal")?,
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}
