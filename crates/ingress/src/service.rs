//! The Service `kubox-ingress` in kube-system, as ingress-nginx has its
//! controller's Service: `kubectl get svc -n kube-system` shows where the
//! ingress is, and pods reach it by ClusterIP (its endpoint is the node).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

pub const NAME: &str = "kubox-ingress";
const NAMESPACE: &str = "kube-system";

/// Creates the Service and its EndpointSlice, or brings them up to date
/// (a merge patch, so fields others add stay).
pub async fn publish(
    client: &kube::Client,
    node_ip: IpAddr,
    http_port: u16,
    https_port: u16,
) -> Result<(), kube::Error> {
    let labels =
        json!({"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "controller"});
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        "spec": {"type": "ClusterIP", "ports": [
            {"name": "http", "port": 80, "targetPort": http_port, "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": https_port, "protocol": "TCP"},
        ]},
    });
    upsert(
        Api::<Service>::namespaced(client.clone(), NAMESPACE),
        service,
    )
    .await?;
    let address_type = if node_ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {
            "kubernetes.io/service-name": NAME,
            "endpointslice.kubernetes.io/managed-by": NAME,
        }},
        "addressType": address_type,
        "endpoints": [{"addresses": [node_ip.to_string()], "conditions": {"ready": true}}],
        "ports": [
            {"name": "http", "port": http_port, "protocol": "TCP"},
            {"name": "https", "port": https_port, "protocol": "TCP"},
        ],
    });
    upsert(
        Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE),
        slice,
    )
    .await
}

async fn upsert<K>(api: Api<K>, object: serde_json::Value) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &typed).await {
        Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => {
            api.patch(NAME, &PatchParams::default(), &Patch::Merge(&object))
                .await?;
            Ok(())
        }
        other => other.map(|_| ()),
    }
}
