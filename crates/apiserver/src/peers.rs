//! The `kubernetes` Service's endpoints list every live API server, as
//! upstream's lease endpoint reconciler keeps them: each server renews a
//! Lease `kube-system/apiserver-<hash>` (labelled as upstream's API server
//! identity leases) naming the address it advertises, and from the Leases
//! not expired writes the Endpoints and EndpointSlices; expired Leases (a
//! server gone) are deleted by whichever server sees them first. Every
//! server computes the same list, so N of them writing it agree. A server
//! shutting down deletes its lease and drops itself from the endpoints.
//! Components of the server announce where they serve as further
//! annotations on its lease: the `kube-dns` Service's endpoints are kept
//! the same way from where each server's cluster DNS answers; others (the
//! ingress controller) are read by API clients (`kubox_client::peers`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::{Api, ListOptions, ObjectRef, WriteOptions};
use crate::deletion::DeleteOptions;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

/// Upstream's identity lease label and value.
pub const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
const IDENTITY: &str = "kube-apiserver";
/// The `ip:port` a server's lease stands for.
pub const ADDRESS_ANNOTATION: &str = "kubox.io/advertise-address";
/// Upstream's master lease TTL (`--endpoint-reconciler-type=lease`).
const LEASE_SECONDS: i64 = 15;
/// How often each server renews its lease and rewrites the endpoints.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(5);
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The `ip:port` a server's cluster DNS answers on.
pub const DNS_ADDRESS: &str = "kubox.io/dns-address";

/// A selectorless Service every server serves, its endpoints the live
/// servers that announce an address for it.
struct Served {
    service: &'static str,
    namespace: &'static str,
    annotation: &'static str,
    /// The endpoint ports' names and protocols.
    ports: &'static [(&'static str, &'static str)],
    /// Labels of the Endpoints and of the EndpointSlices besides the
    /// service name.
    labels: fn() -> (Value, Value),
}

const KUBERNETES: Served = Served {
    service: "kubernetes",
    namespace: "default",
    annotation: ADDRESS_ANNOTATION,
    ports: &[("https", "TCP")],
    labels: || {
        (
            json!({"endpointslice.kubernetes.io/skip-mirror": "true"}),
            json!({}),
        )
    },
};

/// As a DNS addon labels it; the managed-by label keeps the EndpointSlice
/// controller off its slices.
const KUBE_DNS: Served = Served {
    service: "kube-dns",
    namespace: "kube-system",
    annotation: DNS_ADDRESS,
    ports: &[("dns", "UDP"), ("dns-tcp", "TCP")],
    labels: || {
        (
            json!({"k8s-app": "kube-dns", "endpointslice.kubernetes.io/skip-mirror": "true"}),
            json!({"k8s-app": "kube-dns", "endpointslice.kubernetes.io/managed-by": "kubox-dns"}),
        )
    },
};

const SERVED: [Served; 2] = [KUBERNETES, KUBE_DNS];

/// This server's place among its peers.
pub struct Peer {
    address: SocketAddr,
    lease: String,
    holder: String,
    /// Annotations the server's components announced, kept on every renewal.
    announced: Mutex<BTreeMap<String, String>>,
}

fn find(api: &Api, group: &str, plural: &str) -> ApiResult<Arc<ResourceType>> {
    let version = "v1";
    api.registry
        .get(group, version, plural)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("{plural} is not registered")))
}

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    // The API keeps lease times to the microsecond.
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

impl Peer {
    pub fn new(advertise: IpAddr, port: u16) -> Self {
        let address = SocketAddr::new(advertise, port);
        let digest = ring::digest::digest(&ring::digest::SHA256, address.to_string().as_bytes());
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let lease = format!("apiserver-{hash}");
        Self {
            holder: format!("{lease}_{}", uuid::Uuid::new_v4()),
            address,
            lease,
            announced: Mutex::default(),
        }
    }

