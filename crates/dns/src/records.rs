//! The cluster zone as CoreDNS's kubernetes plugin serves it, built whole
//! from the cached Services and EndpointSlices each time one changes, so a
//! query is a map lookup.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Every answer's TTL, as the kubernetes plugin's default.
pub const TTL: u32 = 5;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the zone says of a name and type.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The records of that type (a CNAME stands for any type).
    Records(Vec<Record>),
    /// The name exists, with no records of that type.
    NoData,
    /// No such name in the zone.
    NxDomain,
    /// Not a name this zone answers for: ask upstream.
    NotOurs,
}

pub struct Zone {
    domain: Name,
    soa: Record,
    records: HashMap<Name, Vec<Record>>,
    /// Every name with records and every name between them and the domain
    /// (`ns.svc.cluster.local`): those answer "no data", not NXDOMAIN.
    names: HashSet<Name>,
    /// Reverse names of addresses the cluster owns (ClusterIPs, endpoints).
    reverse: HashMap<Name, Vec<Record>>,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok().map(|n| n.to_lowercase())
}

/// `10.42.0.7` as `10-42-0-7`, how endpoints without a hostname are named.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn address(owner: &Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, rdata)
}

/// One endpoint of a Service: its DNS label and addresses.
struct Endpoint {
    label: String,
    ips: Vec<IpAddr>,
}

/// The ready endpoints of each Service (by namespace and name), and each
/// one's ports by name, from the EndpointSlices labelled for it.
type Backends<'a> = HashMap<(&'a str, &'a str), (Vec<Endpoint>, Vec<(String, String, u16)>)>;

fn backends<'a>(
    slices: &[&'a EndpointSlice],
    publish_not_ready: &HashSet<(&str, &str)>,
) -> Backends<'a> {
    let mut out: Backends = HashMap::new();
    for slice in slices {
        let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.as_deref(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        let entry = out.entry((ns, svc.as_str())).or_default();
        let all = publish_not_ready.contains(&(ns, svc.as_str()));
        for ep in slice.endpoints.iter().flatten() {
            // Readiness unknown (nil) counts as ready, as upstream's consumers read it.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !all {
                continue;
            }
            let ips: Vec<IpAddr> = ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            let Some(first) = ips.first() else { continue };
            let label = ep.hostname.clone().unwrap_or_else(|| dashed(*first));
            entry.0.push(Endpoint { label, ips });
        }
        for port in slice.ports.iter().flatten() {
            let (Some(n), Some(p)) = (port.name.clone(), port.port) else {
                continue;
            };
            let proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let Ok(p) = u16::try_from(p) else { continue };
            if !entry.1.iter().any(|(en, ep, _)| *en == n && *ep == proto) {
                entry.1.push((n, proto, p));
            }
        }
    }
    out
}

/// SRV weights share 100 among the records of one name, as CoreDNS does.
fn srv_records(owner: &Name, targets: &[(u16, Name)]) -> Vec<Record> {
    let weight = u16::try_from(100 / targets.len().max(1)).unwrap_or(100);
    targets
        .iter()
        .map(|(port, target)| {
            Record::from_rdata(
                owner.clone(),
                TTL,
                RData::SRV(SRV::new(0, weight, *port, target.clone())),
            )
        })
        .collect()
}

