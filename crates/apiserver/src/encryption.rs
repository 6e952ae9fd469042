//! Encryption at rest, as upstream's `--encryption-provider-config`: an
//! `EncryptionConfiguration` (apiserver.config.k8s.io/v1) names resources
//! and an ordered list of providers (aesgcm, aescbc, secretbox, identity).
//! Writes go through the first provider, reads through whichever one's
//! prefix the stored value carries, so a new key put first rotates without
//! losing what older keys wrote. Values are stored as upstream stores them,
//! `k8s:enc:<provider>:v1:<key name>:` followed by the ciphertext, so a
//! store written by either can be read by the other with the same file.
//!
//! The transformation sits under the API server as a [`Store`] wrapper, as
//! upstream's sits in its etcd3 storage: the watch caches, LIST, GET and
//! every admission plugin that reads the store see plaintext, and nothing
//! above it can write around it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use kubox_store::{
    DbStatus, Error as StoreError, KeyValue, LeaseId, Op, OpResult, RangeRequest, RangeResponse,
    Revision, Store, Txn, TxnResponse, WatchMessage, WatchRequest, WatchStream,
};
use rand::RngCore;
use serde::Deserialize;

use crate::registry::Registry;

/// The file kubox writes, and then uses, when no `--encryption-provider-config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "encryption-config.yaml";

/// What every encrypted value starts with; identity refuses to read such data.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("encryption provider configuration {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encryption provider configuration {path}: error while parsing file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "cannot decrypt {key} with the keys of {path}: {reason} (the key that wrote it is missing or the file was changed)"
    )]
    Undecryptable {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("checking the stored data against the encryption keys: {0}")]
    Store(#[from] StoreError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileConfig {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
struct ResourceConfig {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    aescbc: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde_yaml_ng::Value>,
    kms: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct KeysConfig {
    #[serde(default)]
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
struct KeyConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    AesGcm,
    AesCbc,
    Secretbox,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::AesGcm => "aesgcm",
            Algorithm::AesCbc => "aescbc",
            Algorithm::Secretbox => "secretbox",
        }
    }

    /// Upstream's accepted key lengths, in bytes.
    fn key_sizes(self) -> &'static [usize] {
        match self {
            Algorithm::AesGcm | Algorithm::AesCbc => &[16, 24, 32],
            Algorithm::Secretbox => &[32],
        }
    }
}

struct Key {
    algorithm: Algorithm,
    /// `k8s:enc:<provider>:v1:<name>:`
    prefix: Vec<u8>,
    secret: Vec<u8>,
}

enum Provider {
    Identity,
    Key(Key),
}

/// One resource entry's providers, in the file's order.
pub struct Transformer {
    providers: Vec<Provider>,
}

type Gcm192 = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn gcm_seal(secret: &[u8], nonce: &[u8; 12], payload: Payload) -> Result<Vec<u8>, String> {
    let nonce = aes_gcm::Nonce::from_slice(nonce);
    let sealed = match secret.len() {
        16 => aes_gcm::Aes128Gcm::new_from_slice(secret).map(|c| c.encrypt(nonce, payload)),
        24 => Gcm192::new_from_slice(secret).map(|c| c.encrypt(nonce, payload)),
        _ => aes_gcm::Aes256Gcm::new_from_slice(secret).map(|c| c.encrypt(nonce, payload)),
    };
    sealed
        .map_err(|e| e.to_string())?
        .map_err(|_| "encryption failed".to_owned())
}

fn gcm_open(secret: &[u8], nonce: &[u8], payload: Payload) -> Result<Vec<u8>, String> {
    let nonce = aes_gcm::Nonce::from_slice(nonce);
    let opened = match secret.len() {
        16 => aes_gcm::Aes128Gcm::new_from_slice(secret).map(|c| c.decrypt(nonce, payload)),
        24 => Gcm192::new_from_slice(secret).map(|c| c.decrypt(nonce, payload)),
        _ => aes_gcm::Aes256Gcm::new_from_slice(secret).map(|c| c.decrypt(nonce, payload)),
    };
    // Go's crypto/cipher wording, which upstream passes on.
    opened
        .map_err(|e| e.to_string())?
        .map_err(|_| "cipher: message authentication failed".to_owned())
}

fn cbc_encrypt(secret: &[u8], iv: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, String> {
    use cbc::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    let encrypted = match secret.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(secret, iv)
            .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(secret, iv)
            .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
        _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(secret, iv)
            .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
    };
    encrypted.map_err(|e| e.to_string())
}

