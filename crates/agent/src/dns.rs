//! A pod's resolv.conf, as kubelet writes it from the pod's dnsPolicy and
//! dnsConfig, the cluster DNS and the node's own resolv.conf.

use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::PodSpec;
use kubox_dns::ResolvConf;

/// What resolvers can take: glibc reads 3 nameservers; kubelet's search limits.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The cluster's DNS as the node's pods see it.
#[derive(Clone, Debug)]
pub struct ClusterDns {
    /// The cluster DNS Service's address(es); none leaves pods on the node's resolvers.
    pub servers: Vec<IpAddr>,
    /// `cluster.local`.
    pub domain: String,
    /// The node's resolv.conf, which `Default` pods get and cluster DNS searches extend.
    pub host_resolv_conf: PathBuf,
}

/// The node's resolv.conf as kubelet reads it: search domains without their
/// trailing dot, and no root domain.
pub fn host(path: &std::path::Path) -> ResolvConf {
    let mut conf = ResolvConf::read(path);
    conf.searches = conf
        .searches
        .iter()
        .filter(|s| *s != ".")
        .map(|s| s.trim_end_matches('.').to_owned())
        .collect();
    conf
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// Options by name: a pod's dnsConfig option replaces one of the same name.
fn merge_options(base: &[String], pod: &[(String, Option<String>)]) -> Vec<String> {
    let name = |o: &str| o.split(':').next().unwrap_or_default().to_owned();
    let mut out: Vec<String> = Vec::new();
    for option in base {
        if !pod.iter().any(|(n, _)| *n == name(option))
            && !out.iter().any(|o| name(o) == name(option))
        {
            out.push(option.clone());
        }
    }
    for (n, value) in pod {
        let option = match value {
            Some(v) if !v.is_empty() => format!("{n}:{v}"),
            _ => n.clone(),
        };
        if let Some(existing) = out.iter_mut().find(|o| name(o) == *n) {
            *existing = option;
        } else {
            out.push(option);
        }
    }
    out
}

/// The resolv.conf of a pod of `namespace` with `spec`, given the node's.
pub fn resolv_conf(
    cluster: &ClusterDns,
    node: &ResolvConf,
    namespace: &str,
    spec: &PodSpec,
) -> ResolvConf {
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "Default" => Some(false),
        // ClusterFirst: host-network pods fall back to the node's resolvers.
        _ => Some(!host_network),
    };
    let mut conf = match cluster_first {
        None => ResolvConf::default(),
        // Without a cluster DNS kubelet, too, leaves the pod on the node's.
        Some(true) if !cluster.servers.is_empty() => {
            let domain = cluster.domain.trim_end_matches('.');
            let mut searches = Vec::new();
            if !domain.is_empty() {
                searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_owned(),
                ];
            }
            push_unique(&mut searches, node.searches.iter().cloned());
            ResolvConf {
                nameservers: cluster.servers.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        Some(_) => node.clone(),
    };
    if let Some(extra) = &spec.dns_config {
        let mut servers = conf.nameservers.clone();
        for ip in extra
            .nameservers
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
        {
            if !servers.contains(&ip) {
                servers.push(ip);
            }
        }
        conf.nameservers = servers;
        push_unique(&mut conf.searches, extra.searches.iter().flatten().cloned());
        let options: Vec<(String, Option<String>)> = extra
            .options
            .iter()
            .flatten()
            .filter_map(|o| Some((o.name.clone()?, o.value.clone())))
            .collect();
        conf.options = merge_options(&conf.options, &options);
    }
    fit_limits(&mut conf);
    conf
}

/// As kubelet, what resolvers would not read is dropped.
fn fit_limits(conf: &mut ResolvConf) {
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    let mut chars = 0;
    let mut keep = 0;
    for search in &conf.searches {
        let next = chars + search.len() + usize::from(keep > 0);
        if next > MAX_SEARCH_CHARS {
            break;
        }
        chars = next;
        keep += 1;
    }
    conf.searches.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.43.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
            host_resolv_conf: "/etc/resolv.conf".into(),
        }
    }

    fn node() -> ResolvConf {
        ResolvConf::parse("nameserver 192.168.1.1\nsearch corp.example\noptions timeout:2\n")
    }

    fn conf(spec: Value) -> String {
        let spec: PodSpec = serde_json::from_value(spec).unwrap();
        resolv_conf(&cluster(), &node(), "work", &spec).render()
    }

    #[test]
    fn cluster_first_searches_the_namespace_first() {
        let expected = "search work.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.43.0.10\noptions ndots:5\n";
        assert_eq!(conf(json!({"containers": []})), expected);
        assert_eq!(
            conf(json!({"containers": [], "dnsPolicy": "ClusterFirst"})),
            expected
        );
        assert_eq!(
            conf(
                json!({"containers": [], "dnsPolicy": "ClusterFirstWithHostNet", "hostNetwork": true})
            ),
            expected
        );
    }

    #[test]
    fn default_and_host_network_pods_get_the_nodes() {
        let node = "search corp.example\nnameserver 192.168.1.1\noptions timeout:2\n";
        assert_eq!(
            conf(json!({"containers": [], "dnsPolicy": "Default"})),
            node
        );
        assert_eq!(conf(json!({"containers": [], "hostNetwork": true})), node);
        let none = ClusterDns {
            servers: vec![],
            ..cluster()
        };
        let spec: PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
        assert_eq!(
            resolv_conf(&none, &self::node(), "work", &spec).render(),
            node
        );
    }

    #[test]
    fn dns_config_extends_and_overrides() {
        assert_eq!(
            conf(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            "search ns1.svc.cluster-domain.example my.dns.search.suffix\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        assert_eq!(
            conf(json!({"containers": [], "dnsConfig": {
                "nameservers": ["10.43.0.10", "8.8.8.8", "8.8.4.4", "1.1.1.1"], "searches": ["cluster.local", "extra"],
                "options": [{"name": "ndots", "value": "1"}, {"name": "single-request"}]}})),
            "search work.svc.cluster.local svc.cluster.local cluster.local corp.example extra\n\
             nameserver 10.43.0.10\nnameserver 8.8.8.8\nnameserver 8.8.4.4\noptions ndots:1 single-request\n"
        );
    }

    #[test]
    fn search_lists_fit_the_resolvers_limits() {
        let searches: Vec<String> = (0..40).map(|i| format!("s{i}.example")).collect();
        let spec: PodSpec = serde_json::from_value(
            json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"searches": searches}}),
        )
        .unwrap();
        assert_eq!(
            resolv_conf(&cluster(), &node(), "work", &spec)
                .searches
                .len(),
            32
        );
        let long: Vec<String> = (0..10).map(|i| format!("{i}{}", "a".repeat(250))).collect();
        let spec: PodSpec = serde_json::from_value(
            json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"searches": long}}),
        )
        .unwrap();
        let kept = resolv_conf(&cluster(), &node(), "work", &spec).searches;
        assert_eq!(kept.len(), 8, "8 × 251 characters and spaces fit in 2048");
    }

    #[test]
    fn host_searches_lose_trailing_dots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "search a.example. .\nnameserver 10.0.0.1\n").unwrap();
        assert_eq!(host(&path).searches, ["a.example"]);
    }
}
