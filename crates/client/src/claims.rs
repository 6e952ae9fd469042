//! The PersistentVolumeClaims a pod's volumes use.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// A claim one of a pod's volumes uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodClaim {
    pub name: String,
    /// A generic ephemeral volume's claim, named `<pod>-<volume>` and made
    /// for the pod by the ephemeral volume controller.
    pub ephemeral: bool,
}

/// The claims the pod's volumes name, in the order of its volumes.
pub fn pod_claims(pod: &Pod) -> impl Iterator<Item = PodClaim> + '_ {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    volumes.into_iter().flatten().filter_map(move |v| {
        if let Some(c) = &v.persistent_volume_claim {
            Some(PodClaim {
                name: c.claim_name.clone(),
                ephemeral: false,
            })
        } else {
            v.ephemeral.as_ref().map(|_| PodClaim {
                name: format!("{}-{}", pod.name_any(), v.name),
                ephemeral: true,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_ephemeral_claims_in_volume_order() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [], "volumes": [
                {"name": "scratch", "ephemeral": {}},
                {"name": "conf", "configMap": {"name": "c"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "db"}}]}}))
        .unwrap();
        let claims: Vec<_> = pod_claims(&pod).map(|c| (c.name, c.ephemeral)).collect();
        assert_eq!(
            claims,
            [("web-scratch".to_owned(), true), ("db".to_owned(), false)]
        );
    }
}