impl Zone {
    /// The zone of `domain` (`cluster.local`) for these Services and slices.
    pub fn build<'a>(
        domain: &Name,
        services: impl IntoIterator<Item = &'a Service>,
        slices: &[&EndpointSlice],
    ) -> Self {
        let soa = Record::from_rdata(
            domain.clone(),
            TTL,
            RData::SOA(SOA::new(
                child("ns.dns", domain),
                child("hostmaster", domain),
                1,
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        let services: Vec<&Service> = services.into_iter().collect();
        let publish_not_ready = services
            .iter()
            .filter(|s| s.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true))
            .filter_map(|s| {
                Some((
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                ))
            })
            .collect();
        let backends = backends(slices, &publish_not_ready);
        let mut zone = Zone {
            soa,
            records: HashMap::new(),
            names: HashSet::new(),
            reverse: HashMap::new(),
            domain: domain.clone(),
        };
        for svc in services {
            zone.add_service(svc, &backends);
        }
        let mut names = HashSet::new();
        for owner in zone.records.keys() {
            let mut n = owner.clone();
            while n.num_labels() > zone.domain.num_labels() {
                names.insert(n.clone());
                n = n.base_name();
            }
        }
        zone.names = names;
        zone
    }

    fn add(&mut self, record: Record) {
        self.records
            .entry(record.name().clone())
            .or_default()
            .push(record);
    }

    fn add_reverse(&mut self, ip: IpAddr, target: &Name) {
        let owner = Name::from(ip).to_lowercase();
        let records = self.reverse.entry(owner.clone()).or_default();
        if !records
            .iter()
            .any(|r| r.data() == &RData::PTR(PTR(target.clone())))
        {
            records.push(Record::from_rdata(
                owner,
                TTL,
                RData::PTR(PTR(target.clone())),
            ));
        }
    }

    fn add_service(&mut self, svc: &Service, backends: &Backends) {
        let (Some(ns), Some(svc_name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            return;
        };
        let Some(base) =
            name(&format!("{svc_name}.{ns}.svc")).and_then(|n| n.append_domain(&self.domain).ok())
        else {
            return;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec
                .external_name
                .as_deref()
                .and_then(|n| name(n.trim_end_matches('.')))
                .and_then(|n| n.append_domain(&Name::root()).ok())
            {
                self.add(Record::from_rdata(base, TTL, RData::CNAME(CNAME(target))));
            }
            return;
        }
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        for ip in spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
        {
            if let Ok(ip) = ip.parse()
                && !cluster_ips.contains(&ip)
            {
                cluster_ips.push(ip);
            }
        }
        let ports: Vec<(String, String, u16)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    u16::try_from(p.port).ok()?,
                ))
            })
            .collect();
        let empty = (Vec::new(), Vec::new());
        let (endpoints, endpoint_ports) = backends.get(&(ns, svc_name)).unwrap_or(&empty);
        // Endpoints are named under their Service, and reverse to those
        // names, whether the Service is headless or not.
        let mut endpoint_names = Vec::new();
        for ep in endpoints {
            let Some(owner) = name(&ep.label).and_then(|l| l.append_domain(&base).ok()) else {
                continue;
            };
            for ip in &ep.ips {
                self.add(address(&owner, *ip));
                self.add_reverse(*ip, &owner);
            }
            endpoint_names.push(owner);
        }
        if cluster_ips.is_empty() {
            // Headless: the Service's name is its endpoints'.
            for ep in endpoints {
                for ip in &ep.ips {
                    self.add(address(&base, *ip));
                }
            }
            let mut all = Vec::new();
            for (port_name, proto, port) in endpoint_ports {
                let targets: Vec<(u16, Name)> =
                    endpoint_names.iter().map(|t| (*port, t.clone())).collect();
                all.extend(targets.iter().cloned());
                if let Some(owner) = srv_owner(port_name, proto, &base) {
                    for r in srv_records(&owner, &targets) {
                        self.add(r);
                    }
                }
            }
            for r in srv_records(&base, &all) {
                self.add(r);
            }
        } else {
            for ip in &cluster_ips {
                self.add(address(&base, *ip));
                self.add_reverse(*ip, &base);
            }
            for (port_name, proto, port) in &ports {
                if let Some(owner) = srv_owner(port_name, proto, &base) {
                    for r in srv_records(&owner, &[(*port, base.clone())]) {
                        self.add(r);
                    }
                }
            }
            let all: Vec<(u16, Name)> = ports.iter().map(|(_, _, p)| (*p, base.clone())).collect();
            for r in srv_records(&base, &all) {
                self.add(r);
            }
        }
    }

    /// The zone's SOA, for the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// Whether `name` is in the cluster domain.
    pub fn contains(&self, name: &Name) -> bool {
        self.domain.zone_of(name)
    }

    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Answer {
        let qname = qname.to_lowercase();
        if !self.contains(&qname) {
            if qtype == RecordType::PTR
                && let Some(records) = self.reverse.get(&qname)
            {
                return Answer::Records(records.clone());
            }
            return Answer::NotOurs;
        }
        if qname == self.domain {
            return match qtype {
                RecordType::SOA => Answer::Records(vec![self.soa.clone()]),
                _ => Answer::NoData,
            };
        }
        if let Some(answer) = self.pod(&qname, qtype) {
            return answer;
        }
        let Some(records) = self.records.get(&qname) else {
            return if self.names.contains(&qname) || self.is_namespace_level(&qname) {
                Answer::NoData
            } else {
                Answer::NxDomain
            };
        };
        let matching: Vec<Record> = records
            .iter()
            .filter(|r| r.record_type() == qtype || r.record_type() == RecordType::CNAME)
            .cloned()
            .collect();
        if matching.is_empty() {
            Answer::NoData
        } else {
            Answer::Records(matching)
        }
    }

    /// `svc.<domain>` and `pod.<domain>` always exist.
    fn is_namespace_level(&self, qname: &Name) -> bool {
        qname.num_labels() == self.domain.num_labels() + 1
            && matches!(qname.iter().next(), Some(b"svc" | b"pod"))
    }

    /// `a-b-c-d.<ns>.pod.<domain>`: the address in the name, as the plugin's
    /// `pods insecure` mode answers without looking the pod up.
    fn pod(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let extra = labels
            .len()
            .checked_sub(usize::from(self.domain.num_labels()))?;
        if extra < 2 || labels[extra - 1] != b"pod" {
            return None;
        }
        match extra {
            2 => Some(Answer::NoData),
            3 => {
                let ip = std::str::from_utf8(labels[0]).ok()?.replace('-', ".");
                let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                    return Some(Answer::NxDomain);
                };
                Some(match qtype {
                    RecordType::A => Answer::Records(vec![address(qname, IpAddr::V4(ip))]),
                    _ => Answer::NoData,
                })
            }
            _ => None,
        }
    }
}