fn cbc_decrypt(secret: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    if !data.len().is_multiple_of(16) {
        return Err("the stored data is not a multiple of the block size".into());
    }
    let decrypted = match secret.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(secret, iv)
            .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(data)),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(secret, iv)
            .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(data)),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(secret, iv)
            .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(data)),
    };
    decrypted
        .map_err(|e| e.to_string())?
        .map_err(|_| "invalid PKCS7 data (empty or not padded)".to_owned())
}

impl Key {
    /// The ciphertext after the prefix. AES-GCM authenticates the storage
    /// key too, as upstream does, so a value copied under another key fails.
    fn seal(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = self.prefix.clone();
        match self.algorithm {
            Algorithm::AesGcm => {
                let nonce = random::<12>();
                let payload = Payload {
                    msg: data,
                    aad: key.as_bytes(),
                };
                out.extend_from_slice(&nonce);
                out.extend(gcm_seal(&self.secret, &nonce, payload)?);
            }
            Algorithm::AesCbc => {
                let iv = random::<16>();
                out.extend_from_slice(&iv);
                out.extend(cbc_encrypt(&self.secret, &iv, data)?);
            }
            Algorithm::Secretbox => {
                use crypto_secretbox::{KeyInit as _, XSalsa20Poly1305, aead::Aead as _};
                let nonce = random::<24>();
                let cipher =
                    XSalsa20Poly1305::new_from_slice(&self.secret).map_err(|e| e.to_string())?;
                // NaCl's layout, as Go's secretbox.Seal: tag, then ciphertext.
                let sealed = cipher
                    .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), data)
                    .map_err(|_| "encryption failed".to_owned())?;
                out.extend_from_slice(&nonce);
                out.extend(sealed);
            }
        }
        Ok(out)
    }

    fn open(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let short = || "the stored data was shorter than the required size".to_owned();
        match self.algorithm {
            Algorithm::AesGcm => {
                let (nonce, sealed) = data.split_at_checked(12).ok_or_else(short)?;
                let payload = Payload {
                    msg: sealed,
                    aad: key.as_bytes(),
                };
                gcm_open(&self.secret, nonce, payload)
            }
            Algorithm::AesCbc => {
                let (iv, sealed) = data.split_at_checked(16).ok_or_else(short)?;
                cbc_decrypt(&self.secret, iv, sealed)
            }
            Algorithm::Secretbox => {
                use crypto_secretbox::{KeyInit as _, XSalsa20Poly1305, aead::Aead as _};
                let (nonce, sealed) = data.split_at_checked(24).ok_or_else(short)?;
                let cipher =
                    XSalsa20Poly1305::new_from_slice(&self.secret).map_err(|e| e.to_string())?;
                cipher
                    .decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
                    .map_err(|_| "output array too small or invalid secretbox".to_owned())
            }
        }
    }
}

impl Transformer {
    /// The stored form of `data` under storage key `key`, by the first provider.
    pub fn to_storage(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        match self.providers.first() {
            Some(Provider::Key(k)) => k.seal(key, data),
            Some(Provider::Identity) | None => Ok(data.to_vec()),
        }
    }

    /// The plaintext of a stored value: the provider whose prefix it
    /// carries opens it; identity reads only what is not encrypted.
    pub fn from_storage(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut identity = false;
        for provider in &self.providers {
            match provider {
                Provider::Key(k) if data.starts_with(&k.prefix) => {
                    return k.open(key, &data[k.prefix.len()..]);
                }
                Provider::Key(_) => {}
                Provider::Identity => identity = true,
            }
        }
        if identity && !data.starts_with(ENCRYPTED_PREFIX) {
            return Ok(data.to_vec());
        }
        if identity {
            return Err("identity transformer tried to read encrypted data".into());
        }
        Err("no matching prefix found".into())
    }
}

/// A loaded configuration: the storage prefixes it covers, each with its
/// transformer, and the file it came from (for errors).
pub struct Encryption {
    path: PathBuf,
    prefixes: Vec<(String, Arc<Transformer>)>,
}

/// `resource.group` as upstream's `schema.ParseGroupResource` reads it.
fn group_resource(s: &str) -> (&str, &str) {
    match s.split_once('.') {
        Some((resource, group)) => (group, resource),
        None => ("", s),
    }
}

