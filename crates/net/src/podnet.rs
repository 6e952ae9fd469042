//! The pod network of one node. Once the node has its podCIDR, a bridge
//! holds the range's first address as every pod's gateway; each pod gets a
//! veth pair, its end in the pod's network namespace as eth0 with an
//! address from the range. Other nodes' ranges are reached over VXLAN (as
//! flannel's backend): a route per node via its VTEP address on the VXLAN
//! device, a permanent neighbour entry for that address and a forwarding
//! entry sending its MAC to the node's address. VXLAN works whether nodes
//! share an L2 segment or not, so it is the only way between nodes. Traffic
//! from pods leaving the cluster CIDR is masqueraded.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::ipam::Ipam;
use crate::links::{self, Links};
use crate::nft::{self, Batch};
use crate::{NetConfig, NetError};

/// What VXLAN adds to every packet (outer Ethernet, IP, UDP, VXLAN headers).
const VXLAN_OVERHEAD: u32 = 50;
/// How long a pod waits for its node's podCIDR before its sandbox fails (and is retried).
const READY_WAIT: Duration = Duration::from_secs(30);
/// How often the bridge, the masquerade table and the routes are checked.
const CHECK: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct PodNetConfig {
    pub net: NetConfig,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// Where the IPAM records live (under the agent's state directory).
    pub state_dir: PathBuf,
}

/// The network once the node's range is set up.
#[derive(Debug)]
struct Ready {
    range: Ipv4Net,
    bridge: u32,
    mtu: u32,
}

pub struct PodNetwork {
    config: PodNetConfig,
    ipam: Ipam,
    links: Links,
    ready: watch::Receiver<Option<Arc<Ready>>>,
    _tasks: kubox_client::Tasks,
}

/// The host end of a pod's veth pair.
fn veth_name(uid: &str) -> String {
    format!("veth{}", short_hash(uid))
}

/// The pod end, made in the pod's namespace and renamed eth0 there.
fn peer_name(uid: &str) -> String {
    format!("kbxp{}", short_hash(uid))
}

fn short_hash(s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

pub fn ipam_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("net").join("ips")
}

impl PodNetwork {
    /// Watches the nodes; the network is set up once this node has a
    /// podCIDR, and routes to the others follow theirs.
    pub async fn start(client: kube::Client, config: PodNetConfig) -> Result<Arc<Self>, NetError> {
        nft::sysctl("net/ipv4/ip_forward", "1")?;
        let ipam = Ipam::open(&ipam_dir(&config.state_dir))?;
        let (ready_tx, ready) = watch::channel(None);
        let (store, writer) = reflector::store::<Node>();
        let api: Api<Node> = Api::all(client);
        let nodes = watcher(api, watcher::Config::default())
            .backoff(kubox_client::node_watch_backoff())
            .reflect(writer)
            .touched_objects();
        let follow = tokio::spawn(follow_nodes(config.clone(), nodes, store, ready_tx));
        Ok(Arc::new(Self {
            links: Links::connect()?,
            config,
            ipam,
            ready,
            _tasks: kubox_client::Tasks::new(vec![follow]),
        }))
    }

