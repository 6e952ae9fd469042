//! A node's way to every API server of a cluster with no load balancer in
//! front of them, as k3s's agent load balancer: a TCP proxy on loopback that
//! forwards each connection to a healthy server, learns the servers from the
//! `kubernetes` Service's Endpoints, and when the server in use stops
//! answering closes the connections to it, so clients reconnect through it
//! to another. TLS passes through untouched: the client still verifies the
//! server's certificate (every server's names 127.0.0.1).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Endpoints;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{ConnectError, Tasks};

/// How often every server is probed with a TCP connection.
pub const HEALTH_PERIOD: Duration = Duration::from_secs(1);
/// How long a dial or probe may take before the server counts as down.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the server list is read from the `kubernetes` Endpoints.
const ENDPOINTS_PERIOD: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    servers: Vec<SocketAddr>,
    /// The server new connections go to while it stays healthy.
    current: Option<SocketAddr>,
}

struct Shared {
    state: Mutex<State>,
    /// The servers the last probe found down; connections to one close.
    down: watch::Sender<HashSet<SocketAddr>>,
}

/// A running load balancer; dropping it stops it and its connections.
pub struct Failover {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: Tasks,
}

impl Failover {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `servers`.
    pub async fn start(servers: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                servers: dedup(servers),
                current: None,
            }),
            down: watch::channel(HashSet::new()).0,
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        let health = tokio::spawn(health(shared.clone()));
        Ok(Self {
            addr,
            shared,
            _tasks: Tasks::new(vec![accept, health]),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The servers known now.
    pub fn servers(&self) -> Vec<SocketAddr> {
        lock(&self.shared).servers.clone()
    }

    /// Replaces the server list; an empty one is ignored, so a cluster
    /// that briefly lists no endpoint does not leave the node with none.
    pub fn set_servers(&self, servers: Vec<SocketAddr>) {
        if servers.is_empty() {
            return;
        }
        let mut state = lock(&self.shared);
        let servers = dedup(servers);
        if state.servers != servers {
            tracing::info!(?servers, "API servers");
        }
        if state.current.is_some_and(|c| !servers.contains(&c)) {
            state.current = None;
        }
        state.servers = servers;
    }
}

fn dedup(mut servers: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    servers.retain(|s| seen.insert(*s));
    servers
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn dial(server: SocketAddr) -> Option<TcpStream> {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(server)).await {
        Ok(Ok(stream)) => Some(stream),
        _ => None,
    }
}

/// A connection to the current server if it answers, else to the first
/// other one that does, which becomes current.
async fn connect(shared: &Shared) -> Option<(SocketAddr, TcpStream)> {
    let (current, servers) = {
        let state = lock(shared);
        (state.current, state.servers.clone())
    };
    let down = shared.down.borrow().clone();
    // Healthy servers first, the current one before them; those the last
    // probe found down are tried last, in case they are back.
    let mut order: Vec<SocketAddr> = current.into_iter().collect();
    order.extend(servers.iter().filter(|s| !down.contains(s)));
    order.extend(servers.iter().filter(|s| down.contains(s)));
    for server in dedup(order) {
        if let Some(stream) = dial(server).await {
            let mut state = lock(shared);
            if state.current != Some(server) {
                tracing::info!(%server, "forwarding to API server");
                state.current = Some(server);
            }
            return Some((server, stream));
        }
        let mut state = lock(shared);
        if state.current == Some(server) {
            state.current = None;
        }
    }
    None
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some((server, mut outbound)) = connect(&shared).await else {
                tracing::warn!("no API server answers");
                return;
            };
            let mut down = shared.down.subscribe();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = down.wait_for(|d| d.contains(&server)) => {
                    tracing::debug!(%server, "closing a connection to a server that is down");
                }
            }
        });
    }
}

/// Probes every server each [`HEALTH_PERIOD`] and publishes those down.
async fn health(shared: Arc<Shared>) {
    loop {
        let servers = lock(&shared).servers.clone();
        let probes = servers
            .iter()
            .map(|s| async move { (*s, dial(*s).await.is_some()) });
        let results = futures::future::join_all(probes).await;
        let down: HashSet<SocketAddr> = results
            .into_iter()
            .filter(|(_, up)| !up)
            .map(|(s, _)| s)
            .collect();
        {
            let mut state = lock(&shared);
            if state.current.is_some_and(|c| down.contains(&c)) {
                tracing::warn!(server = ?state.current, "API server down");
                state.current = None;
            }
        }
        shared.down.send_if_modified(|d| {
            let changed = *d != down;
            *d = down;
            changed
        });
        tokio::time::sleep(HEALTH_PERIOD).await;
    }
}

/// The servers the `kubernetes` Endpoints list (address and port of each).
pub fn endpoint_servers(endpoints: &Endpoints) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let port = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().is_none_or(|n| n == "https"))
            .map(|p| p.port);
        let Some(Ok(port)) = port.map(u16::try_from) else {
            continue;
        };
        for address in subset.addresses.iter().flatten() {
            if let Ok(ip) = address.ip.parse() {
                servers.push(SocketAddr::new(ip, port));
            }
        }
    }
    servers
}