/// One provider entry of the file as its read providers: identity, or one
/// per key in order (the first of them is the one that writes).
fn parse_provider(
    provider: &ProviderConfig,
    path: &str,
    errors: &mut Vec<String>,
) -> Vec<Provider> {
    let keyed = [
        (Algorithm::AesGcm, &provider.aesgcm),
        (Algorithm::AesCbc, &provider.aescbc),
        (Algorithm::Secretbox, &provider.secretbox),
    ];
    let found = keyed.iter().filter(|(_, k)| k.is_some()).count()
        + usize::from(provider.identity.is_some())
        + usize::from(provider.kms.is_some());
    if found == 0 {
        errors.push(format!("{path}: Invalid value: provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"));
        return Vec::new();
    }
    if found > 1 {
        errors.push(format!("{path}: Invalid value: more than one provider specified in a single element, should split into different list elements"));
        return Vec::new();
    }
    if provider.identity.is_some() {
        return vec![Provider::Identity];
    }
    let Some((algorithm, Some(keys))) = keyed.into_iter().find(|(_, k)| k.is_some()) else {
        errors.push(format!(
            "{path}.kms: Unsupported value: kubox has no KMS plugin support; use aesgcm, aescbc or secretbox"
        ));
        return Vec::new();
    };
    let path = format!("{path}.{}.keys", algorithm.name());
    if keys.keys.is_empty() {
        errors.push(format!(
            "{path}: Required value: at least one keys is required"
        ));
    }
    let sizes = algorithm
        .key_sizes()
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let mut providers = Vec::new();
    for (i, k) in keys.keys.iter().enumerate() {
        let path = format!("{path}[{i}]");
        if k.name.is_empty() {
            errors.push(format!(
                "{path}.name: Required value: name is a mandatory field for a key"
            ));
        }
        if k.secret.is_empty() {
            errors.push(format!(
                "{path}.secret: Required value: secret is a mandatory field for a key"
            ));
            continue;
        }
        let Ok(secret) = base64::engine::general_purpose::STANDARD.decode(k.secret.trim()) else {
            errors.push(format!(
                "{path}.secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"
            ));
            continue;
        };
        if !algorithm.key_sizes().contains(&secret.len()) {
            errors.push(format!(
                "{path}.secret: Invalid value: \"REDACTED\": secret is not of the expected length, got {}, expected one of [{sizes}]",
                secret.len()
            ));
            continue;
        }
        providers.push(Provider::Key(Key {
            algorithm,
            prefix: format!("k8s:enc:{}:v1:{}:", algorithm.name(), k.name).into_bytes(),
            secret,
        }));
    }
    providers
}

/// The configuration under `pki_dir` with a new random key, unless one is
/// there already.
pub fn write_default_config(pki_dir: &Path) -> Result<(), crate::pki::PkiError> {
    let path = pki_dir.join(DEFAULT_CONFIG_FILE);
    if path.exists() {
        return Ok(());
    }
    crate::pki::write_file(&path, generated_config().as_bytes(), true)
}

