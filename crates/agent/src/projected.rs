//! Projected volumes: one directory of files from several sources — a
//! ServiceAccount token from the TokenRequest API (bound to the pod, kept
//! fresh as the kubelet does), ConfigMap and Secret keys, and the pod's own
//! metadata (downward API). The ServiceAccount admission plugin gives every
//! pod one of these for its API credentials.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ObjectFieldSelector, Pod, ProjectedVolumeSource, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::volumes::{File, MountError, Source, key_values, select, setup_err};

/// Tokens asked for when a source names no lifetime, as upstream defaults.
const DEFAULT_EXPIRATION: i64 = 3600;
/// Past this share of its lifetime a token is replaced, as the kubelet does.
const REFRESH_AT: f64 = 0.8;

/// The files of a projected volume; `current` is the volume's directory,
/// whose token is kept while it is fresh.
pub async fn files(
    client: &kube::Client,
    pod: &Pod,
    volume: &str,
    projected: &ProjectedVolumeSource,
    current: &Path,
) -> Result<Vec<File>, MountError> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    // Each source's API call (a token, a ConfigMap) goes out at once; the
    // files keep the sources' order, and the first failing source in that
    // order is the one told.
    let sources = projected.sources.iter().flatten().map(|source| {
        let ns = &ns;
        async move {
            let mut files = Vec::new();
            if let Some(t) = &source.service_account_token {
                let expiration = t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION);
                let token = match fresh(&current.join(&t.path)) {
                    Some(token) => token,
                    None => request_token(client, pod, t.audience.as_deref(), expiration)
                        .await
                        .map_err(|e| setup_err(volume, e))?,
                };
                files.push((t.path.clone(), token.into_bytes(), None));
            }
            let from_object = match (&source.config_map, &source.secret) {
                (Some(cm), _) => Some((
                    Source::ConfigMap,
                    &cm.name,
                    cm.optional,
                    cm.items.as_deref(),
                )),
                (None, Some(s)) => Some((Source::Secret, &s.name, s.optional, s.items.as_deref())),
                (None, None) => None,
            };
            if let Some((source, name, optional, items)) = from_object {
                match key_values(client, ns, source, name).await {
                    Ok(Some(data)) => files.extend(select(&data, items, volume)?),
                    Ok(None) if optional.unwrap_or(false) => {}
                    Ok(None) => return Err(setup_err(volume, source.not_found(name))),
                    Err(e) => return Err(setup_err(volume, e)),
                }
            }
            if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    let Some(field) = &item.field_ref else {
                        return Err(setup_err(
                            volume,
                            "downwardAPI resourceFieldRef items are not supported by kubox yet",
                        ));
                    };
                    let value = metadata_field(pod, field).ok_or_else(|| {
                        setup_err(
                            volume,
                            format!("unsupported fieldPath: {}", field.field_path),
                        )
                    })?;
                    files.push((item.path.clone(), value.into_bytes(), item.mode));
                }
            }
            Ok(files)
        }
    });
    let mut files = Vec::new();
    for made in futures::future::join_all(sources).await {
        files.extend(made?);
    }
    Ok(files)
}

/// A token file's token while it is within the first 80 % of its lifetime.
fn fresh(path: &Path) -> Option<String> {
    let token = std::fs::read_to_string(path).ok()?;
    let (iat, exp) = kubox_satoken::lifetime(&token)?;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let refresh = iat + ((exp - iat) as f64 * REFRESH_AT) as i64;
    (now < refresh).then_some(token)
}

async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: i64,
) -> Result<String, String> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]),
            expiration_seconds: Some(expiration),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let issued = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("failed to fetch token: {e}"))?;
    issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| "failed to fetch token: the TokenRequest has no status".into())
}

/// A pod metadata field as the downward API shows it in a file: a value,
/// or for labels and annotations every `key="value"` pair on its own line.
pub fn metadata_field(pod: &Pod, field: &ObjectFieldSelector) -> Option<String> {
    let meta = &pod.metadata;
    let pairs = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let path = field.field_path.as_str();
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(pairs(&meta.labels)),
        "metadata.annotations" => Some(pairs(&meta.annotations)),
        _ => {
            let one = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
                let key = path
                    .strip_prefix(prefix)?
                    .strip_prefix("['")?
                    .strip_suffix("']")?;
                Some(
                    map.as_ref()
                        .and_then(|m| m.get(key).cloned())
                        .unwrap_or_default(),
                )
            };
            one("metadata.labels", &meta.labels)
                .or_else(|| one("metadata.annotations", &meta.annotations))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_fields_of_the_pods_metadata() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "work", "uid": "u1", "labels": {"app": "web", "tier": "front"}},
        }))
        .unwrap();
        let field = |p: &str| {
            metadata_field(
                &pod,
                &ObjectFieldSelector {
                    field_path: p.into(),
                    api_version: None,
                },
            )
        };
        assert_eq!(field("metadata.namespace").as_deref(), Some("work"));
        assert_eq!(
            field("metadata.labels").as_deref(),
            Some("app=\"web\"\ntier=\"front\"")
        );
        assert_eq!(field("metadata.labels['tier']").as_deref(), Some("front"));
        assert_eq!(field("spec.nodeName"), None);
    }

    #[test]
    fn tokens_are_kept_until_80_percent_of_their_lifetime() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let write = |iat: i64, exp: i64| {
            let payload = serde_json::json!({"iss": "i", "sub": "s", "iat": iat, "exp": exp});
            let payload =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
            std::fs::write(dir.path().join("token"), format!("h.{payload}.s")).unwrap();
        };
        write(now - 100, now + 900);
        assert!(fresh(&dir.path().join("token")).is_some());
        write(now - 900, now + 100);
        assert!(fresh(&dir.path().join("token")).is_none());
        assert!(fresh(&dir.path().join("missing")).is_none());
    }
}