    /// This node's pod range, once the network is set up on it (its bridge
    /// then has the range's gateway address); `None` if it never will be.
    pub async fn pod_range(&self) -> Option<Ipv4Net> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| r.is_some())
            .await
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.range))
    }

    async fn wait_ready(&self) -> Result<Arc<Ready>, NetError> {
        let mut ready = self.ready.clone();
        let wait = ready.wait_for(|r| r.is_some());
        match tokio::time::timeout(READY_WAIT, wait).await {
            Ok(Ok(r)) => Ok(r.clone().expect("waited for it")),
            _ => Err(NetError::NotReady(format!(
                "node {} has no podCIDR yet",
                self.config.node_name
            ))),
        }
    }

    /// Gives the pod whose network namespace is open at `netns` its eth0
    /// and address; the address, when it already has one, stays.
    pub async fn attach(&self, uid: &str, netns: &Path) -> Result<Ipv4Addr, NetError> {
        let ready = self.wait_ready().await?;
        let ip = self.ipam.allocate(&ready.range, uid)?;
        let file =
            std::fs::File::open(netns).map_err(|e| NetError::Io(netns.display().to_string(), e))?;
        let peer = peer_name(uid);
        let result = async {
            self.links
                .add_veth(&veth_name(uid), &peer, ready.mtu, ready.bridge, &file)
                .await?;
            let address = Ipv4Net::new(ip, ready.range.prefix_len())
                .map_err(|e| NetError::Other(e.to_string()))?;
            links::configure_pod(netns, peer, address, crate::gateway(&ready.range)).await
        }
        .await;
        if let Err(e) = result {
            let _ = self.detach(uid).await;
            return Err(e);
        }
        Ok(ip)
    }

    /// The address a pod holds, for a pod whose sandbox outlived an agent.
    pub fn pod_ip(&self, uid: &str) -> Option<Ipv4Addr> {
        self.ipam.lookup(uid)
    }

    /// Takes the pod's veth pair away and frees its address.
    pub async fn detach(&self, uid: &str) -> Result<(), NetError> {
        self.links.delete(&veth_name(uid)).await?;
        self.ipam.release(uid)
    }

    /// Frees what pods that no longer exist hold: their addresses, and
    /// their veths left in the bridge (their namespaces may be gone). A pair
    /// is made in the bridge in one request (`Links::add_veth`), so there is
    /// none outside it to look for.
    pub async fn reconcile(&self, live: &HashSet<String>) -> Result<(), NetError> {
        for owner in self.ipam.retain(|o| live.contains(o)) {
            tracing::info!(
                pod = owner,
                "releasing the address of a pod that no longer exists"
            );
            if !owner.is_empty() {
                self.links.delete(&veth_name(&owner)).await?;
            }
        }
        let Some(bridge) = self.links.index(&self.config.net.bridge).await? else {
            return Ok(());
        };
        let kept: HashSet<String> = live.iter().map(|uid| veth_name(uid)).collect();
        for link in self.links.all().await? {
            if links::link_controller(&link) != Some(bridge) {
                continue;
            }
            let Some(name) = links::link_name(&link) else {
                continue;
            };
            if kept.contains(name) {
                // An agent stopped within attach may not have set it.
                self.links.set_hairpin(link.header.index).await?;
            } else {
                self.links.delete(name).await?;
            }
        }
        Ok(())
    }
}

/// Follows the node objects: sets up (again) when this node's range
/// appears or changes, and keeps the routes to the other nodes.
async fn follow_nodes(
    config: PodNetConfig,
    nodes: impl futures::Stream<Item = Result<Node, watcher::Error>>,
    store: Store<Node>,
    ready_tx: watch::Sender<Option<Arc<Ready>>>,
) {
    let links = match Links::connect() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("the pod network cannot reach netlink: {e}");
            return;
        }
    };
    let mut nodes = std::pin::pin!(nodes);
    let mut current: Option<Arc<Ready>> = None;
    let mut check = tokio::time::interval(CHECK);
    loop {
        let checking = tokio::select! {
            event = nodes.next() => match event {
                Some(Ok(_)) => false,
                Some(Err(e)) => {
                    tracing::warn!("watching nodes: {e}");
                    continue;
                }
                None => return,
            },
            _ = check.tick() => true,
        };
        let all = store.state();
        let Some(range) = all
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&config.node_name))
            .and_then(|n| pod_range(n))
        else {
            continue;
        };
        // What someone removed by hand comes back at the next check.
        let intact = match &current {
            Some(r) if r.range == range => {
                !checking
                    || (links.index(&config.net.bridge).await.ok().flatten() == Some(r.bridge)
                        && nft::table_exists(&config.net.pods_table())
                            .await
                            .unwrap_or(false))
            }
            _ => false,
        };
        if !intact {
            match set_up(&links, &config, range).await {
                Ok(ready) => {
                    tracing::info!(%range, "pod network ready");
                    let ready = Arc::new(ready);
                    current = Some(ready.clone());
                    let _ = ready_tx.send(Some(ready));
                }
                Err(e) => {
                    tracing::warn!(%range, "setting up the pod network: {e}");
                    continue;
                }
            }
        }
        if let Err(e) = route_peers(&links, &config, range, &all).await {
            tracing::warn!("routing to other nodes' pods: {e}");
        }
    }
}

fn pod_range(node: &Node) -> Option<Ipv4Net> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
}