impl Encryption {
    /// Reads `file`, or with none the configuration under `pki_dir`,
    /// writing it with a new random key at first start. Any fault in the
    /// file (not YAML, a key not base64 or of the wrong length) is an error:
    /// the server must not start writing data it could not read back.
    pub fn load(
        file: Option<&Path>,
        pki_dir: &Path,
        registry: &Registry,
    ) -> Result<Self, EncryptionError> {
        let path = match file {
            Some(file) => file.to_owned(),
            None => {
                write_default_config(pki_dir).map_err(|e| EncryptionError::Invalid {
                    path: pki_dir.join(DEFAULT_CONFIG_FILE),
                    reason: e.to_string(),
                })?;
                pki_dir.join(DEFAULT_CONFIG_FILE)
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| EncryptionError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text, registry)
    }

    fn parse(path: &Path, text: &str, registry: &Registry) -> Result<Self, EncryptionError> {
        let invalid = |reason: String| EncryptionError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let file: FileConfig = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.api_version != "apiserver.config.k8s.io/v1"
            || file.kind != "EncryptionConfiguration"
        {
            return Err(invalid(format!(
                "no kind {:?} is registered for version {:?}: want apiserver.config.k8s.io/v1 EncryptionConfiguration",
                file.kind, file.api_version
            )));
        }
        let mut errors = Vec::new();
        if file.resources.is_empty() {
            errors.push("resources: Required value: at least one resources is required".into());
        }
        let mut prefixes: Vec<(String, Arc<Transformer>)> = Vec::new();
        for (i, entry) in file.resources.iter().enumerate() {
            let path = format!("resources[{i}]");
            if entry.resources.is_empty() {
                errors.push(format!(
                    "{path}.resources: Required value: at least one {path}.resources is required"
                ));
            }
            if entry.providers.is_empty() {
                errors.push(format!(
                    "{path}.providers: Required value: at least one {path}.providers is required"
                ));
            }
            let mut providers = Vec::new();
            for (j, provider) in entry.providers.iter().enumerate() {
                let path = format!("{path}.providers[{j}]");
                providers.extend(parse_provider(provider, &path, &mut errors));
            }
            let transformer = Arc::new(Transformer { providers });
            for (j, resource) in entry.resources.iter().enumerate() {
                let rpath = format!("{path}.resources[{j}]");
                if resource.to_lowercase() != *resource {
                    errors.push(format!("{rpath}: Invalid value: {resource:?}: resource name should not contain capital letters"));
                    continue;
                }
                if resource == "*" {
                    errors.push(format!("{rpath}: Invalid value: \"*\": use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources"));
                    continue;
                }
                let (group, plural) = group_resource(resource);
                if group == "events.k8s.io" {
                    errors.push(format!("{rpath}: Invalid value: {resource:?}: '*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file"));
                    continue;
                }
                if group == "*" && plural != "*" {
                    errors.push(format!("{rpath}: Invalid value: {resource:?}: encrypting the same resource across groups is not supported"));
                    continue;
                }
                for rt in registry.types().iter().filter(|t| t.stored()) {
                    let matches = (group == "*" || group == rt.group)
                        && (plural == "*" || plural == rt.plural);
                    let prefix = rt.key_prefix();
                    // The first entry naming a resource decides, as upstream.
                    if matches && !prefixes.iter().any(|(p, _)| *p == prefix) {
                        prefixes.push((prefix, transformer.clone()));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(invalid(errors.join(", ")));
        }
        Ok(Self {
            path: path.to_owned(),
            prefixes,
        })
    }

    fn transformer(&self, key: &str) -> Option<&Transformer> {
        self.prefixes
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, t)| &**t)
    }

    /// The storage prefixes (`/registry/secrets/`) whose values are transformed.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.prefixes.iter().map(|(p, _)| p.as_str())
    }
}

/// The configuration written at first start: Secrets under a new 32-byte
/// secretbox key (XSalsa20-Poly1305: authenticated, with nonces long enough
/// to draw at random for as many writes as a cluster makes), and identity
/// last so Secrets stored before encryption was on stay readable until
/// `kubox secrets reencrypt` rewrites them.
fn generated_config() -> String {
    let secret = base64::engine::general_purpose::STANDARD.encode(random::<32>());
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\n\
         kind: EncryptionConfiguration\n\
         resources:\n\
         \x20 - resources:\n\
         \x20     - secrets\n\
         \x20   providers:\n\
         \x20     - secretbox:\n\
         \x20         keys:\n\
         \x20           - name: key1\n\
         \x20             secret: {secret}\n\
         \x20     - identity: {{}}\n"
    )
}

/// A [`Store`] whose values under the configured prefixes are encrypted on
/// the way in and decrypted on the way out.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    encryption: Arc<Encryption>,
}

fn transform_error(key: &str, reason: String) -> StoreError {
    // Upstream's internal error for a value its transformers cannot read.
    StoreError::Backend(format!("unable to transform key {key:?}: {reason}"))
}

impl Encryption {
    fn open_kv(&self, kv: &mut KeyValue) -> Result<(), StoreError> {
        if kv.value.is_empty() {
            return Ok(());
        }
        if let Some(t) = self.transformer(&kv.key) {
            let plain = t
                .from_storage(&kv.key, &kv.value)
                .map_err(|reason| transform_error(&kv.key, reason))?;
            kv.value = Bytes::from(plain);
        }
        Ok(())
    }

    fn seal_op(&self, op: &mut Op) -> Result<(), StoreError> {
        if let Op::Put { key, value, .. } = op
            && let Some(t) = self.transformer(key)
        {
            let sealed = t
                .to_storage(key, value)
                .map_err(|reason| transform_error(key, reason))?;
            *value = Bytes::from(sealed);
        }
        Ok(())
    }
}

