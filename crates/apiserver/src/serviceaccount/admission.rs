//! The ServiceAccount admission plugin, as upstream's: a new pod runs as
//! `default` unless it names a ServiceAccount, which must exist, and unless
//! automounting is turned off (by the pod, or else by its ServiceAccount)
//! every container gets the `kube-api-access-*` projected volume: a bound
//! token, the cluster CA and the namespace, at the path client libraries
//! look for them.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::admission::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::status::{ApiError, ApiResult};

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The lifetime the kubelet's tokens are asked for (an hour and 7 s, so a
/// server can tell them from others).
const TOKEN_EXPIRATION: i64 = 3607;
/// How long a lookup of `default` waits for the ServiceAccount controller,
/// which may not have made it yet in a new namespace (a loaded machine can
/// take seconds), before the pod is refused.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(100);

pub struct ServiceAccount;

async fn lookup(reads: &Reads<'_>, ns: &str, name: &str) -> ApiResult<Option<Value>> {
    let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
    loop {
        let key = format!("/registry/serviceaccounts/{ns}/{name}");
        if let Some(account) = reads.get("serviceaccounts", &key).await? {
            return Ok(Some(account));
        }
        if name != "default" || tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{
                    "path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                }]}},
            ],
        },
    })
}

/// Mounts the token volume into every container that has nothing at its path.
fn mount(spec: &mut Value) {
    let existing = spec["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(VOLUME_PREFIX))
            .map(str::to_owned)
    });
    let name = match existing {
        Some(name) => name,
        None => {
            let name = format!("{VOLUME_PREFIX}{}", crate::api::generate_suffix());
            match spec["volumes"].as_array_mut() {
                Some(vs) => vs.push(volume(&name)),
                None => spec["volumes"] = json!([volume(&name)]),
            }
            name
        }
    };
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            let taken = c["volumeMounts"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == MOUNT_PATH));
            if taken {
                continue;
            }
            let m = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
        }
    }
}

#[async_trait]
impl AdmissionPlugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    async fn mutate(
        &self,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        if attrs.operation != Operation::Create
            || attrs.resource.plural != "pods"
            || attrs.subresource.is_some()
            // Mirror pods come from a node's own manifests and get no token.
            || obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string()
        {
            return Ok(());
        }
        let ns = attrs.namespace.unwrap_or("default");
        // In a missing namespace NamespaceLifecycle refuses the pod.
        if reads
            .get("namespaces", &format!("/registry/namespaces/{ns}"))
            .await?
            .is_none()
        {
            return Ok(());
        }
        let spec = &mut obj["spec"];
        let name = match spec["serviceAccountName"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            Some(n) => n.to_owned(),
            None => spec["serviceAccount"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned(),
        };
        spec["serviceAccountName"] = json!(name);
        spec["serviceAccount"] = json!(name);
        let Some(account) = lookup(reads, ns, &name).await? else {
            return Err(ApiError::forbidden_on(
                "",
                "pods",
                attrs.name,
                &format!(
                    "error looking up service account {ns}/{name}: serviceaccount {name:?} not found"
                ),
            ));
        };
        let automount = spec["automountServiceAccountToken"]
            .as_bool()
            .or_else(|| account["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if automount {
            mount(spec);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_one_volume_unless_its_path_is_taken() {
        let mut spec = json!({
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        });
        mount(&mut spec);
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().unwrap();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        let sources = &volumes[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
        assert_eq!(spec["initContainers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(spec["containers"][0]["volumeMounts"][1]["readOnly"], true);
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        mount(&mut spec);
        assert_eq!(
            spec["volumes"].as_array().unwrap().len(),
            2,
            "one volume only"
        );
    }
}
