//! Bootstrap tokens, as upstream's: a Secret `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` in kube-system holds `token-id`,
//! `token-secret`, an optional RFC 3339 `expiration`, the
//! `usage-bootstrap-*` flags and `auth-extra-groups`. The bearer
//! `<id>.<secret>` authenticates as `system:bootstrap:<id>` in
//! `system:bootstrappers` (and its extra groups) while the Secret says so.
//!
//! Join tokens wrap one with the hash of the cluster CA's public key, so a
//! joining node can check the server before trusting it:
//! `K10<sha256 of the CA's SubjectPublicKeyInfo, hex>::<id>.<secret>` (k3s's
//! form; the hash is kubeadm's `--discovery-token-ca-cert-hash`).

use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::Api;
use crate::http::Identity;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const NAMESPACE: &str = "kube-system";
pub const GROUP: &str = "system:bootstrappers";
pub const USER_PREFIX: &str = "system:bootstrap:";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const JOIN_PREFIX: &str = "K10";

/// A bootstrap token: `<id>.<secret>`, six and sixteen of `[a-z0-9]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

fn token_chars(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Token {
    pub fn parse(s: &str) -> Option<Self> {
        let (id, secret) = s.split_once('.')?;
        (token_chars(id, ID_LEN) && token_chars(secret, SECRET_LEN)).then(|| Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn generate() -> Self {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| {
            (0..n)
                .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
                .collect::<String>()
        };
        Self {
            id: pick(ID_LEN),
            secret: pick(SECRET_LEN),
        }
    }

    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }

    /// The Secret that makes this token valid: for authentication and
    /// signing, until `expiration` (RFC 3339) if given.
    pub fn secret_object(&self, expiration: Option<&str>, description: &str) -> Value {
        let mut data = json!({
            "token-id": self.id,
            "token-secret": self.secret,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "description": description,
        });
        if let Some(at) = expiration {
            data["expiration"] = json!(at);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name(), "namespace": NAMESPACE},
            "type": SECRET_TYPE,
            "stringData": data,
        })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

/// A join token: the CA's hash and a bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the CA certificate's SubjectPublicKeyInfo, lowercase hex.
    pub ca_hash: String,
    pub token: Token,
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let rest = s.strip_prefix(JOIN_PREFIX).ok_or_else(|| {
            format!("a join token starts with {JOIN_PREFIX} followed by the CA hash")
        })?;
        let (hash, token) = rest
            .split_once("::")
            .ok_or("a join token is K10<CA hash>::<id>.<secret>")?;
        let hash = hash.strip_prefix("sha256:").unwrap_or(hash).to_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the CA hash of a join token is 64 hexadecimal digits".into());
        }
        let token = Token::parse(token)
            .ok_or("the token of a join token is <6 of [a-z0-9]>.<16 of [a-z0-9]>")?;
        Ok(Self {
            ca_hash: hash,
            token,
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{JOIN_PREFIX}{}::{}", self.ca_hash, self.token)
    }
}

/// sha256 of the first certificate's SubjectPublicKeyInfo in `pem`, hex.
pub fn ca_hash(pem: &str) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(hex(&Sha256::digest(cert.public_key().raw)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn data(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether the RFC 3339 time `at` has passed.
pub fn expired(at: &str, now: time::OffsetDateTime) -> bool {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map(|t| t <= now)
        // An unreadable expiration never lets the token in.
        .unwrap_or(true)
}

/// Constant-time comparison, so timing tells nothing of the secret.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identity of a bootstrap token's bearer, or why it has none
/// (upstream's bootstrap token authenticator).
pub async fn authenticate(api: &Api, token: &Token) -> Result<Identity, String> {
    let rt = api
        .registry
        .get("", "v1", "secrets")
        .ok_or("secrets are not served")?;
    let secret = api
        .get(rt, Some(NAMESPACE), &token.secret_name())
        .await
        .map_err(|e| format!("no Secret {}: {}", token.secret_name(), e.message))?;
    if secret["type"] != SECRET_TYPE {
        return Err(format!("{} has the wrong type", token.secret_name()));
    }
    if secret["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("{} is being deleted", token.secret_name()));
    }
    let stored = data(&secret, "token-secret").unwrap_or_default();
    if data(&secret, "token-id").as_deref() != Some(token.id.as_str())
        || !same(stored.as_bytes(), token.secret.as_bytes())
    {
        return Err("the token's secret does not match".into());
    }
    if let Some(at) = data(&secret, "expiration")
        && expired(&at, time::OffsetDateTime::now_utc())
    {
        return Err(format!("the token expired at {at}"));
    }
    if data(&secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("the token is not for authentication".into());
    }
    let mut groups = vec![GROUP.to_owned()];
    for extra in data(&secret, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        // Upstream lets a token into its own bootstrapper groups only.
        if !extra.starts_with("system:bootstrappers:") {
            return Err(format!("extra group {extra:?} is not a bootstrapper group"));
        }
        groups.push(extra.to_owned());
    }
    groups.push("system:authenticated".to_owned());
    Ok(Identity {
        user: format!("{USER_PREFIX}{}", token.id),
        groups,
        ..Identity::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_as_upstream_spells_them() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(t.secret_name(), "bootstrap-token-abcdef");
        assert!(Token::parse("ABCDEF.0123456789abcdef").is_none());
        assert!(Token::parse("abcdef.0123").is_none());
        assert!(Token::parse("eyJhbGciOi.x").is_none());
        let generated = Token::generate();
        assert_eq!(Token::parse(&generated.to_string()), Some(generated));
    }

    #[test]
    fn join_tokens_round_trip_and_refuse_bad_hashes() {
        let join = JoinToken {
            ca_hash: "ab".repeat(32),
            token: Token::generate(),
        };
        assert_eq!(JoinToken::parse(&join.to_string()).unwrap(), join);
        let sha = format!("K10sha256:{}::{}", "AB".repeat(32), join.token);
        assert_eq!(JoinToken::parse(&sha).unwrap(), join);
        assert!(JoinToken::parse(&format!("K10abc::{}", join.token)).is_err());
        assert!(JoinToken::parse(&join.token.to_string()).is_err());
    }

    #[test]
    fn expirations_in_the_past_or_unreadable_have_expired() {
        let now = time::OffsetDateTime::now_utc();
        assert!(expired("2000-01-01T00:00:00Z", now));
        assert!(!expired("2999-01-01T00:00:00Z", now));
        assert!(expired("tomorrow", now));
    }
}
