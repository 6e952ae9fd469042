//! What the rules should be, computed from Services and EndpointSlices
//! alone (no nft here): one chain per service port, one per endpoint, one
//! for traffic from outside (NodePorts, load balancer and external IPs),
//! and the elements of the dispatch maps. Laid out as upstream's nftables
//! proxier: maps keyed by address, protocol and port send each packet
//! straight to its service's chain, whose `numgen random` picks an endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::nft::{self, concat, eq, fib_type, goto, jump, meta, ne, payload, prefix};

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
/// The bit that asks for masquerade, as upstream's 0x4000.
pub const MASQUERADE_MARK: u32 = 0x4000;
/// Upstream's default sessionAffinityConfig.clientIP.timeoutSeconds.
const AFFINITY_TIMEOUT: u32 = 10800;

/// Everything the proxy is told, besides the objects.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub cluster_cidr: Ipv4Net,
}

/// A dispatch map's element: its key, and the verdict.
pub type Elements = BTreeMap<String, (Value, Value)>;

/// The rules of one Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// The per-service and per-endpoint chains, each with its rules.
    pub chains: BTreeMap<String, Vec<Vec<Value>>>,
    /// The verdict maps, by name.
    pub maps: BTreeMap<&'static str, Elements>,
    /// ClusterIPs in use.
    pub cluster_ips: BTreeSet<Ipv4Addr>,
    /// Session affinity sets, by name, with their timeouts.
    pub affinity: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    ip: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

fn short_hash(s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

fn protocol(p: &ServicePort) -> String {
    p.protocol.as_deref().unwrap_or("TCP").to_lowercase()
}

/// The endpoints of one service port, from the service's slices.
fn endpoints(
    svc: &Service,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    node: &str,
) -> Vec<Endpoint> {
    let name = port.name.clone().unwrap_or_default();
    let proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let mut found: Vec<Endpoint> = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" || slice.namespace() != svc.namespace() {
            continue;
        }
        let Some(number) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.clone().unwrap_or_default() == name
                && p.protocol.clone().unwrap_or_else(|| "TCP".into()) == proto)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(number) = u16::try_from(number) else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let c = e.conditions.clone().unwrap_or_default();
            let endpoint = Endpoint {
                ip,
                port: number,
                // As upstream: an unknown ready condition means ready.
                ready: c.ready.unwrap_or(true),
                serving: c.serving.or(c.ready).unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
                local: e.node_name.as_deref() == Some(node),
            };
            if !found
                .iter()
                .any(|f| f.ip == endpoint.ip && f.port == endpoint.port)
            {
                found.push(endpoint);
            }
        }
    }
    found.sort_by_key(|e| (e.ip, e.port));
    found
}

/// The endpoints traffic may go to, as upstream: the ready ones; when
/// there are none, those still serving while terminating.
fn usable(endpoints: &[&Endpoint]) -> Vec<Endpoint> {
    let ready: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| (*e).clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| (*e).clone())
        .collect()
}

fn l4(proto: &str, port: u16) -> Vec<Value> {
    vec![
        eq(meta("l4proto"), json!(proto)),
        eq(payload("th", "dport"), json!(port)),
    ]
}

fn service_key(ip: &str, proto: &str, port: u16) -> (String, Value) {
    (
        format!("{ip} . {proto} . {port}"),
        concat(vec![json!(ip), json!(proto), json!(port)]),
    )
}

fn port_key(proto: &str, port: u16) -> (String, Value) {
    (
        format!("{proto} . {port}"),
        concat(vec![json!(proto), json!(port)]),
    )
}

/// The rules of every Service, each with the versions of the objects they
/// were made from: a Service whose objects did not change keeps its rules
/// without their being made again, and the difference between two models
/// is only in the Services that changed.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub services: BTreeMap<String, (Vec<String>, Arc<Rules>)>,
}

