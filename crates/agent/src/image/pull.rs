//! Pulling images from OCI distribution registries (Docker Hub, a private
//! registry) into the store: the manifest (this machine's one when the tag
//! names a multi-platform index), its config and layers, each checked
//! against its digest.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_spec::image::ImageManifest;
use sha2::{Digest, Sha256};

use super::reference::Reference;
use super::store::{ImageRecord, ImageStore, platform_manifest};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest silence while reading from a registry.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry could not be reached at all (no route, refused, DNS).
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> PullError {
    PullError::Failed(e.to_string())
}

fn classify(e: OciDistributionError) -> PullError {
    match &e {
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            PullError::Unreachable(e.to_string())
        }
        _ => PullError::Failed(e.to_string()),
    }
}

/// Credentials for a registry, from the pod's image pull secrets
/// (`.dockerconfigjson`: `{"auths": {"host": {"username", "password"} or {"auth": base64}}}`).
pub fn auth_for(registry: &str, docker_configs: &[Vec<u8>]) -> RegistryAuth {
    for raw in docker_configs {
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(raw) else {
            continue;
        };
        let Some(auths) = config["auths"].as_object() else {
            continue;
        };
        let entry = auths.iter().find(|(host, _)| {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or(host);
            host == registry || (registry == "docker.io" && host == "index.docker.io")
        });
        let Some((_, entry)) = entry else { continue };
        if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
            return RegistryAuth::Basic(u.to_owned(), p.to_owned());
        }
        use base64::Engine;
        let decoded = entry["auth"]
            .as_str()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return RegistryAuth::Basic(u.to_owned(), p.to_owned());
        }
    }
    RegistryAuth::Anonymous
}

/// Plain HTTP for registries on this machine and those named insecure, HTTPS otherwise.
fn protocol(registry: &str, insecure: &[String]) -> ClientProtocol {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let local = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    if local || insecure.iter().any(|i| i == registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    }
}

fn oci_reference(r: &Reference, digest: Option<&str>) -> oci_client::Reference {
    match (digest.or(r.digest.as_deref()), &r.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(
            r.registry.clone(),
            r.repository.clone(),
            d.to_owned(),
        ),
        (None, tag) => oci_client::Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            tag.clone().unwrap_or_else(|| "latest".into()),
        ),
    }
}

/// Pulls `reference` into `store`, fetching only the blobs it lacks.
pub async fn pull(
    store: &ImageStore,
    reference: &Reference,
    auth: &RegistryAuth,
    insecure: &[String],
) -> Result<ImageRecord, PullError> {
    let client = oci_client::Client::new(ClientConfig {
        protocol: protocol(&reference.registry, insecure),
        // An unreachable registry must fail the pull, not hang the pod.
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    });
    let named = oci_reference(reference, None);
    let (bytes, _) = client
        .pull_manifest_raw(&named, auth, MANIFEST_TYPES)
        .await
        .map_err(classify)?;
    let pinned = format!("sha256:{:x}", Sha256::digest(&bytes));
    if let Some(want) = &reference.digest
        && *want != pinned
    {
        return Err(failed(format!(
            "digest mismatch: the registry's manifest is {pinned}, the pod asks for {want}"
        )));
    }
    store
        .put_blob(bytes.as_ref(), Some(&pinned))
        .map_err(failed)?;
    let mut manifest_digest = pinned.clone();
    let mut manifest_bytes = bytes;
    if let Some(chosen) = platform_manifest(&manifest_bytes) {
        manifest_digest = chosen.map_err(failed)?;
        let by_digest = oci_reference(reference, Some(&manifest_digest));
        manifest_bytes = client
            .pull_manifest_raw(&by_digest, auth, MANIFEST_TYPES)
            .await
            .map_err(classify)?
            .0;
        store
            .put_blob(manifest_bytes.as_ref(), Some(&manifest_digest))
            .map_err(failed)?;
    }
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| failed(format!("manifest {manifest_digest}: {e}")))?;
    let blobs = std::iter::once(manifest.config().digest().to_string())
        .chain(manifest.layers().iter().map(|l| l.digest().to_string()));
    for digest in blobs {
        if store.has_blob(&digest) {
            continue;
        }
        let path = store.temp_path("pull");
        let file = tokio::fs::File::create(&path).await.map_err(failed)?;
        let fetched = client
            .pull_blob(&named, digest.as_str(), file)
            .await
            .map_err(classify);
        let stored = fetched.and_then(|_| {
            let f = std::fs::File::open(&path).map_err(failed)?;
            store.put_blob(f, Some(&digest)).map_err(failed)
        });
        let _ = std::fs::remove_file(&path);
        stored?;
    }
    let extra = (pinned != manifest_digest).then_some(pinned.as_str());
    store
        .commit(&manifest_digest, std::slice::from_ref(reference), extra)
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secrets_give_basic_credentials_for_their_registry() {
        let by_fields =
            br#"{"auths": {"https://registry.example:5000": {"username": "u", "password": "p"}}}"#
                .to_vec();
        let by_auth = br#"{"auths": {"index.docker.io": {"auth": "YWxpY2U6czNjcmV0"}}}"#.to_vec();
        let secrets = [by_fields, by_auth];
        assert_eq!(
            auth_for("registry.example:5000", &secrets),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(
            auth_for("docker.io", &secrets),
            RegistryAuth::Basic("alice".into(), "s3cret".into())
        );
        assert_eq!(auth_for("quay.io", &secrets), RegistryAuth::Anonymous);
    }

    #[test]
    fn only_local_and_listed_registries_use_plain_http() {
        assert!(matches!(
            protocol("127.0.0.1:5000", &[]),
            ClientProtocol::Http
        ));
        assert!(matches!(
            protocol("localhost:5000", &[]),
            ClientProtocol::Http
        ));
        assert!(matches!(protocol("docker.io", &[]), ClientProtocol::Https));
        assert!(matches!(
            protocol("reg.lan:80", &["reg.lan:80".into()]),
            ClientProtocol::Http
        ));
    }
}