impl EncryptedStore {
    /// Wraps `inner`, first checking that every value already stored under
    /// the covered prefixes opens with the configured keys: a server given
    /// the wrong key file refuses to start instead of serving errors, or
    /// mixing data under two keys it cannot both read.
    pub async fn open(
        inner: Arc<dyn Store>,
        encryption: Encryption,
    ) -> Result<Arc<Self>, EncryptionError> {
        for prefix in encryption.prefixes() {
            let listed = inner.range(RangeRequest::prefix(prefix)).await?;
            for mut kv in listed.kvs {
                if let Err(e) = encryption.open_kv(&mut kv) {
                    let reason = match e {
                        StoreError::Backend(reason) => reason,
                        other => other.to_string(),
                    };
                    return Err(EncryptionError::Undecryptable {
                        path: encryption.path.clone(),
                        key: kv.key,
                        reason,
                    });
                }
            }
        }
        Ok(Arc::new(Self {
            inner,
            encryption: Arc::new(encryption),
        }))
    }
}

fn open_result(encryption: &Encryption, result: &mut OpResult) -> Result<(), StoreError> {
    match result {
        OpResult::Put { prev, kv } => {
            if let Some(prev) = prev {
                encryption.open_kv(prev)?;
            }
            encryption.open_kv(kv)
        }
        OpResult::Delete { prev } | OpResult::Get(prev) => match prev {
            Some(kv) => encryption.open_kv(kv),
            None => Ok(()),
        },
    }
}