/// Reads the `kubernetes` Endpoints every 10 s and hands the servers to `failover`.
pub async fn follow_endpoints(client: kube::Client, failover: Arc<Failover>) {
    let api: kube::Api<Endpoints> = kube::Api::namespaced(client, "default");
    loop {
        match api.get_opt("kubernetes").await {
            Ok(Some(endpoints)) => failover.set_servers(endpoint_servers(&endpoints)),
            Ok(None) => {}
            Err(e) => tracing::debug!("reading the kubernetes endpoints: {e}"),
        }
        tokio::time::sleep(ENDPOINTS_PERIOD).await;
    }
}

/// A client for a kubeconfig's identity whose connections go through a
/// [`Failover`] started for the kubeconfig's server, which then follows the
/// cluster's API servers. The certificate is still checked for the
/// kubeconfig's host name (`tls-server-name`).
pub async fn connect_balanced(
    path: &Path,
) -> Result<(kube::Client, kube::config::Kubeconfig, Balanced), ConnectError> {
    let shown = path.display().to_string();
    let mut kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| ConnectError::Read(shown.clone(), e))?;
    let cluster = kubeconfig
        .clusters
        .first_mut()
        .and_then(|c| c.cluster.as_mut())
        .ok_or_else(|| ConnectError::Server(shown.clone(), "names no cluster".into()))?;
    let server = cluster.server.clone().unwrap_or_default();
    let url: http::Uri = server
        .parse()
        .map_err(|e| ConnectError::Server(shown.clone(), format!("server {server:?}: {e}")))?;
    let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_u16().unwrap_or(443);
    let servers: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ConnectError::Server(shown.clone(), format!("resolving {host}: {e}")))?
        .collect();
    let failover = Failover::start(servers)
        .await
        .map_err(|e| ConnectError::Server(shown.clone(), format!("listening on loopback: {e}")))?;
    if host.parse::<std::net::IpAddr>().is_err() && cluster.tls_server_name.is_none() {
        cluster.tls_server_name = Some(host.to_owned());
    }
    cluster.server = Some(format!("https://{}", failover.addr()));
    let client = crate::client_for(&kubeconfig, shown).await?;
    let failover = Arc::new(failover);
    let follow = tokio::spawn(follow_endpoints(client.clone(), failover.clone()));
    Ok((
        client,
        kubeconfig,
        Balanced {
            failover,
            _follow: Tasks::new(vec![follow]),
        },
    ))
}

/// The load balancer behind a [`connect_balanced`] client; keep it while
/// the client is used.
pub struct Balanced {
    pub failover: Arc<Failover>,
    _follow: Tasks,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each connection with its name, then echoes.
    async fn named_server(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                connections.push(tokio::spawn(async move {
                    let _ = conn.write_all(name.as_bytes()).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            drop(connections);
        });
        (addr, task)
    }

    async fn greeting(lb: SocketAddr) -> String {
        let mut conn = TcpStream::connect(lb).await.unwrap();
        let mut buf = [0u8; 1];
        conn.read_exact(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn connections_fail_over_to_a_live_server() {
        let (a, a_task) = named_server("a").await;
        let (b, _b_task) = named_server("b").await;
        let lb = Failover::start(vec![a, b]).await.unwrap();
        assert_eq!(greeting(lb.addr()).await, "a");
        // An open connection keeps working and echoes through the proxy.
        let mut open = TcpStream::connect(lb.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        open.read_exact(&mut buf).await.unwrap();
        open.write_all(b"x").await.unwrap();
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        a_task.abort();
        let _ = a_task.await;
        // The listener is gone: new connections go to b at once.
        assert_eq!(greeting(lb.addr()).await, "b");
        assert_eq!(greeting(lb.addr()).await, "b");
    }

    #[tokio::test]
    async fn connections_to_a_server_found_down_are_closed() {
        let (a, a_task) = named_server("a").await;
        let (b, _b_task) = named_server("b").await;
        let lb = Failover::start(vec![a, b]).await.unwrap();
        let mut open = TcpStream::connect(lb.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a");
        // The server's process stops answering new connections; its
        // connection tasks leak on as a hung host's would.
        a_task.abort();
        let closed = tokio::time::timeout(HEALTH_PERIOD * 5, open.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    }

    #[tokio::test]
    async fn the_server_list_is_replaced_but_never_emptied() {
        let (a, _a_task) = named_server("a").await;
        let (b, _b_task) = named_server("b").await;
        let lb = Failover::start(vec![a]).await.unwrap();
        assert_eq!(greeting(lb.addr()).await, "a");
        lb.set_servers(vec![]);
        assert_eq!(lb.servers(), vec![a]);
        lb.set_servers(vec![b, b]);
        assert_eq!(lb.servers(), vec![b]);
        assert_eq!(greeting(lb.addr()).await, "b");
    }

    #[test]
    fn servers_are_read_from_every_subset() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "subsets": [
                {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"name": "https", "port": 6443}]},
                {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": 7443}]},
            ],
        }))
        .unwrap();
        let servers: Vec<String> = endpoint_servers(&endpoints)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            servers,
            ["10.0.0.1:6443", "10.0.0.2:6443", "127.0.0.1:7443"]
        );
    }
}