impl Model {
    /// The model for these objects, as seen from `node`, reusing the rules
    /// of `previous` where their objects are the same.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: &[&EndpointSlice],
        node: &Node,
        previous: Option<&Model>,
    ) -> Self {
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in slices {
            if let Some(svc) = slice.labels().get("kubernetes.io/service-name") {
                by_service
                    .entry((slice.namespace().unwrap_or_default(), svc.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut model = Model::default();
        for svc in services {
            let key = (svc.namespace().unwrap_or_default(), svc.name_any());
            let mine = by_service.remove(&key).unwrap_or_default();
            let versions: Vec<String> = std::iter::once(svc.resource_version())
                .chain(mine.iter().map(|s| s.resource_version()))
                .map(Option::unwrap_or_default)
                .collect();
            let id = format!("{}/{}", key.0, key.1);
            let rules = match previous.and_then(|p| p.services.get(&id)) {
                Some((v, rules)) if *v == versions => rules.clone(),
                _ => Arc::new(Rules::for_service(svc, &mine, node)),
            };
            model.services.insert(id, (versions, rules));
        }
        model
    }
}

impl Rules {
    fn element(&mut self, map: &'static str, key: (String, Value), verdict: Value) {
        self.maps
            .entry(map)
            .or_default()
            .insert(key.0, (key.1, verdict));
    }

    /// The rules of `svc`, whose slices are `mine`.
    fn for_service(svc: &Service, mine: &[&EndpointSlice], node: &Node) -> Self {
        let mut rules = Rules::default();
        rules.add_service(svc, mine, node);
        rules
    }

    fn add_service(&mut self, svc: &Service, mine: &[&EndpointSlice], node: &Node) {
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            // Headless and ExternalName Services have no proxy rules.
            return;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return;
        }
        self.cluster_ips.insert(cluster_ip);
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(AFFINITY_TIMEOUT)
        });
        let mut external_ips: Vec<String> = spec.external_ips.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("LoadBalancer") {
            external_ips.extend(
                svc.status
                    .iter()
                    .filter_map(|s| s.load_balancer.as_ref())
                    .flat_map(|lb| lb.ingress.iter().flatten())
                    .filter_map(|i| i.ip.clone()),
            );
        }
        external_ips.retain(|ip| ip.parse::<Ipv4Addr>().is_ok());
        for port in spec.ports.iter().flatten() {
            let proto = protocol(port);
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let node_port = port
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0);
            let id = format!(
                "{ns}/{name}/{proto}/{}",
                port.name.clone().unwrap_or_default()
            );
            let hash = short_hash(&id);
            let all = endpoints(svc, port, mine, &node.name);
            let refs: Vec<&Endpoint> = all.iter().collect();
            let locals: Vec<&Endpoint> = all.iter().filter(|e| e.local).collect();
            let cluster = usable(if internal_local { &locals } else { &refs });
            let local = usable(&locals);
            let service_chain = format!("service-{hash}-{id}");
            let external_chain = format!("external-{hash}-{id}");
            let local_chain = format!("local-{hash}-{id}");
            let cip = cluster_ip.to_string();
            let has_external = node_port.is_some() || !external_ips.is_empty();
            let usable_any = !usable(&refs).is_empty();
            // Where traffic with nowhere to go is sent: refused at once
            // when the service has no endpoints at all, dropped when its
            // endpoints are only elsewhere and the policy keeps it local.
            let nowhere = |ok: bool| {
                if ok {
                    json!({"drop": null})
                } else {
                    goto(REJECT_CHAIN)
                }
            };

            if cluster.is_empty() {
                self.element(
                    NO_ENDPOINT_SERVICES,
                    service_key(&cip, &proto, number),
                    nowhere(usable_any),
                );
            } else {
                let mut rules = vec![{
                    let mut r = vec![eq(payload("ip", "daddr"), json!(cip))];
                    r.extend(l4(&proto, number));
                    r.push(ne(payload("ip", "saddr"), prefix(&node.cluster_cidr)));
                    r.push(jump(MARK_FOR_MASQUERADE));
                    r
                }];
                rules.extend(self.balance(&hash, &id, &cluster, affinity));
                self.chains.insert(service_chain.clone(), rules);
                self.element(
                    SERVICE_IPS,
                    service_key(&cip, &proto, number),
                    goto(&service_chain),
                );
            }
            if !has_external {
                continue;
            }
            // Traffic from outside: masqueraded and balanced over every
            // endpoint, or with externalTrafficPolicy Local kept on this
            // node's endpoints with its source intact (traffic from the
            // node itself may still go anywhere).
            let external_target = if external_local {
                if local.is_empty() {
                    None
                } else {
                    let rules = self.balance(&hash, &id, &local, affinity);
                    self.chains.insert(local_chain.clone(), rules);
                    let mut rules = Vec::new();
                    if !cluster.is_empty() {
                        rules.push(vec![
                            eq(fib_type("saddr"), json!("local")),
                            jump(MARK_FOR_MASQUERADE),
                        ]);
                        rules.push(vec![
                            eq(fib_type("saddr"), json!("local")),
                            goto(&service_chain),
                        ]);
                    }
                    rules.push(vec![goto(&local_chain)]);
                    Some(rules)
                }
            } else if cluster.is_empty() {
                None
            } else {
                Some(vec![
                    vec![jump(MARK_FOR_MASQUERADE)],
                    vec![goto(&service_chain)],
                ])
            };
            match external_target {
                Some(rules) => {
                    self.chains.insert(external_chain.clone(), rules);
                    if let Some(np) = node_port {
                        self.element(
                            SERVICE_NODEPORTS,
                            port_key(&proto, np),
                            goto(&external_chain),
                        );
                    }
                    for ip in &external_ips {
                        self.element(
                            SERVICE_IPS,
                            service_key(ip, &proto, number),
                            goto(&external_chain),
                        );
                    }
                }
                None => {
                    if let Some(np) = node_port {
                        self.element(
                            NO_ENDPOINT_NODEPORTS,
                            port_key(&proto, np),
                            nowhere(usable_any),
                        );
                    }
                    for ip in &external_ips {
                        self.element(
                            NO_ENDPOINT_SERVICES,
                            service_key(ip, &proto, number),
                            nowhere(usable_any),
                        );
                    }
                }
            }
        }
    }

    fn endpoint_name(hash: &str, id: &str, e: &Endpoint) -> String {
        format!("endpoint-{hash}-{id}__{}/{}", e.ip, e.port)
    }

    /// Set names are shorter than chain names: the hash of the endpoint and
    /// timeout, so a new timeout is a new set.
    fn affinity_set(hash: &str, id: &str, e: &Endpoint, timeout: u32) -> String {
        format!(
            "affinity-{}",
            short_hash(&format!("{}/{timeout}", Self::endpoint_name(hash, id, e)))
        )
    }

    /// The chain that sends traffic to one endpoint: masquerade when a
    /// pod reaches itself (hairpin), remember the client for affinity, DNAT.
    fn endpoint_chain(
        &mut self,
        hash: &str,
        id: &str,
        e: &Endpoint,
        affinity: Option<u32>,
    ) -> String {
        let name = Self::endpoint_name(hash, id, e);
        let proto = id.split('/').nth(2).unwrap_or("tcp").to_owned();
        let mut rules = vec![vec![
            eq(payload("ip", "saddr"), json!(e.ip.to_string())),
            jump(MARK_FOR_MASQUERADE),
        ]];
        let mut last = Vec::new();
        if let Some(timeout) = affinity {
            let set = Self::affinity_set(hash, id, e, timeout);
            last.push(json!({"set": {"op": "update", "elem": payload("ip", "saddr"), "set": format!("@{set}")}}));
            self.affinity.insert(set, timeout);
        }
        last.push(eq(meta("l4proto"), json!(proto)));
        last.push(json!({"dnat": {"addr": e.ip.to_string(), "port": e.port}}));
        rules.push(last);
        self.chains.insert(name.clone(), rules);
        name
    }

    /// Rules picking one of `endpoints` at random; a client with affinity
    /// goes back to the endpoint it had.
    fn balance(
        &mut self,
        hash: &str,
        id: &str,
        endpoints: &[Endpoint],
        affinity: Option<u32>,
    ) -> Vec<Vec<Value>> {
        let mut rules = Vec::new();
        let names: Vec<String> = endpoints
            .iter()
            .map(|e| self.endpoint_chain(hash, id, e, affinity))
            .collect();
        if let Some(timeout) = affinity {
            for (e, chain) in endpoints.iter().zip(&names) {
                let set = Self::affinity_set(hash, id, e, timeout);
                rules.push(vec![
                    eq(payload("ip", "saddr"), json!(format!("@{set}"))),
                    goto(chain),
                ]);
            }
        }
        let choices: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, chain)| json!([i, goto(chain)]))
            .collect();
        rules.push(vec![json!({"vmap": {
            "key": {"numgen": {"mode": "random", "mod": names.len()}},
            "data": {"set": choices},
        }})]);
        rules
    }
}

