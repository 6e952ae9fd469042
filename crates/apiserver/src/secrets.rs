//! The secrets every API server of one cluster shares (k3s's bootstrap
//! data): the cluster CA, the service-account signing key and whatever else
//! `DATA/pki` holds that is not one server's own certificate. The first
//! server with a `--token` makes them, seals them with a key derived from
//! the token, and stores them in the datastore under [`KEY`], outside
//! `/registry` so no API request reaches them; every later server with the
//! same token and datastore installs the same files before it starts.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::pki::{self, PkiError};

/// Where the sealed secrets live in the datastore.
pub const KEY: &str = "/bootstrap/kubox-cluster-secrets";

/// OWASP's recommendation for PBKDF2-HMAC-SHA256 (2023).
const ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the cluster's shared secrets in the datastore ({KEY}) cannot be decrypted with this --token: \
         every server of a cluster must be started with the token the first one was given"
    )]
    WrongToken,
    #[error("the cluster's shared secrets in the datastore ({KEY}) are malformed: {0}")]
    Malformed(String),
    #[error("reading or writing the shared secrets in the datastore: {0}")]
    Store(#[from] kubox_store::Error),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
}

/// What `share` did, for the server's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    /// This server made the secrets and stored them.
    Stored,
    /// Another server had; this one installed them.
    Installed,
}

/// The sealed form stored under [`KEY`].
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// The key derivation, named so a later format can change it.
    kdf: String,
    iterations: u32,
    salt: String,
    nonce: String,
    ciphertext: String,
}

/// Makes this server's `dir` hold the cluster's shared secrets: installs
/// the stored ones, or else makes them with `create` and stores them. Two
/// servers starting together settle who stores by a create-if-absent
/// transaction; the loser installs the winner's.
pub async fn share(
    store: &dyn kubox_store::Store,
    dir: &Path,
    token: &str,
    create: impl FnOnce(&Path) -> Result<(), PkiError>,
) -> Result<Shared, SecretsError> {
    if let (Some(kv), _) = store.get(KEY).await? {
        install(dir, &open(token, &kv.value)?)?;
        return Ok(Shared::Installed);
    }
    create(dir)?;
    let sealed = seal(token, &collect(dir)?)?;
    match store.create(KEY, sealed.into(), 0).await {
        Ok(_) => Ok(Shared::Stored),
        Err(kubox_store::Error::AlreadyExists(_, current)) => {
            install(dir, &open(token, &current.value)?)?;
            Ok(Shared::Installed)
        }
        Err(e) => Err(e.into()),
    }
}

fn derive(token: &str, salt: &[u8], iterations: u32) -> LessSafeKey {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        token.as_bytes(),
        &mut key,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 256-bit key"))
}

/// Encrypts `files` (name -> contents) with a key derived from `token`.
fn seal(token: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, SecretsError> {
    let rng = SystemRandom::new();
    let random = |buf: &mut [u8]| {
        rng.fill(buf)
            .map_err(|_| SecretsError::Malformed("no randomness".into()))
    };
    let (mut salt, mut nonce) = ([0u8; SALT_LEN], [0u8; NONCE_LEN]);
    random(&mut salt)?;
    random(&mut nonce)?;
    let plain: BTreeMap<&String, String> = files.iter().map(|(k, v)| (k, B64.encode(v))).collect();
    let mut data = serde_json::to_vec(&plain).unwrap_or_default();
    derive(token, &salt, ITERATIONS)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(KEY),
            &mut data,
        )
        .map_err(|_| SecretsError::Malformed("encryption failed".into()))?;
    let sealed = Sealed {
        kdf: "pbkdf2-hmac-sha256".into(),
        iterations: ITERATIONS,
        salt: B64.encode(salt),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(data),
    };
    Ok(serde_json::to_vec(&sealed).unwrap_or_default())
}

