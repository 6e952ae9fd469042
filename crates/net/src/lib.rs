//! kubox's cluster network, for the node agent: the pod network (our CNI:
//! a bridge, a veth pair per pod, IPAM from the node's podCIDR, VXLAN
//! between nodes, masquerade for traffic leaving the cluster) and the
//! service proxy (our kube-proxy, in nftables).

mod cleanup;
mod ipam;
mod links;
mod nft;
mod podnet;
pub mod proxy;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use cleanup::uninstall;
pub use ipam::Ipam;
pub use podnet::{PodNetConfig, PodNetwork};
pub use proxy::{Proxy, ProxyConfig};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("nftables: {0}")]
    Nft(#[from] nftables::helper::NftablesError),
    #[error("network is not ready: {0}")]
    NotReady(String),
    #[error("{0}")]
    Other(String),
}

/// What names the node's network things, so that several clusters (tests)
/// can share one network namespace without meeting.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Every pod address of the cluster.
    pub cluster_cidr: Ipv4Net,
    /// Every ClusterIP of the cluster.
    pub service_cidr: Ipv4Net,
    /// The pods' bridge; the VXLAN device is named after it.
    pub bridge: String,
    /// nftables tables are `<prefix>-pods` (masquerade) and `<prefix>-proxy` (services).
    pub nft_prefix: String,
    /// The VXLAN network identifier and UDP port nodes talk over.
    pub vxlan_vni: u32,
    pub vxlan_port: u16,
}

impl NetConfig {
    pub fn vxlan_device(&self) -> String {
        format!("{}-vx", self.bridge)
    }

    pub fn pods_table(&self) -> String {
        format!("{}-pods", self.nft_prefix)
    }

    pub fn proxy_table(&self) -> String {
        format!("{}-proxy", self.nft_prefix)
    }
}

/// The gateway of a pod range: its first address, on the bridge.
pub fn gateway(range: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.network()) + 1)
}

/// The VXLAN device address of a node: its pod range's network address
/// (as flannel), so traffic from the node to other nodes' pods has an
/// address they route back.
pub fn vtep_address(range: &Ipv4Net) -> Ipv4Addr {
    range.network()
}

/// The MAC address of a node's VXLAN device, made from its pod range, so
/// every node knows every other's without asking (ranges are unique).
pub fn vtep_mac(range: &Ipv4Net) -> [u8; 6] {
    let [a, b, c, d] = range.network().octets();
    [0x0e, 0x6b, a, b, c, d]
}
