//! The objects every cluster starts with.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::{Api, ObjectRef, WriteOptions};
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

/// The first address of the service range (10.43.0.0/16) belongs to the
/// `kubernetes` Service, as upstream gives it the range's first address.
pub const KUBERNETES_SERVICE_IP: &str = "10.43.0.1";

const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

fn find(api: &Api, group: &str, version: &str, plural: &str) -> ApiResult<Arc<ResourceType>> {
    api.registry
        .get(group, version, plural)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("{plural} is not registered")))
}

pub async fn run(api: &Api, advertise: IpAddr, https_port: u16, ca_pem: &str) -> ApiResult<()> {
    let namespaces = find(api, "", "v1", "namespaces")?;
    for ns in NAMESPACES {
        api.ensure(&namespaces, None, json!({"metadata": {"name": ns}}))
            .await?;
    }
    let services = find(api, "", "v1", "services")?;
    let kubernetes = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": KUBERNETES_SERVICE_IP,
            "clusterIPs": [KUBERNETES_SERVICE_IP],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": https_port}],
            "sessionAffinity": "None",
        },
    });
    api.ensure(&services, Some("default"), kubernetes).await?;
    let classes = find(api, "scheduling.k8s.io", "v1", "priorityclasses")?;
    for class in crate::priority::system_classes() {
        api.ensure(&classes, None, class).await?;
    }
    cluster_info(api, advertise, https_port, ca_pem).await
}

/// kube-public's `cluster-info` ConfigMap, as kubeadm publishes it: a
/// kubeconfig naming the API server and its CA, readable anonymously, so a
/// joining node can fetch the CA and check it against its join token's
/// hash before trusting the server.
async fn cluster_info(
    api: &Api,
    advertise: IpAddr,
    https_port: u16,
    ca_pem: &str,
) -> ApiResult<()> {
    use base64::Engine;
    let server = match advertise {
        IpAddr::V6(ip) => format!("https://[{ip}]:{https_port}"),
        IpAddr::V4(ip) => format!("https://{ip}:{https_port}"),
    };
    let kubeconfig = format!(
        "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: \"\"
contexts: null
current-context: \"\"
kind: Config
preferences: {{}}
users: null
",
        ca = base64::engine::general_purpose::STANDARD.encode(ca_pem),
    );
    let info = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    });
    let rt = find(api, "", "v1", "configmaps")?;
    upsert(api, &rt, "kube-public", info, &["data"]).await
}

/// Creates `obj`, or replaces the stored one when one of its `fields` differs.
pub(crate) async fn upsert(
    api: &Api,
    rt: &ResourceType,
    ns: &str,
    obj: Value,
    fields: &[&str],
) -> ApiResult<()> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::to_vec(&obj).unwrap_or_default();
    match api.get(rt, Some(ns), &name).await {
        Ok(current) if fields.iter().all(|f| current[f] == obj[f]) => Ok(()),
        Ok(_) => {
            let target = ObjectRef {
                rt,
                ns: Some(ns),
                name: &name,
                subresource: None,
            };
            api.update(target, &body, &WriteOptions::default())
                .await
                .map(drop)
        }
        Err(e) if e.reason == "NotFound" => api
            .create(rt, Some(ns), &body, &WriteOptions::default())
            .await
            .map(drop),
        Err(e) => Err(e),
    }
}