/// The fixed frame every sync's model lives in: the hooks, the dispatch
/// maps and sets, and the chains shared by all services.
pub fn frame(batch: &mut nft::Batch, service_cidr: &Ipv4Net) {
    for (map, key) in [
        (
            SERVICE_IPS,
            &["ipv4_addr", "inet_proto", "inet_service"][..],
        ),
        (
            NO_ENDPOINT_SERVICES,
            &["ipv4_addr", "inet_proto", "inet_service"][..],
        ),
        (SERVICE_NODEPORTS, &["inet_proto", "inet_service"][..]),
        (NO_ENDPOINT_NODEPORTS, &["inet_proto", "inet_service"][..]),
    ] {
        batch.add_verdict_map(map, key);
    }
    batch.add_set(CLUSTER_IPS, &["ipv4_addr"], None);
    let chains = [
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
        ("filter-input", "filter", "input", -10),
        ("filter-forward", "filter", "forward", -10),
        ("filter-output", "filter", "output", -10),
    ];
    for (name, kind, hook, priority) in chains {
        batch.add_base_chain(name, kind, hook, priority);
    }
    for chain in [
        "services",
        "masquerading",
        MARK_FOR_MASQUERADE,
        REJECT_CHAIN,
        "service-endpoints-check",
        "nodeport-endpoints-check",
        "cluster-ips-check",
    ] {
        batch.add_chain(chain);
    }
    let new = nft::ct_state_new();
    batch.add_rule("nat-prerouting", vec![jump("services")]);
    batch.add_rule("nat-output", vec![jump("services")]);
    batch.add_rule("nat-postrouting", vec![jump("masquerading")]);
    batch.add_rule(
        "filter-input",
        vec![new.clone(), jump("nodeport-endpoints-check")],
    );
    for chain in ["filter-input", "filter-forward", "filter-output"] {
        batch.add_rule(chain, vec![new.clone(), jump("service-endpoints-check")]);
    }
    for chain in ["filter-forward", "filter-output"] {
        batch.add_rule(chain, vec![new.clone(), jump("cluster-ips-check")]);
    }
    let service_tuple = concat(vec![
        payload("ip", "daddr"),
        meta("l4proto"),
        payload("th", "dport"),
    ]);
    let port_tuple = concat(vec![meta("l4proto"), payload("th", "dport")]);
    batch.add_rule(
        "services",
        vec![json!({"vmap": {"key": service_tuple, "data": format!("@{SERVICE_IPS}")}})],
    );
    // NodePorts on every address of the node, 127.0.0.1 included.
    batch.add_rule(
        "services",
        vec![
            eq(fib_type("daddr"), json!("local")),
            json!({"vmap": {"key": port_tuple, "data": format!("@{SERVICE_NODEPORTS}")}}),
        ],
    );
    batch.add_rule(
        "service-endpoints-check",
        vec![json!({"vmap": {"key": service_tuple, "data": format!("@{NO_ENDPOINT_SERVICES}")}})],
    );
    batch.add_rule(
        "nodeport-endpoints-check",
        vec![
            eq(fib_type("daddr"), json!("local")),
            json!({"vmap": {"key": port_tuple, "data": format!("@{NO_ENDPOINT_NODEPORTS}")}}),
        ],
    );
    // A ClusterIP on a port it does not serve is refused; an address of
    // the service range no Service has is dropped.
    let cluster_ip = eq(payload("ip", "daddr"), json!(format!("@{CLUSTER_IPS}")));
    for refusal in refusals() {
        let mut rule = vec![cluster_ip.clone()];
        rule.extend(refusal);
        batch.add_rule("cluster-ips-check", rule);
    }
    batch.add_rule(
        "cluster-ips-check",
        vec![
            eq(payload("ip", "daddr"), prefix(service_cidr)),
            json!({"drop": null}),
        ],
    );
    let mark = meta("mark");
    batch.add_rule(
        MARK_FOR_MASQUERADE,
        vec![json!({"mangle": {"key": mark, "value": {"|": [mark, MASQUERADE_MARK]}}})],
    );
    batch.add_rule(
        "masquerading",
        vec![
            eq(json!({"&": [mark, MASQUERADE_MARK]}), json!(0)),
            json!({"return": null}),
        ],
    );
    batch.add_rule(
        "masquerading",
        vec![json!({"mangle": {"key": mark, "value": {"^": [mark, MASQUERADE_MARK]}}})],
    );
    batch.add_rule(
        "masquerading",
        vec![json!({"masquerade": {"flags": ["fully-random"]}})],
    );
    for refusal in refusals() {
        batch.add_rule(REJECT_CHAIN, refusal);
    }
}

/// Refusing a connection: a TCP reset for TCP, which a pod's client sees
/// at once (an ICMP error for a forwarded SYN may only count at the SYN's
/// retransmission, a second later), ICMP port unreachable for the rest.
fn refusals() -> [Vec<Value>; 2] {
    [
        vec![
            eq(meta("l4proto"), json!("tcp")),
            json!({"reject": {"type": "tcp reset"}}),
        ],
        vec![json!({"reject": null})],
    ]
}
