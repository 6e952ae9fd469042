//! Cluster DNS (our CoreDNS with its kubernetes plugin): a hickory server
//! answering the cluster domain from cached Services and EndpointSlices
//! (kube-rs reflectors through the API) and forwarding every other name to
//! the upstream resolvers. It publishes itself as the `kube-dns` Service.

mod forward;
mod handler;
mod kube_dns;
pub mod records;
pub mod resolvconf;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use hickory_server::ServerFuture;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, watch};

pub use forward::{ForwardError, Forwarder};
pub use kube_dns::{SERVICE_NAME, SERVICE_NAMESPACE, publish_service};
pub use records::Zone;
pub use resolvconf::ResolvConf;

/// How long a TCP client may stay idle, and how long an upstream has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a DNS domain")]
    Domain(String),
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, #[source] std::io::Error),
}

/// `cluster.local` as the fully qualified, lower-case name the zone is kept under.
pub fn domain_name(domain: &str) -> Result<Name, Error> {
    let trimmed = domain.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(Error::Domain(domain.to_owned()));
    }
    Name::from_ascii(format!("{trimmed}."))
        .map(|n| n.to_lowercase())
        .map_err(|_| Error::Domain(domain.to_owned()))
}

#[derive(Clone, Debug)]
pub struct Config {
    pub domain: Name,
    /// Where to answer, over UDP and TCP.
    pub listen: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
}

/// A running DNS server; dropping it stops it.
pub struct DnsServer {
    addr: SocketAddr,
    _tasks: kubox_client::Tasks,
}

impl DnsServer {
    pub async fn start(client: kube::Client, config: Config) -> Result<Self, Error> {
        let udp = UdpSocket::bind(config.listen)
            .await
            .map_err(|e| Error::Listen(config.listen, e))?;
        let addr = udp
            .local_addr()
            .map_err(|e| Error::Listen(config.listen, e))?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Listen(addr, e))?;
        let changed = Arc::new(Notify::new());
        let (services, services_task) =
            kubox_client::follow::<Service>(client.clone(), changed.clone());
        let (slices, slices_task) = kubox_client::follow::<EndpointSlice>(client, changed.clone());
        let (zone_tx, zone) = watch::channel(None);
        let builder = tokio::spawn(build_zones(
            config.domain.clone(),
            services,
            slices,
            changed,
            zone_tx,
        ));
        let mut server = ServerFuture::new(handler::Handler {
            zone,
            forwarder: Forwarder::new(config.upstreams.clone(), TIMEOUT),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TIMEOUT);
        let serve = tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                tracing::warn!("the DNS server stopped: {e}");
            }
        });
        tracing::info!(%addr, domain = %config.domain, upstreams = ?config.upstreams, "cluster DNS listening");
        Ok(Self {
            addr,
            _tasks: kubox_client::Tasks::new(vec![services_task, slices_task, builder, serve]),
        })
    }

    /// The address it answers on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Rebuilds the zone after every change; changes during a build are
/// coalesced into the next one.
async fn build_zones(
    domain: Name,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
    zone: watch::Sender<Option<Arc<Zone>>>,
) {
    if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let services = services.state();
        let slices = slices.state();
        let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        let built = Zone::build(&domain, services.iter().map(|s| &**s), &slice_refs);
        zone.send_replace(Some(Arc::new(built)));
        changed.notified().await;
    }
}