/// `labels` under `domain`, or the domain itself if that is too long a name.
fn child(labels: &str, domain: &Name) -> Name {
    name(labels)
        .and_then(|n| n.append_domain(domain).ok())
        .unwrap_or_else(|| domain.clone())
}

fn srv_owner(port_name: &str, proto: &str, base: &Name) -> Option<Name> {
    if port_name.is_empty() {
        return None;
    }
    name(&format!("_{port_name}._{}", proto.to_lowercase()))?
        .append_domain(base)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn svc(name: &str, spec: Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "work"}, "spec": spec}),
        )
        .unwrap()
    }

    fn slice(svc: &str, endpoints: Value, ports: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "work",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }))
        .unwrap()
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn zone(services: &[Service], slices: &[EndpointSlice]) -> Zone {
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        Zone::build(
            &crate::domain_name("cluster.local").unwrap(),
            services,
            &refs,
        )
    }

    fn rdata(answer: Answer) -> Vec<String> {
        match answer {
            Answer::Records(records) => {
                assert!(records.iter().all(|r| r.ttl() == TTL));
                records.iter().map(|r| r.data().to_string()).collect()
            }
            other => panic!("no records: {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_services_answer_their_address_srv_and_ptr() {
        let z = zone(
            &[svc(
                "saythx-redis",
                json!({"clusterIP": "10.43.215.147", "clusterIPs": ["10.43.215.147"],
                       "ports": [{"name": "redis", "port": 6379}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
            )],
            &[],
        );
        let base = n("saythx-redis.work.svc.cluster.local.");
        assert_eq!(rdata(z.lookup(&base, RecordType::A)), ["10.43.215.147"]);
        assert_eq!(
            rdata(z.lookup(&n("SAYTHX-Redis.work.svc.cluster.local."), RecordType::A)),
            ["10.43.215.147"]
        );
        assert_eq!(z.lookup(&base, RecordType::AAAA), Answer::NoData);
        assert_eq!(
            rdata(z.lookup(
                &n("_redis._tcp.saythx-redis.work.svc.cluster.local."),
                RecordType::SRV
            )),
            ["0 100 6379 saythx-redis.work.svc.cluster.local."]
        );
        assert_eq!(
            rdata(z.lookup(
                &n("_dns._udp.saythx-redis.work.svc.cluster.local."),
                RecordType::SRV
            )),
            ["0 100 53 saythx-redis.work.svc.cluster.local."]
        );
        assert_eq!(
            rdata(z.lookup(&base, RecordType::SRV)),
            [
                "0 50 6379 saythx-redis.work.svc.cluster.local.",
                "0 50 53 saythx-redis.work.svc.cluster.local."
            ]
        );
        assert_eq!(
            rdata(z.lookup(&n("147.215.43.10.in-addr.arpa."), RecordType::PTR)),
            ["saythx-redis.work.svc.cluster.local."]
        );
        // Empty non-terminals exist; a missing name does not.
        assert_eq!(
            z.lookup(&n("work.svc.cluster.local."), RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            z.lookup(&n("svc.cluster.local."), RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            z.lookup(&n("nothing.work.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            z.lookup(
                &n("_http._tcp.saythx-redis.work.svc.cluster.local."),
                RecordType::SRV
            ),
            Answer::NxDomain
        );
        assert_eq!(
            rdata(z.lookup(&n("cluster.local."), RecordType::SOA)),
            ["ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"]
        );
        assert_eq!(z.lookup(&n("example.com."), RecordType::A), Answer::NotOurs);
        assert_eq!(
            z.lookup(&n("1.0.0.10.in-addr.arpa."), RecordType::PTR),
            Answer::NotOurs
        );
    }

    #[test]
    fn headless_services_answer_ready_endpoints_and_their_hostnames() {
        let endpoints = json!([
            {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "conditions": {}},
            {"addresses": ["10.42.0.7"], "hostname": "db-2", "conditions": {"ready": false}},
        ]);
        let ports = json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]);
        let z = zone(
            &[svc(
                "db",
                json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
            )],
            &[slice("db", endpoints.clone(), ports.clone())],
        );
        let mut all = rdata(z.lookup(&n("db.work.svc.cluster.local."), RecordType::A));
        all.sort();
        assert_eq!(all, ["10.42.0.5", "10.42.0.6"]);
        assert_eq!(
            rdata(z.lookup(&n("db-0.db.work.svc.cluster.local."), RecordType::A)),
            ["10.42.0.5"]
        );
        assert_eq!(
            rdata(z.lookup(&n("10-42-0-6.db.work.svc.cluster.local."), RecordType::A)),
            ["10.42.0.6"]
        );
        assert_eq!(
            z.lookup(&n("db-2.db.work.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            rdata(z.lookup(&n("_pg._tcp.db.work.svc.cluster.local."), RecordType::SRV)),
            [
                "0 50 5432 db-0.db.work.svc.cluster.local.",
                "0 50 5432 10-42-0-6.db.work.svc.cluster.local."
            ]
        );
        assert_eq!(
            rdata(z.lookup(&n("5.0.42.10.in-addr.arpa."), RecordType::PTR)),
            ["db-0.db.work.svc.cluster.local."]
        );

        // publishNotReadyAddresses: every endpoint is named.
        let z = zone(
            &[svc(
                "db",
                json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
            )],
            &[slice("db", endpoints, ports)],
        );
        assert_eq!(
            rdata(z.lookup(&n("db-2.db.work.svc.cluster.local."), RecordType::A)),
            ["10.42.0.7"]
        );
    }

    #[test]
    fn external_names_are_cnames() {
        let z = zone(
            &[svc(
                "search",
                json!({"type": "ExternalName", "externalName": "www.Example.com"}),
            )],
            &[],
        );
        let name = n("search.work.svc.cluster.local.");
        assert_eq!(rdata(z.lookup(&name, RecordType::A)), ["www.example.com."]);
        assert_eq!(
            rdata(z.lookup(&name, RecordType::CNAME)),
            ["www.example.com."]
        );
    }

    #[test]
    fn pod_names_carry_their_address() {
        let z = zone(&[], &[]);
        assert_eq!(
            rdata(z.lookup(&n("10-42-0-9.work.pod.cluster.local."), RecordType::A)),
            ["10.42.0.9"]
        );
        assert_eq!(
            z.lookup(&n("10-42-0-9.work.pod.cluster.local."), RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(
            z.lookup(&n("not-an-ip.work.pod.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            z.lookup(&n("work.pod.cluster.local."), RecordType::A),
            Answer::NoData
        );
        assert_eq!(
            z.lookup(&n("pod.cluster.local."), RecordType::A),
            Answer::NoData
        );
    }

    #[test]
    fn another_domain_is_served_instead() {
        let z = Zone::build(
            &crate::domain_name("kubox.internal.").unwrap(),
            &[svc("web", json!({"clusterIP": "10.43.0.20"}))],
            &[],
        );
        assert_eq!(
            rdata(z.lookup(&n("web.work.svc.kubox.internal."), RecordType::A)),
            ["10.43.0.20"]
        );
        assert_eq!(
            z.lookup(&n("web.work.svc.cluster.local."), RecordType::A),
            Answer::NotOurs
        );
    }
}