/// Decrypts what `seal` made; a wrong token fails the AEAD's tag check.
fn open(token: &str, value: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, SecretsError> {
    let malformed = |e: &dyn std::fmt::Display| SecretsError::Malformed(e.to_string());
    let sealed: Sealed = serde_json::from_slice(value).map_err(|e| malformed(&e))?;
    if sealed.kdf != "pbkdf2-hmac-sha256" {
        return Err(malformed(&format!(
            "unknown key derivation {:?}",
            sealed.kdf
        )));
    }
    let salt = B64.decode(&sealed.salt).map_err(|e| malformed(&e))?;
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&sealed.nonce)
        .map_err(|e| malformed(&e))?
        .try_into()
        .map_err(|_| malformed(&"nonce of the wrong length"))?;
    let mut data = B64.decode(&sealed.ciphertext).map_err(|e| malformed(&e))?;
    let plain = derive(token, &salt, sealed.iterations)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(KEY),
            &mut data,
        )
        .map_err(|_| SecretsError::WrongToken)?;
    let files: BTreeMap<String, String> =
        serde_json::from_slice(plain).map_err(|e| malformed(&e))?;
    files
        .into_iter()
        .map(|(name, b64)| Ok((name, B64.decode(b64).map_err(|e| malformed(&e))?)))
        .collect()
}

/// Every file of `dir` but the leaf certificates and their keys.
fn collect(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, SecretsError> {
    let leaves = pki::leaf_stems(dir);
    let io = |e| SecretsError::Io(dir.to_owned(), e);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if !entry.file_type().map_err(io)?.is_file() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        if name.ends_with(".tmp") || leaves.iter().any(|l| l == stem) {
            continue;
        }
        let contents =
            std::fs::read(entry.path()).map_err(|e| SecretsError::Io(entry.path(), e))?;
        files.insert(name, contents);
    }
    Ok(files)
}

/// Writes the shared files into `dir`. Leaf certificates a different CA
/// signed (this server made its own before joining) go, to be made anew.
fn install(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<(), SecretsError> {
    let ca = dir.join("ca.crt");
    let local_ca = std::fs::read(&ca).ok();
    if local_ca.is_some() && local_ca.as_ref() != files.get("ca.crt") {
        for stem in pki::leaf_stems(dir) {
            for ext in ["crt", "key"] {
                let path = dir.join(format!("{stem}.{ext}"));
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(SecretsError::Io(path, e));
                    }
                    _ => {}
                }
            }
        }
    }
    for (name, contents) in files {
        if name.contains('/') || name.starts_with('.') {
            return Err(SecretsError::Malformed(format!("file name {name:?}")));
        }
        pki::write_file(&dir.join(name), contents, !name.ends_with(".crt"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path) -> Result<(), PkiError> {
        let pki = pki::Pki::load_or_create(dir)?;
        pki.service_account_key()?;
        pki.serving(&["127.0.0.1".to_string()])?;
        pki.client("admin", "kubox-admin", &["system:masters"])?;
        Ok(())
    }

    #[test]
    fn sealed_secrets_open_only_with_their_token() {
        let files = BTreeMap::from([("ca.key".to_string(), b"secret".to_vec())]);
        let sealed = seal("right", &files).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("secret"));
        assert_eq!(open("right", &sealed).unwrap(), files);
        assert!(matches!(
            open("wrong", &sealed),
            Err(SecretsError::WrongToken)
        ));
    }

    #[test]
    fn only_cluster_wide_files_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path()).unwrap();
        std::fs::write(dir.path().join("encryption.key"), b"k").unwrap();
        let files = collect(dir.path()).unwrap();
        let names: Vec<_> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["ca.crt", "ca.key", "encryption.key", "sa.key"]);
    }

    #[test]
    fn installing_over_another_ca_drops_its_leaf_certificates() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make(a.path()).unwrap();
        make(b.path()).unwrap();
        install(b.path(), &collect(a.path()).unwrap()).unwrap();
        assert!(!b.path().join("server.crt").exists());
        assert!(!b.path().join("admin.key").exists());
        let ca = |d: &Path| std::fs::read(d.join("ca.crt")).unwrap();
        assert_eq!(ca(a.path()), ca(b.path()));
        let sa = |d: &Path| std::fs::read(d.join("sa.key")).unwrap();
        assert_eq!(sa(a.path()), sa(b.path()));
    }
}
