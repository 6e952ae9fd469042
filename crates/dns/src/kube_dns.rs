//! The `kube-dns` Service in kube-system, as a cluster's DNS addon has it,
//! pointed at where this server answers. It has no selector (no pod backs
//! it), so its Endpoints and EndpointSlice are written here, as the API
//! server writes the `kubernetes` Service's.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

pub const SERVICE_NAME: &str = "kube-dns";
pub const SERVICE_NAMESPACE: &str = "kube-system";
/// The managed-by label that keeps the EndpointSlice controller off this slice.
const MANAGER: &str = "kubox-dns";

/// Creates or updates the `kube-dns` Service at `cluster_ip` and its
/// endpoints at `endpoint`. A Service left with another ClusterIP (the
/// flag changed) is replaced, as a ClusterIP cannot change.
pub async fn publish(
    client: kube::Client,
    cluster_ip: IpAddr,
    endpoint: SocketAddr,
) -> Result<(), kube::Error> {
    let labels = json!({
        "k8s-app": "kube-dns",
        "kubernetes.io/cluster-service": "true",
        "kubernetes.io/name": "CoreDNS",
    });
    let port = endpoint.port();
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
    let services: Api<Service> = Api::namespaced(client.clone(), SERVICE_NAMESPACE);
    if let Some(current) = services.get_opt(SERVICE_NAME).await?
        && current.spec.as_ref().and_then(|s| s.cluster_ip.as_deref())
            != Some(cluster_ip.to_string().as_str())
    {
        services
            .delete(SERVICE_NAME, &DeleteParams::default())
            .await?;
    }
    upsert(&services, service).await?;
    let ip = endpoint.ip().to_string();
    let ports = json!([
        {"name": "dns", "port": port, "protocol": "UDP"},
        {"name": "dns-tcp", "port": port, "protocol": "TCP"},
    ]);
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {
            "name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE,
            "labels": {"k8s-app": "kube-dns", "endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": [{"addresses": [{"ip": ip}], "ports": ports}],
    });
    upsert(
        &Api::<Endpoints>::namespaced(client.clone(), SERVICE_NAMESPACE),
        endpoints,
    )
    .await?;
    let address_type = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/service-name": SERVICE_NAME,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
        },
        "addressType": address_type,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": ports,
    });
    upsert(
        &Api::<EndpointSlice>::namespaced(client, SERVICE_NAMESPACE),
        slice,
    )
    .await
}

/// Creates the object, or replaces the stored one with it.
async fn upsert<K>(api: &Api<K>, object: serde_json::Value) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut object: K = serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
    match api.get_opt(SERVICE_NAME).await? {
        None => api.create(&PostParams::default(), &object).await.map(drop),
        Some(current) => {
            object.meta_mut().resource_version = current.meta().resource_version.clone();
            api.replace(SERVICE_NAME, &PostParams::default(), &object)
                .await
                .map(drop)
        }
    }
}
