//! The `kube-dns` Service in kube-system, as a cluster's DNS addon has it.
//! It has no selector (no pod backs it): its Endpoints and EndpointSlices
//! list the cluster DNS of every live server, written by the one elected
//! among them, as the API servers write the `kubernetes` Service's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

pub const SERVICE_NAME: &str = "kube-dns";
pub const SERVICE_NAMESPACE: &str = "kube-system";
/// The managed-by label that keeps the EndpointSlice controller off these slices.
const MANAGER: &str = "kubox-dns";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Creates or updates the `kube-dns` Service at `cluster_ip`, forwarding
/// to `port`. A Service left with another ClusterIP (the flag changed) is
/// replaced, as a ClusterIP cannot change.
pub async fn publish_service(
    client: kube::Client,
    cluster_ip: IpAddr,
    port: u16,
) -> Result<(), kube::Error> {
    let labels = json!({
        "k8s-app": "kube-dns",
        "kubernetes.io/cluster-service": "true",
        "kubernetes.io/name": "CoreDNS",
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port},
            ],
        },
    });
    let services: Api<Service> = Api::namespaced(client, SERVICE_NAMESPACE);
    if let Some(current) = services.get_opt(SERVICE_NAME).await?
        && current.spec.as_ref().and_then(|s| s.cluster_ip.as_deref())
            != Some(cluster_ip.to_string().as_str())
    {
        services
            .delete(SERVICE_NAME, &DeleteParams::default())
            .await?;
    }
    upsert(&services, SERVICE_NAME, service, "spec").await
}

fn ports(port: u16) -> Value {
    json!([
        {"name": "dns", "port": port, "protocol": "UDP"},
        {"name": "dns-tcp", "port": port, "protocol": "TCP"},
    ])
}

/// Writes the `kube-dns` Endpoints (one subset per port) and EndpointSlices
/// (`kube-dns` for the lowest port, `kube-dns-<port>` for others: servers
/// on one machine answer on different ports) listing `servers`, and deletes
/// slices of ports no longer listed. Objects already so are left alone.
pub async fn write_endpoints(
    client: kube::Client,
    servers: &[SocketAddr],
) -> Result<(), kube::Error> {
    let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
    for s in servers {
        by_port.entry(s.port()).or_default().push(s.ip());
    }
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            let addresses: Vec<Value> =
                ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            json!({"addresses": addresses, "ports": ports(*port)})
        })
        .collect();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {
            "name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": subsets,
    });
    upsert(
        &Api::<Endpoints>::namespaced(client.clone(), SERVICE_NAMESPACE),
        SERVICE_NAME,
        endpoints,
        "subsets",
    )
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, SERVICE_NAMESPACE);
    let mut wanted = Vec::new();
    for (i, (port, ips)) in by_port.iter().enumerate() {
        let name = if i == 0 {
            SERVICE_NAME.to_owned()
        } else {
            format!("{SERVICE_NAME}-{port}")
        };
        let address_type = if ips[0].is_ipv4() { "IPv4" } else { "IPv6" };
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": SERVICE_NAMESPACE,
                "labels": {
                    "k8s-app": "kube-dns",
                    "kubernetes.io/service-name": SERVICE_NAME,
                    MANAGED_BY: MANAGER,
                },
            },
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": ports(*port),
        });
        upsert(&slices, &name, slice, "endpoints").await?;
        wanted.push(name);
    }
    let ours = slices
        .list(&ListParams::default().labels(&format!("{MANAGED_BY}={MANAGER}")))
        .await?;
    for slice in ours.items {
        let name = slice.metadata.name.unwrap_or_default();
        if !wanted.contains(&name) {
            slices.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// Creates the object, or replaces the stored one with it unless its
/// `field` (and, for slices, ports) is already the same.
async fn upsert<K>(api: &Api<K>, name: &str, object: Value, field: &str) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut typed: K = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    match api.get_opt(name).await? {
        None => api.create(&PostParams::default(), &typed).await.map(drop),
        Some(current) => {
            let stored = serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
            let normalized = serde_json::to_value(&typed).map_err(kube::Error::SerdeError)?;
            if stored[field] == normalized[field] && stored["ports"] == normalized["ports"] {
                return Ok(());
            }
            typed.meta_mut().resource_version = current.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &typed)
                .await
                .map(drop)
        }
    }
}
