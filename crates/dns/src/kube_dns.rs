//! The `kube-dns` Service in kube-system, as a cluster's DNS addon has it.
//! It has no selector (no pod backs it): the API servers write its
//! endpoints, the cluster DNS of every live server, from where each
//! announced that its DNS answers, as they write the `kubernetes` Service's.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

pub const SERVICE_NAME: &str = "kube-dns";
pub const SERVICE_NAMESPACE: &str = "kube-system";

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
    upsert(&services, service).await
}

/// Creates the object, or replaces the stored one with it.
async fn upsert<K>(api: &Api<K>, object: Value) -> Result<(), kube::Error>
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
