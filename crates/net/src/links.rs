//! The node's links, addresses, routes and neighbours, through netlink
//! (rtnetlink), and the same inside a pod's network namespace from a
//! thread that joined it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, RawFd};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};

use crate::NetError;

/// Routes kubox makes carry this protocol number, so they are told from others.
const PROTOCOL: u8 = 0x6b;
const ENOENT: i32 = -2;
const ENODEV: i32 = -19;
const EEXIST: i32 = -17;
const ESRCH: i32 = -3;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code()),
        _ => None,
    }
}

/// A netlink connection in the network namespace of the thread that made it.
pub struct Links {
    handle: Handle,
}

impl Links {
    /// Connects; needs a tokio runtime, on which the connection runs.
    pub fn connect() -> Result<Self, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Io("opening a netlink socket".into(), e))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn get(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        Ok(self.get(name).await?.map(|l| l.header.index))
    }

    async fn must_index(&self, name: &str) -> Result<u32, NetError> {
        self.index(name)
            .await?
            .ok_or_else(|| NetError::Other(format!("link {name} is missing")))
    }

    /// Every link on the node, for finding a bridge's ports.
    pub async fn all(&self) -> Result<Vec<LinkMessage>, NetError> {
        Ok(self.handle.link().get().execute().try_collect().await?)
    }

    pub async fn delete(&self, name: &str) -> Result<(), NetError> {
        if let Some(index) = self.index(name).await? {
            match self.handle.link().del(index).execute().await {
                Err(e) if matches!(errno(&e), Some(ENODEV)) => {}
                r => r?,
            }
        }
        Ok(())
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        Ok(self.handle.link().set(message).execute().await?)
    }

    /// The bridge named `name`, made if missing, up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, NetError> {
        if self.index(name).await?.is_none() {
            let message = LinkBridge::new(name).mtu(mtu).build();
            match self.handle.link().add(message).execute().await {
                Err(e) if matches!(errno(&e), Some(EEXIST)) => {}
                r => r?,
            }
        }
        let index = self.must_index(name).await?;
        self.set_up(index).await?;
        Ok(index)
    }

    /// The VXLAN device named `name`, made (or made again, if its settings
    /// differ) with learning off: kubox programs its forwarding entries.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<u32, NetError> {
        if let Some(link) = self.get(name).await? {
            let same_mac = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Address(m) if m[..] == mac[..]));
            if same_mac {
                self.set_up(link.header.index).await?;
                return Ok(link.header.index);
            }
            self.delete(name).await?;
        }
        let message = LinkVxlan::new(name, vni)
            .local(local)
            .port(port)
            .learning(false)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        self.handle.link().add(message).execute().await?;
        let index = self.must_index(name).await?;
        self.set_up(index).await?;
        Ok(index)
    }

    /// Gives the link exactly the address `net`, dropping any other IPv4 one.
    pub async fn set_address(&self, index: u32, net: Ipv4Net) -> Result<(), NetError> {
        let existing: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        let mut present = false;
        for a in existing {
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            match ip {
                Some(ip) if ip == net.addr() && a.header.prefix_len == net.prefix_len() => {
                    present = true
                }
                Some(_) => self.handle.address().del(a).execute().await?,
                None => {}
            }
        }
        if !present {
            self.handle
                .address()
                .add(index, IpAddr::V4(net.addr()), net.prefix_len())
                .execute()
                .await?;
        }
        Ok(())
    }

    /// A veth pair: `host` stays here in `bridge`, with hairpin on (so a pod
    /// can reach itself through a Service), `peer` is made inside the network
    /// namespace open at `netns`.
    pub async fn add_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        bridge: u32,
        netns: &std::fs::File,
    ) -> Result<(), NetError> {
        use std::os::fd::AsRawFd;
        self.delete(host).await?;
        let message = veth_message(host, peer, mtu, bridge, netns.as_raw_fd());
        self.handle.link().add(message).execute().await?;
        let index = self.must_index(host).await?;
        self.set_hairpin(index).await
    }

    /// Hairpin on the bridge port `index`; idempotent.
    pub async fn set_hairpin(&self, index: u32) -> Result<(), NetError> {
        let port = LinkBridgePort::new(index).hairpin(true).build();
        Ok(self.handle.link().set_port(port).execute().await?)
    }

    /// In a pod's namespace: renames `link` to `name`, gives it `address`,
    /// brings it up and routes everything through `gateway`.
    async fn configure_pod_link(
        &self,
        link: &str,
        name: &str,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let index = self.must_index(link).await?;
        if link != name {
            let message = LinkUnspec::new_with_index(index)
                .name(name.to_owned())
                .build();
            self.handle.link().set(message).execute().await?;
        }
        self.set_address(index, address).await?;
        self.set_up(index).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        match self.handle.route().add(route).replace().execute().await {
            Err(e) if matches!(errno(&e), Some(EEXIST)) => Ok(()),
            r => Ok(r?),
        }
    }

    /// kubox's routes through `index`: destination and gateway.
    pub async fn routes(&self, index: u32) -> Result<Vec<RouteMessage>, NetError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await?;
        Ok(routes
            .into_iter()
            .filter(|r| r.header.protocol == RouteProtocol::Other(PROTOCOL))
            .filter(|r| {
                r.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
            })
            .collect())
    }

    pub fn route_destination(route: &RouteMessage) -> Option<Ipv4Net> {
        route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                Ipv4Net::new(*ip, route.header.destination_prefix_length).ok()
            }
            _ => None,
        })
    }

    /// `dst` through `index`: via `gateway` on the link when given (`onlink`),
    /// else straight onto it.
    pub async fn replace_route(
        &self,
        dst: Ipv4Net,
        index: u32,
        gateway: Option<Ipv4Addr>,
        metric: Option<u32>,
    ) -> Result<(), NetError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index)
            .protocol(RouteProtocol::Other(PROTOCOL));
        if let Some(gw) = gateway {
            route = route.gateway(gw).onlink();
        }
        if let Some(m) = metric {
            route = route.priority(m);
        }
        Ok(self
            .handle
            .route()
            .add(route.build())
            .replace()
            .execute()
            .await?)
    }

    pub async fn delete_route(&self, route: RouteMessage) -> Result<(), NetError> {
        match self.handle.route().del(route).execute().await {
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT)) => Ok(()),
            r => Ok(r?),
        }
    }

    /// A permanent neighbour: `ip` is at `mac` on `index`.
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetError> {
        Ok(self
            .handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    /// A VXLAN forwarding entry: frames for `mac` go to the node at `remote`.
    pub async fn replace_fdb(
        &self,
        index: u32,
        mac: [u8; 6],
        remote: Ipv4Addr,
    ) -> Result<(), NetError> {
        Ok(self
            .handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(IpAddr::V4(remote))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    /// The MTU of the link that has `ip`, if any does.
    pub async fn mtu_of_address(&self, ip: Ipv4Addr) -> Result<Option<u32>, NetError> {
        let addresses: Vec<_> = self.handle.address().get().execute().try_collect().await?;
        let Some(index) = addresses
            .iter()
            .find(|a| {
                a.attributes.iter().any(
                    |attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(a)) if *a == ip),
                )
            })
            .map(|a| a.header.index)
        else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        Ok(links.try_next().await?.and_then(|l| {
            let loopback = l.header.flags.contains(LinkFlags::Loopback);
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) if !loopback => Some(*m),
                _ => None,
            })
        }))
    }
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// Runs `work` in the network namespace open at `netns`, on a thread of its
/// own that joined it (a thread's namespace is its own; the runtime's
/// threads stay where they are), with a netlink connection made there.
pub async fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Links) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let file =
        std::fs::File::open(netns).map_err(|e| NetError::Io(netns.display().to_string(), e))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| NetError::Io("joining the pod's network namespace".into(), e.into()))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| NetError::Io("a runtime for the namespace thread".into(), e))?;
            runtime.block_on(async move {
                let links = Links::connect()?;
                work(links).await
            })
        })();
        let _ = tx.send(result);
    });
    rx.await
        .map_err(|_| NetError::Other("the namespace thread panicked".into()))?
}

