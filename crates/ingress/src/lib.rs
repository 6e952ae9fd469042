//! kubox's built-in ingress controller: a reverse proxy on the node's HTTP
//! and HTTPS ports that routes by the cluster's Ingresses as ingress-nginx
//! does (hosts, paths, default backend, TLS by SNI, its rewrite, redirect
//! and canary annotations), straight to the ready endpoints of Services.
//! It is an API client like any other: informers feed the routing table.

mod annotations;
mod backends;
pub mod class;
mod metrics;
mod paths;
mod proxy;
mod service;
mod sync;
mod table;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where and for which classes the controller serves.
#[derive(Clone, Debug)]
pub struct Config {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// The address of the node, published as the ingress Service's.
    pub node_ip: IpAddr,
    /// Who writes served Ingresses' status, and which addresses.
    pub status: Status,
    /// Class names served besides the IngressClasses naming kubox's
    /// controller (`nginx`, for manifests written for ingress-nginx).
    pub extra_classes: Vec<String>,
    /// Where each request's access log line goes.
    pub access_log: AccessLog,
}

/// How `status.loadBalancer.ingress` is written.
#[derive(Clone, Debug)]
pub enum Status {
    /// The node's address, by this controller alone.
    Node,
    /// The addresses every live API server announces for its ingress
    /// controller (`kubox_client::peers::INGRESS_ADDRESS`), by the one
    /// controller elected among them, as ingress-nginx elects its status
    /// writer, so that controllers never overwrite each other.
    Servers(kubox_client::leader::Timing),
}

/// Where the access log goes: ingress-nginx logs to its standard output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error(transparent)]
    Certificate(#[from] tls::CertError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("opening the access log {0}: {1}")]
    AccessLog(std::path::PathBuf, #[source] std::io::Error),
}

/// A running ingress controller; dropping it stops it.
pub struct IngressController {
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    _tasks: kubox_client::Tasks,
}

impl IngressController {
    /// Binds both ports (so a port in use is an error now), then serves,
    /// with its request metrics in `registry`.
    pub async fn start(
        client: kube::Client,
        config: Config,
        registry: &kubox_prometheus::Registry,
    ) -> Result<Self, Error> {
        let log: Option<Box<dyn std::io::Write + Send>> = match &config.access_log {
            AccessLog::Off => None,
            AccessLog::Stdout => Some(Box::new(std::io::stdout())),
            AccessLog::File(path) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::AccessLog(path.clone(), e))?,
            )),
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Listen(addr, e))
        };
        let http = bind(config.http).await?;
        let https = bind(config.https).await?;
        let http_addr = http
            .local_addr()
            .map_err(|e| Error::Listen(config.http, e))?;
        let https_addr = https
            .local_addr()
            .map_err(|e| Error::Listen(config.https, e))?;
        let (table, routes) = watch::channel(Arc::new(table::Table::default()));
        let resolver = tls::Resolver {
            table: routes.clone(),
            default: tls::self_signed()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));
        let proxy = Arc::new(proxy::Proxy::new(
            routes,
            http_addr.port(),
            https_addr.port(),
            metrics::Metrics::new(registry, log),
        ));
        let tasks = vec![
            tokio::spawn(sync::run(
                client,
                config.node_ip,
                config.status,
                config.extra_classes,
                (http_addr.port(), https_addr.port()),
                table,
            )),
            tokio::spawn(proxy::serve_plain(http, proxy.clone())),
            tokio::spawn(proxy::serve_tls(https, acceptor, proxy)),
        ];
        Ok(Self {
            http_addr,
            https_addr,
            _tasks: kubox_client::Tasks::new(tasks),
        })
    }
}
