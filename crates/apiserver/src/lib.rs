//! kubox's API server: the Kubernetes REST API, served from one generic
//! registry over the revisioned store, so stock kubectl and client libraries
//! work unmodified.

pub mod admission;
pub mod allocator;
pub mod api;
pub mod apply;
pub mod audit;
pub mod authz;
pub mod bootstrap_token;
pub mod cache;
mod client_auth;
pub mod conversion;
pub mod deletion;
pub mod discovery;
pub mod encryption;
mod eviction;
pub mod http;
mod impersonation;
mod jobspec;
pub mod leases;
pub mod metrics;
mod node_proxy;
pub mod nodeauthz;
pub mod openapi;
pub mod patch;
mod peers;
pub use peers::DNS_ADDRESS;
pub mod pki;
mod priority;
pub mod registry;
pub mod request;
pub mod resource_metrics;
mod review;
pub mod scale;
pub mod secrets;
pub mod selectors;
pub mod server;
pub mod serviceaccount;
mod signers;
pub mod status;
pub mod strategy;
pub mod swagger;
pub mod table;
pub mod token_file;
mod updates;
pub mod validation;
pub mod warning;
mod written;

mod bootstrap;
pub mod rbac;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use kubox_store::Store;
use tokio::net::TcpListener;

use crate::api::Api;
use crate::http::Handler;

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    /// The address the `kubernetes` Service's endpoints name (upstream's `--advertise-address`).
    pub advertise_address: IpAddr,
    pub https_port: u16,
    /// Extra names and addresses for the serving certificate.
    pub extra_sans: Vec<String>,
    /// How long Events are kept after their last update.
    pub event_ttl: std::time::Duration,
    pub authorization_mode: AuthorizationMode,
    /// The process's metrics, which `/metrics` serves.
    pub metrics: Arc<kubox_prometheus::Registry>,
    /// The cluster's shared secret (`--token`): with it the CA, the
    /// service-account key and the rest of `DATA/pki` are shared with the
    /// other servers on the same datastore (see `secrets`).
    pub token: Option<String>,
    /// Upstream's `--encryption-provider-config`; without one, the
    /// configuration under `DATA/pki`, made with a new key at first start.
    pub encryption_provider_config: Option<PathBuf>,
    /// The audit policy (`--audit-policy-file`) and log (`--audit-log-*`).
    pub audit: Option<(PathBuf, audit::LogConfig)>,
    /// Upstream's `--token-auth-file`: static bearer tokens.
    pub token_auth_file: Option<PathBuf>,
}

/// Upstream's `--authorization-mode` values kubox has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// The Node authorizer for nodes, then roles and bindings (the default,
    /// as kubeadm's `Node,RBAC`).
    #[default]
    NodeRbac,
    /// Roles and bindings alone.
    Rbac,
    /// Every request is allowed, anonymous ones too, as upstream's mode.
    AlwaysAllow,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    #[error(transparent)]
    Encryption(#[from] encryption::EncryptionError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    TokenFile(#[from] token_file::TokenFileError),
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("creating the built-in objects: {0}")]
    Bootstrap(String),
}

/// A running API server.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub api: Arc<Api>,
    /// Where an in-process metrics-server puts what it measures.
    pub resource_metrics: Arc<resource_metrics::MetricsWindow>,
    pki: Arc<pki::Pki>,
    server_url: String,
    data_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Renews the serving certificate and takes up rotated ones.
    serving: tokio::task::JoinHandle<()>,
    peer: Arc<peers::Peer>,
    peers: tokio::task::JoinHandle<()>,
}

/// Announces where a component of a server serves on the server's peer
/// lease (see `kubox_client::peers`).
#[derive(Clone)]
pub struct Announcer {
    peer: Arc<peers::Peer>,
    api: Arc<Api>,
}