/// Sets up a pod's side: `link` (just moved in) becomes eth0 with `address`.
/// One request makes the whole pair: the host end already in the bridge and
/// up, the peer already in the pod's namespace. Made in steps, an agent
/// killed between them would leave a pair outside the bridge, which nothing
/// would ever recognise as a pod's and remove.
fn veth_message(host: &str, peer: &str, mtu: u32, bridge: u32, netns: RawFd) -> LinkMessage {
    let peer = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .setns_by_fd(netns)
        .build();
    LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_owned())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .controller(bridge)
        .up()
        .build()
}

pub async fn configure_pod(
    netns: &Path,
    link: String,
    address: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    in_netns(netns, move |links| async move {
        links
            .configure_pod_link(&link, "eth0", address, gateway)
            .await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_veth_pair_is_made_in_the_bridge_and_the_pod_at_once() {
        let message = veth_message("vethab", "kbxpab", 1450, 7, 42);
        let attrs = &message.attributes;
        assert!(attrs.contains(&LinkAttribute::IfName("vethab".into())));
        assert!(attrs.contains(&LinkAttribute::Controller(7)));
        assert!(attrs.contains(&LinkAttribute::Mtu(1450)));
        assert!(message.header.flags.contains(LinkFlags::Up));
        let peer = attrs
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    rtnetlink::packet_route::link::LinkInfo::Data(InfoData::Veth(
                        InfoVeth::Peer(peer),
                    )) => Some(peer.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .expect("the peer is in the request");
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("kbxpab".into()))
        );
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(42)));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1450)));
    }
}