/// The bridge with the gateway address, the VXLAN device, the route that
/// keeps ClusterIP traffic on the node, and masquerade for traffic leaving.
async fn set_up(links: &Links, config: &PodNetConfig, range: Ipv4Net) -> Result<Ready, NetError> {
    let net = &config.net;
    let uplink = links
        .mtu_of_address(config.node_ip)
        .await?
        .unwrap_or(1500)
        .min(1500);
    let mtu = uplink - VXLAN_OVERHEAD;
    let bridge = links.ensure_bridge(&net.bridge, mtu).await?;
    let gateway = Ipv4Net::new(crate::gateway(&range), range.prefix_len())
        .map_err(|e| NetError::Other(e.to_string()))?;
    links.set_address(bridge, gateway).await?;
    // NodePorts on 127.0.0.1 are DNATed to pods: loopback-sourced packets
    // may then leave through the bridge, and pods may reach an API server
    // that listens on loopback.
    nft::sysctl(&format!("net/ipv4/conf/{}/route_localnet", net.bridge), "1")?;
    let vxlan = links
        .ensure_vxlan(
            &net.vxlan_device(),
            net.vxlan_vni,
            config.node_ip,
            net.vxlan_port,
            mtu,
            crate::vtep_mac(&range),
        )
        .await?;
    links
        .set_address(
            vxlan,
            Ipv4Net::new(crate::vtep_address(&range), 32).expect("a /32"),
        )
        .await?;
    nft::sysctl(
        &format!("net/ipv4/conf/{}/route_localnet", net.vxlan_device()),
        "1",
    )?;
    // ClusterIPs have no route of their own: without this one, a packet to
    // one the proxy has no rule for would follow the default route off
    // the node, and on a node with no default route the node itself could
    // not connect to ClusterIPs at all. The metric is the bridge's index,
    // so clusters sharing a network namespace do not replace each other's.
    links
        .replace_route(net.service_cidr, bridge, None, Some(bridge))
        .await?;
    masquerade(net).await?;
    Ok(Ready { range, bridge, mtu })
}

/// Pods' traffic to anywhere outside the cluster CIDR leaves with the
/// node's address.
async fn masquerade(net: &NetConfig) -> Result<(), NetError> {
    let table = net.pods_table();
    let mut batch = Batch::new(&table);
    batch.add_table();
    batch.delete_table();
    batch.add_table();
    batch.add_base_chain("postrouting", "nat", "postrouting", 100);
    let cidr = nft::prefix(&net.cluster_cidr);
    batch.add_rule(
        "postrouting",
        vec![
            nft::eq(nft::payload("ip", "saddr"), cidr.clone()),
            nft::ne(nft::payload("ip", "daddr"), cidr),
            nft::ne(
                nft::payload("ip", "daddr"),
                nft::prefix(&"224.0.0.0/4".parse().expect("a prefix")),
            ),
            serde_json::json!({"masquerade": {"flags": ["fully-random"]}}),
        ],
    );
    batch.apply().await
}

/// Routes to the pod range of every other node over VXLAN; routes to
/// nodes (or ranges) that went away are removed.
async fn route_peers(
    links: &Links,
    config: &PodNetConfig,
    mine: Ipv4Net,
    nodes: &[Arc<Node>],
) -> Result<(), NetError> {
    let Some(vxlan) = links.index(&config.net.vxlan_device()).await? else {
        return Ok(());
    };
    let mut wanted: Vec<Ipv4Net> = Vec::new();
    for node in nodes {
        let (Some(range), Some(ip)) = (pod_range(node), internal_ip(node)) else {
            continue;
        };
        if range == mine || node.metadata.name.as_deref() == Some(&config.node_name) {
            continue;
        }
        let vtep = crate::vtep_address(&range);
        links
            .replace_neighbour(vxlan, vtep, crate::vtep_mac(&range))
            .await?;
        links
            .replace_fdb(vxlan, crate::vtep_mac(&range), ip)
            .await?;
        links.replace_route(range, vxlan, Some(vtep), None).await?;
        wanted.push(range);
    }
    for route in links.routes(vxlan).await? {
        if Links::route_destination(&route).is_some_and(|d| !wanted.contains(&d)) {
            links.delete_route(route).await?;
        }
    }
    Ok(())
}