#[async_trait]
impl Store for EncryptedStore {
    async fn txn(&self, mut txn: Txn) -> kubox_store::Result<TxnResponse> {
        for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
            self.encryption.seal_op(op)?;
        }
        let mut resp = self.inner.txn(txn).await?;
        for result in &mut resp.results {
            open_result(&self.encryption, result)?;
        }
        Ok(resp)
    }

    async fn range(&self, req: RangeRequest) -> kubox_store::Result<RangeResponse> {
        let mut resp = self.inner.range(req).await?;
        for kv in &mut resp.kvs {
            self.encryption.open_kv(kv)?;
        }
        Ok(resp)
    }

    async fn watch(&self, req: WatchRequest) -> kubox_store::Result<WatchStream> {
        let encryption = self.encryption.clone();
        let stream = self.inner.watch(req).await?;
        Ok(stream
            .map(move |message| {
                let mut message = message?;
                if let WatchMessage::Events(events) = &mut message {
                    for event in events {
                        encryption.open_kv(&mut event.kv)?;
                        if let Some(prev) = &mut event.prev_kv {
                            encryption.open_kv(prev)?;
                        }
                    }
                }
                Ok(message)
            })
            .boxed())
    }

    async fn current_revision(&self) -> kubox_store::Result<Revision> {
        self.inner.current_revision().await
    }

    async fn request_progress(&self) -> kubox_store::Result<()> {
        self.inner.request_progress().await
    }

    async fn compact(&self, revision: Revision) -> kubox_store::Result<()> {
        self.inner.compact(revision).await
    }

    async fn db_status(&self) -> kubox_store::Result<DbStatus> {
        self.inner.db_status().await
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> kubox_store::Result<LeaseId> {
        self.inner.lease_grant(ttl_seconds).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> kubox_store::Result<()> {
        self.inner.lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> kubox_store::Result<()> {
        self.inner.lease_revoke(lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(providers: &str) -> Result<Encryption, EncryptionError> {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, configmaps]\n  providers:\n{providers}"
        );
        Encryption::parse(Path::new("enc.yaml"), &text, &Registry::builtin())
    }

    fn secret(len: usize, byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![byte; len])
    }

    fn keyed(provider: &str, name: &str, len: usize, byte: u8) -> String {
        format!(
            "  - {provider}:\n      keys:\n      - name: {name}\n        secret: {}\n",
            secret(len, byte)
        )
    }

    const KEY: &str = "/registry/secrets/default/s";

    #[test]
    fn every_provider_and_key_size_round_trips_with_upstreams_prefix() {
        for (provider, len) in [
            ("aesgcm", 16),
            ("aesgcm", 24),
            ("aesgcm", 32),
            ("aescbc", 16),
            ("aescbc", 24),
            ("aescbc", 32),
            ("secretbox", 32),
        ] {
            let enc = load(&keyed(provider, "k1", len, 3)).unwrap();
            let t = enc.transformer(KEY).unwrap();
            for plain in [
                &b""[..],
                b"x",
                b"exactly sixteen!",
                b"{\"data\":{\"a\":\"b\"}}",
            ] {
                let stored = t.to_storage(KEY, plain).unwrap();
                let prefix = format!("k8s:enc:{provider}:v1:k1:");
                assert!(stored.starts_with(prefix.as_bytes()), "{provider}");
                assert!(!contains(&stored, plain) || plain.len() < 2, "{provider}");
                assert_eq!(t.from_storage(KEY, &stored).unwrap(), plain, "{provider}");
            }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len().max(1)).any(|w| w == needle)
    }

    #[test]
    fn uncovered_resources_pass_through() {
        let enc = load(&keyed("aesgcm", "k1", 32, 1)).unwrap();
        assert!(enc.transformer("/registry/configmaps/a/b").is_some());
        assert!(enc.transformer("/registry/pods/a/b").is_none());
    }

    #[test]
    fn aesgcm_binds_the_value_to_its_storage_key() {
        let enc = load(&keyed("aesgcm", "k1", 32, 1)).unwrap();
        let t = enc.transformer(KEY).unwrap();
        let stored = t.to_storage(KEY, b"secret").unwrap();
        let err = t
            .from_storage("/registry/secrets/other/s", &stored)
            .unwrap_err();
        assert_eq!(err, "cipher: message authentication failed");
    }

    #[test]
    fn rotation_writes_with_the_first_key_and_reads_with_all() {
        let old = load(&keyed("aescbc", "old", 32, 1)).unwrap();
        let written = old.transformer(KEY).unwrap().to_storage(KEY, b"v").unwrap();
        let both = load(&format!(
            "{}{}",
            keyed("secretbox", "new", 32, 2),
            keyed("aescbc", "old", 32, 1)
        ))
        .unwrap();
        let t = both.transformer(KEY).unwrap();
        assert_eq!(t.from_storage(KEY, &written).unwrap(), b"v");
        assert!(
            t.to_storage(KEY, b"v")
                .unwrap()
                .starts_with(b"k8s:enc:secretbox:v1:new:")
        );
        let new_only = load(&keyed("secretbox", "new", 32, 2)).unwrap();
        assert_eq!(
            new_only
                .transformer(KEY)
                .unwrap()
                .from_storage(KEY, &written)
                .unwrap_err(),
            "no matching prefix found"
        );
    }

    #[test]
    fn identity_reads_plaintext_but_not_encrypted_data() {
        let enc = load(&format!(
            "{}  - identity: {{}}\n",
            keyed("aesgcm", "k1", 16, 1)
        ))
        .unwrap();
        let t = enc.transformer(KEY).unwrap();
        assert_eq!(t.from_storage(KEY, b"{\"a\":1}").unwrap(), b"{\"a\":1}");
        let id = load("  - identity: {}\n").unwrap();
        let t = id.transformer(KEY).unwrap();
        assert_eq!(t.to_storage(KEY, b"plain").unwrap(), b"plain");
        assert_eq!(
            t.from_storage(KEY, b"k8s:enc:aesgcm:v1:k1:xxxx")
                .unwrap_err(),
            "identity transformer tried to read encrypted data"
        );
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let err = |providers: &str| match load(providers) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {providers}"),
        };
        assert!(err(&keyed("secretbox", "k", 16, 1)).contains(
            "resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 16, expected one of [32]"
        ));
        assert!(
            err("  - aesgcm:\n      keys:\n      - name: k\n        secret: '@@'\n")
                .contains("secrets must be base64 encoded")
        );
        assert!(err("  - aesgcm:\n      keys: []\n").contains("at least one keys is required"));
        assert!(
            err("  - {}\n").contains("provider does not contain any of the expected providers")
        );
        assert!(
            err(&format!("  - identity: {{}}\n    aesgcm:\n      keys:\n      - name: k\n        secret: {}\n", secret(16, 1)))
                .contains("more than one provider specified in a single element")
        );
        let wrong_kind = Encryption::parse(
            Path::new("enc.yaml"),
            "apiVersion: v1\nkind: ConfigMap\n",
            &Registry::builtin(),
        );
        assert!(wrong_kind.is_err());
    }

    #[test]
    fn the_generated_configuration_loads() {
        let enc = Encryption::parse(
            Path::new("g.yaml"),
            &generated_config(),
            &Registry::builtin(),
        )
        .unwrap();
        let t = enc.transformer(KEY).unwrap();
        assert!(
            t.to_storage(KEY, b"v")
                .unwrap()
                .starts_with(b"k8s:enc:secretbox:v1:key1:")
        );
        assert_eq!(enc.prefixes().collect::<Vec<_>>(), ["/registry/secrets/"]);
    }
}