    /// Adds `key: value` to this server's lease from its next renewal on.
    pub fn announce(&self, key: &str, value: String) {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), value);
    }

    /// Renews this server's lease, drops expired ones, and writes the
    /// endpoints of the Services every server serves for the live servers.
    pub async fn reconcile(&self, api: &Api) -> ApiResult<()> {
        let leases = find(api, "coordination.k8s.io", "leases")?;
        self.renew(api, &leases).await?;
        // Itself too, should the list lag the renewal.
        let mut live = live_servers(api, &leases).await?;
        live.push(self.annotations());
        for served in &SERVED {
            let addresses = addresses(&live, served.annotation);
            if !addresses.is_empty() {
                write_endpoints(api, served, &addresses).await?;
            }
        }
        Ok(())
    }

    /// Deletes this server's lease and writes the endpoints of the others,
    /// so clients stop coming here at once rather than when the lease runs
    /// out. The last server leaves the endpoints as they are: as upstream,
    /// never erase them all.
    pub async fn leave(&self, api: &Api) -> ApiResult<()> {
        let leases = find(api, "coordination.k8s.io", "leases")?;
        let deleted = api
            .delete(
                &leases,
                Some("kube-system"),
                &self.lease,
                &DeleteOptions::default(),
            )
            .await;
        match deleted {
            Err(e) if e.reason != "NotFound" => return Err(e),
            _ => {}
        }
        let mut live = live_servers(api, &leases).await?;
        let own = self.annotations();
        live.retain(|a| a.get(ADDRESS_ANNOTATION) != own.get(ADDRESS_ANNOTATION));
        for served in &SERVED {
            let addresses = addresses(&live, served.annotation);
            if !addresses.is_empty() {
                write_endpoints(api, served, &addresses).await?;
            }
        }
        Ok(())
    }

    /// What this server's lease is annotated with.
    fn annotations(&self) -> BTreeMap<String, String> {
        let mut annotations = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        annotations.insert(ADDRESS_ANNOTATION.to_owned(), self.address.to_string());
        annotations
    }

    async fn renew(&self, api: &Api, leases: &ResourceType) -> ApiResult<()> {
        let renew_time = now().format(&Rfc3339).unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_default();
        let annotations = self.annotations();
        let mut lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.lease,
                "namespace": "kube-system",
                "labels": {IDENTITY_LABEL: IDENTITY, "kubernetes.io/hostname": host},
                "annotations": annotations,
            },
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": renew_time,
            },
        });
        match api.get(leases, Some("kube-system"), &self.lease).await {
            Ok(current) => {
                lease["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                let body = serde_json::to_vec(&lease).unwrap_or_default();
                let target = ObjectRef {
                    rt: leases,
                    ns: Some("kube-system"),
                    name: &self.lease,
                    subresource: None,
                };
                api.update(target, &body, &WriteOptions::default())
                    .await
                    .map(drop)
            }
            Err(e) if e.reason == "NotFound" => {
                let body = serde_json::to_vec(&lease).unwrap_or_default();
                api.create(leases, Some("kube-system"), &body, &WriteOptions::default())
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Reconciles every [`RECONCILE_PERIOD`] until aborted.
    pub fn spawn(self: Arc<Self>, api: Arc<Api>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONCILE_PERIOD).await;
                if let Err(e) = self.reconcile(&api).await {
                    tracing::warn!(
                        "reconciling the kubernetes Service's endpoints: {}",
                        e.message
                    );
                }
            }
        })
    }
}

/// The annotations of the servers whose leases are live; expired leases
/// are deleted.
async fn live_servers(
    api: &Api,
    leases: &ResourceType,
) -> ApiResult<Vec<BTreeMap<String, String>>> {
    let listed = api
        .list(leases, Some("kube-system"), &ListOptions::default())
        .await?;
    let now = now();
    let mut live = Vec::new();
    for lease in listed["items"].as_array().into_iter().flatten() {
        let meta = &lease["metadata"];
        if meta["labels"][IDENTITY_LABEL] != IDENTITY {
            continue;
        }
        let renewed = lease["spec"]["renewTime"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let seconds = lease["spec"]["leaseDurationSeconds"]
            .as_i64()
            .unwrap_or(LEASE_SECONDS);
        if renewed.is_some_and(|r| r + time::Duration::seconds(seconds) > now) {
            live.push(serde_json::from_value(meta["annotations"].clone()).unwrap_or_default());
        } else if let Some(name) = meta["name"].as_str() {
            // Another server may have deleted it first: that is fine.
            let _ = api
                .delete(leases, Some("kube-system"), name, &DeleteOptions::default())
                .await;
        }
    }
    Ok(live)
}

/// The `ip:port`s the live servers announce as `annotation`, sorted, once each.
fn addresses(live: &[BTreeMap<String, String>], annotation: &str) -> Vec<SocketAddr> {
    let mut addresses: Vec<SocketAddr> = live
        .iter()
        .filter_map(|a| a.get(annotation)?.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The Endpoints (one subset per port) and EndpointSlices (named as the
/// Service for the lowest port, `<service>-<port>` for others: servers on
/// one machine listen on different ports) of `served` listing `live`.
async fn write_endpoints(api: &Api, served: &Served, live: &[SocketAddr]) -> ApiResult<()> {
    let ns = served.namespace;
    let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
    for a in live {
        by_port.entry(a.port()).or_default().push(a.ip());
    }
    let ports = |port: u16| -> Value {
        served
            .ports
            .iter()
            .map(|(name, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
            .collect()
    };
    let (endpoints_labels, mut slice_labels) = (served.labels)();
    slice_labels[SERVICE_NAME_LABEL] = json!(served.service);
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            let addresses: Vec<Value> =
                ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            json!({"addresses": addresses, "ports": ports(*port)})
        })
        .collect();
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": served.service, "namespace": ns, "labels": endpoints_labels},
        "subsets": subsets,
    });
    let rt = find(api, "", "endpoints")?;
    crate::bootstrap::upsert(api, &rt, ns, endpoints, &["subsets"]).await?;
    let slices = find(api, "discovery.k8s.io", "endpointslices")?;
    let mut wanted = Vec::new();
    for (i, (port, ips)) in by_port.iter().enumerate() {
        let name = if i == 0 {
            served.service.to_owned()
        } else {
            format!("{}-{port}", served.service)
        };
        let address_type = if ips[0].is_ipv4() { "IPv4" } else { "IPv6" };
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": slice_labels},
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": ports(*port),
        });
        crate::bootstrap::upsert(api, &slices, ns, slice, &["endpoints", "ports"]).await?;
        wanted.push(name);
    }
    let listed = api.list(&slices, Some(ns), &ListOptions::default()).await?;
    for slice in listed["items"].as_array().into_iter().flatten() {
        let meta = &slice["metadata"];
        let Some(name) = meta["name"].as_str() else {
            continue;
        };
        if meta["labels"][SERVICE_NAME_LABEL] == served.service
            && name.starts_with(served.service)
            && !wanted.iter().any(|w| w == name)
        {
            let _ = api
                .delete(&slices, Some(ns), name, &DeleteOptions::default())
                .await;
        }
    }
    Ok(())
}
