//! The objects every cluster starts with.

use std::sync::Arc;

use serde_json::json;

use crate::api::Api;
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

pub async fn run(api: &Api, https_port: u16) -> ApiResult<()> {
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
    Ok(())
}