impl Announcer {
    /// Adds `key: value` to the lease, renewing it at once; should that
    /// fail, the next periodic renewal carries it.
    pub async fn announce(&self, key: &str, value: String) {
        self.peer.announce(key, value);
        if let Err(e) = self.peer.reconcile(&self.api).await {
            tracing::warn!("renewing this server's lease: {}", e.message);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.serving.abort();
        self.peers.abort();
    }
}

/// What every server of a cluster must share, made by the first one: the
/// CA and the service-account signing key (whatever else is made here is
/// shared too, see `secrets`).
/// What the first server of a cluster makes for all: the CA and keys, and
/// the default encryption key, which every server must share to read the
/// others' Secrets.
fn create_cluster_secrets(dir: &std::path::Path) -> Result<(), pki::PkiError> {
    pki::Pki::load_or_create(dir)?.service_account_key()?;
    encryption::write_default_config(dir)
}

fn sans(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        bootstrap::KUBERNETES_SERVICE_IP,
    ]
    .map(str::to_owned)
    .into();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_lowercase());
    }
    if !config.bind_address.is_unspecified() {
        names.push(config.bind_address.to_string());
    }
    names.extend(config.extra_sans.iter().cloned());
    names.sort();
    names.dedup();
    names
}

impl ApiServer {
    /// Makes certificates on first start, listens, and creates the built-in
    /// namespaces and the `kubernetes` Service.
    pub async fn start(store: Arc<dyn Store>, config: &Config) -> Result<Self, StartError> {
        let pki_dir = config.data_dir.join("pki");
        if let Some(token) = &config.token {
            let shared =
                secrets::share(store.as_ref(), &pki_dir, token, create_cluster_secrets).await?;
            tracing::info!("cluster secrets: {shared:?}");
        }
        let pki = Arc::new(pki::Pki::load_or_create(&pki_dir)?);
        let encryption = encryption::Encryption::load(
            config.encryption_provider_config.as_deref(),
            &pki_dir,
            &registry::Registry::builtin(),
        )?;
        let store: Arc<dyn Store> = encryption::EncryptedStore::open(store, encryption).await?;
        let tokens = Arc::new(serviceaccount::Tokens::new(pki.service_account_key()?));
        let names = sans(config);
        let serving = Arc::new(server::ServingCert::new(&pki.serving(&names)?)?);
        let tls = server::tls_config(serving.clone(), pki.ca_pem())?;
        let addr = SocketAddr::new(config.bind_address, config.https_port);
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
            addr,
            hint: match source.kind() {
                std::io::ErrorKind::AddrInUse => " (another process uses the port: stop it or pick another with --https-port)",
                std::io::ErrorKind::PermissionDenied => " (ports below 1024 need root)",
                _ => "",
            },
            source,
        })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let admin = pki.client("admin", "kubox-admin", &["system:masters"])?;
        let host = if config.bind_address.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            config.bind_address.to_string()
        };
        let server_url = match config.bind_address {
            IpAddr::V6(_) if !config.bind_address.is_unspecified() => {
                format!("https://[{host}]:{}", addr.port())
            }
            _ => format!("https://{host}:{}", addr.port()),
        };
        let kubeconfig = config.data_dir.join("admin.kubeconfig");
        let contents = pki::kubeconfig("kubox", &server_url, pki.ca_pem(), "kubox-admin", &admin);
        pki::write_file(&kubeconfig, contents.as_bytes(), true)?;

        let api = Arc::new(Api::new(store, config.event_ttl));
        let mut node_graph = None;
        let (authorizer, view): (Arc<dyn authz::Authorizer>, _) = match config.authorization_mode {
            AuthorizationMode::AlwaysAllow => (Arc::new(authz::AlwaysAllow), None),
            mode @ (AuthorizationMode::Rbac | AuthorizationMode::NodeRbac) => {
                let view = rbac::view::RbacView::start(|plural| api.cache_of(plural));
                let rbac = Arc::new(rbac::Rbac { view: view.clone() });
                let check = Arc::new(rbac::escalation::Escalation { rbac: rbac.clone() });
                let _ = api.write_checks.set(vec![
                    check,
                    Arc::new(signers::Signers {
                        authorizer: rbac.clone(),
                    }),
                ]);
                if mode == AuthorizationMode::Rbac {
                    (rbac, Some(view))
                } else {
                    let node = Arc::new(nodeauthz::NodeAuthorizer::start(|plural| {
                        api.cache_of(plural)
                    }));
                    node_graph = Some(node.clone());
                    (Arc::new(authz::Union(vec![node, rbac])), Some(view))
                }
            }
        };
        let resource_metrics = Arc::new(resource_metrics::MetricsWindow::default());
        let audit = match &config.audit {
            Some((policy, log)) => Some(Arc::new(audit::Audit::open(policy, log.clone())?)),
            None => None,
        };
        let static_tokens = match &config.token_auth_file {
            Some(path) => token_file::TokenFile::load(path)?,
            None => token_file::TokenFile::default(),
        };
        let handler = Arc::new(Handler {
            audit,
            static_tokens,
            resource_metrics: resource_metrics.clone(),
            api: api.clone(),
            authorizer,
            node_graph,
            metrics: metrics::Metrics::new(config.metrics.clone(), &api),
            nodes: node_proxy::NodeClient::new(&pki.client(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                &["system:masters"],
            )?)?,
            tokens,
        });
        let task = tokio::spawn(server::serve(listener, tls, handler));
        let serving = tokio::spawn(server::keep_serving_current(pki.clone(), names, serving));
        bootstrap::run(&api, config.advertise_address, addr.port(), pki.ca_pem())
            .await
            .map_err(|e| StartError::Bootstrap(e.message))?;
        // Servers starting together race on the endpoints (a conflict), and
        // a loaded server's caches may lag its writes: both pass on a retry.
        let peer = peers::Peer::new(config.advertise_address, addr.port());
        let mut attempts = 0;
        while let Err(e) = peer.reconcile(&api).await {
            attempts += 1;
            if attempts >= 10 {
                return Err(StartError::Bootstrap(e.message));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100 * attempts)).await;
        }
        let peer = Arc::new(peer);
        let peers = peer.clone().spawn(api.clone());
        let policy = rbac::policy::run(&api)
            .await
            .map_err(|e| StartError::Bootstrap(e.message))?;
        // Components start once the authorizer sees the policy they rely on.
        if let Some(view) = view {
            for (plural, revision) in policy {
                if !view.wait_for(plural, revision).await {
                    return Err(StartError::Bootstrap(format!(
                        "the RBAC view did not load {plural}"
                    )));
                }
            }
        }
        api.bootstrapped
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(Self {
            addr,
            kubeconfig,
            api,
            resource_metrics,
            pki,
            server_url,
            data_dir: config.data_dir.clone(),
            task,
            serving,
            peer,
            peers,
        })
    }

    /// Takes this server out of the `kubernetes` Service's endpoints and
    /// deletes its lease, for a graceful shutdown; it keeps serving.
    pub async fn leave(&self) {
        self.peers.abort();
        if let Err(e) = self.peer.leave(&self.api).await {
            tracing::warn!("leaving the kubernetes Service's endpoints: {}", e.message);
        }
    }

    /// What this server's components announce themselves with.
    pub fn announcer(&self) -> Announcer {
        Announcer {
            peer: self.peer.clone(),
            api: self.api.clone(),
        }
    }

    /// The service-account signing key's PEM, for the controller manager's
    /// token controller (upstream's `--service-account-private-key-file`).
    pub fn service_account_key_pem(&self) -> Result<String, StartError> {
        Ok(self.pki.service_account_key()?.pem().to_owned())
    }

    /// Writes a kubeconfig for a component of this server that talks to it
    /// as a client (the node agent: `system:node:<name>` in `system:nodes`),
    /// under the data directory as `<file>.kubeconfig`.
    pub fn component_kubeconfig(
        &self,
        file: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<PathBuf, StartError> {
        let creds = self.pki.client(file, user, groups)?;
        let path = self.data_dir.join(format!("{file}.kubeconfig"));
        let contents = pki::kubeconfig("kubox", &self.server_url, self.pki.ca_pem(), user, &creds);
        pki::write_file(&path, contents.as_bytes(), true)?;
        Ok(path)
    }
}
