//! The claims of ServiceAccount tokens, by upstream's names, and what a
//! verified token says about its bearer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The issuer of legacy (Secret) tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Clock skew tolerated on `nbf` and `exp`, as go-jose's default leeway.
const LEEWAY: i64 = 60;

/// An object by name and UID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The object a bound token dies with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    Pod(Ref),
    Secret(Ref),
}

/// The `kubernetes.io` claim of bound tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(rename = "kubernetes.io", skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Private>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_namespace: Option<String>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/secret.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_secret_name: Option<String>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/service-account.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_service_account_name: Option<String>,
    #[serde(
        rename = "kubernetes.io/serviceaccount/service-account.uid",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_service_account_uid: Option<String>,
}

/// Who a verified token speaks for, still to be checked against the store:
/// the ServiceAccount (and the bound object) must exist with these UIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub service_account: Ref,
    pub bound: Option<Bound>,
    /// The Secret a legacy token must still be the `token` of.
    pub legacy_secret: Option<String>,
}

impl Claims {
    /// A TokenRequest's token: valid from `now` for `expiration_seconds`.
    pub fn bound(
        issuer: &str,
        audiences: Vec<String>,
        namespace: &str,
        service_account: Ref,
        bound: Option<Bound>,
        now: i64,
        expiration_seconds: i64,
    ) -> Self {
        let (pod, secret) = match bound {
            Some(Bound::Pod(r)) => (Some(r), None),
            Some(Bound::Secret(r)) => (None, Some(r)),
            None => (None, None),
        };
        Self {
            iss: issuer.to_owned(),
            sub: crate::username(namespace, &service_account.name),
            aud: audiences,
            exp: Some(now + expiration_seconds),
            iat: Some(now),
            nbf: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            kubernetes: Some(Private {
                namespace: namespace.to_owned(),
                serviceaccount: service_account,
                pod,
                secret,
            }),
            ..Self::default()
        }
    }

    /// A legacy token for the Secret `secret` of the ServiceAccount.
    pub fn legacy(namespace: &str, service_account: Ref, secret: &str) -> Self {
        Self {
            iss: LEGACY_ISSUER.to_owned(),
            sub: crate::username(namespace, &service_account.name),
            legacy_namespace: Some(namespace.to_owned()),
            legacy_secret_name: Some(secret.to_owned()),
            legacy_service_account_name: Some(service_account.name),
            legacy_service_account_uid: Some(service_account.uid),
            ..Self::default()
        }
    }

    /// Checks what the signature does not: a bound token's issuer, time
    /// window and audiences (one of `audiences` must be among them), or a
    /// legacy token's claims being complete.
    pub fn subject(&self, issuer: &str, audiences: &[String], now: i64) -> Result<Subject, Error> {
        let invalid = |why: &str| Err(Error::Invalid(why.to_owned()));
        if self.iss == LEGACY_ISSUER {
            let (Some(ns), Some(name), Some(uid), Some(secret)) = (
                &self.legacy_namespace,
                &self.legacy_service_account_name,
                &self.legacy_service_account_uid,
                &self.legacy_secret_name,
            ) else {
                return invalid("a legacy token lacks its claims");
            };
            if self.sub != crate::username(ns, name) {
                return invalid("the subject is not the token's ServiceAccount");
            }
            return Ok(Subject {
                namespace: ns.clone(),
                service_account: Ref {
                    name: name.clone(),
                    uid: uid.clone(),
                },
                bound: None,
                legacy_secret: Some(secret.clone()),
            });
        }
        if self.iss != issuer {
            return invalid("the issuer is not this cluster's");
        }
        let Some(exp) = self.exp else {
            return invalid("the token has no expiry");
        };
        if now > exp + LEEWAY {
            return invalid("the token has expired");
        }
        if self.nbf.is_some_and(|nbf| now + LEEWAY < nbf) {
            return invalid("the token is not valid yet");
        }
        if !self.aud.iter().any(|a| audiences.contains(a)) {
            return invalid("the token is for other audiences");
        }
        let Some(private) = &self.kubernetes else {
            return invalid("the token has no kubernetes.io claim");
        };
        if self.sub != crate::username(&private.namespace, &private.serviceaccount.name) {
            return invalid("the subject is not the token's ServiceAccount");
        }
        let bound = match (&private.pod, &private.secret) {
            (Some(pod), _) => Some(Bound::Pod(pod.clone())),
            (None, Some(secret)) => Some(Bound::Secret(secret.clone())),
            (None, None) => None,
        };
        Ok(Subject {
            namespace: private.namespace.clone(),
            service_account: private.serviceaccount.clone(),
            bound,
            legacy_secret: None,
        })
    }
}

/// A token's `iat` and `exp`, read without verifying it: how a holder
/// (the node agent) knows when to ask for a fresh one.
pub fn lifetime(token: &str) -> Option<(i64, i64)> {
    let payload = token.split('.').nth(1)?;
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    Some((claims.iat?, claims.exp?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_ISSUER, SigningKey};

    fn sa() -> Ref {
        Ref {
            name: "bot".into(),
            uid: "u-1".into(),
        }
    }

    fn pod() -> Option<Bound> {
        Some(Bound::Pod(Ref {
            name: "web".into(),
            uid: "p-1".into(),
        }))
    }

    #[test]
    fn bound_claims_have_upstreams_names() {
        let claims = Claims::bound(
            DEFAULT_ISSUER,
            vec!["api".into()],
            "work",
            sa(),
            pod(),
            1000,
            3600,
        );
        let json = serde_json::to_value(&claims).unwrap();
        assert_eq!(json["iss"], DEFAULT_ISSUER);
        assert_eq!(json["sub"], "system:serviceaccount:work:bot");
        assert_eq!(json["aud"], serde_json::json!(["api"]));
        assert_eq!(
            (
                json["iat"].as_i64(),
                json["nbf"].as_i64(),
                json["exp"].as_i64()
            ),
            (Some(1000), Some(1000), Some(4600))
        );
        assert!(json["jti"].is_string());
        assert_eq!(
            json["kubernetes.io"],
            serde_json::json!({
                "namespace": "work",
                "serviceaccount": {"name": "bot", "uid": "u-1"},
                "pod": {"name": "web", "uid": "p-1"},
            })
        );
        assert!(json.get("kubernetes.io/serviceaccount/namespace").is_none());
    }

    #[test]
    fn signed_tokens_verify_and_name_their_subject() {
        let key = SigningKey::generate().unwrap();
        let token = key
            .sign(&Claims::bound(
                DEFAULT_ISSUER,
                vec!["api".into()],
                "work",
                sa(),
                pod(),
                1000,
                3600,
            ))
            .unwrap();
        assert_eq!(lifetime(&token), Some((1000, 4600)));
        let subject = key
            .claims(&token)
            .unwrap()
            .subject(DEFAULT_ISSUER, &["api".to_owned()], 2000)
            .unwrap();
        assert_eq!(subject.namespace, "work");
        assert_eq!(subject.service_account, sa());
        assert_eq!(subject.bound, pod());
        // Another key's signature, a changed payload, or garbage do not verify.
        let other = SigningKey::generate().unwrap();
        assert!(other.claims(&token).is_err());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(br#"{"iss":"x","sub":"system:serviceaccount:kube-system:admin"}"#);
        parts[1] = &forged;
        assert!(key.claims(&parts.join(".")).is_err());
        assert!(key.claims("garbage").is_err());
    }

    #[test]
    fn expiry_audience_and_issuer_are_checked() {
        let claims = Claims::bound(
            DEFAULT_ISSUER,
            vec!["api".into()],
            "work",
            sa(),
            None,
            1000,
            600,
        );
        let aud = ["api".to_owned()];
        assert!(claims.subject(DEFAULT_ISSUER, &aud, 1600 + LEEWAY).is_ok());
        assert!(
            claims.subject(DEFAULT_ISSUER, &aud, 1601 + LEEWAY).is_err(),
            "expired"
        );
        assert!(
            claims
                .subject(DEFAULT_ISSUER, &aud, 1000 - LEEWAY - 1)
                .is_err(),
            "not yet valid"
        );
        assert!(
            claims
                .subject(DEFAULT_ISSUER, &["vault".to_owned()], 1200)
                .is_err(),
            "other audience"
        );
        assert!(
            claims.subject("https://elsewhere", &aud, 1200).is_err(),
            "other issuer"
        );
    }

    #[test]
    fn legacy_tokens_never_expire_and_name_their_secret() {
        let key = SigningKey::generate().unwrap();
        let token = key
            .sign(&Claims::legacy("work", sa(), "bot-token"))
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["iss"], LEGACY_ISSUER);
        assert_eq!(
            json["kubernetes.io/serviceaccount/secret.name"],
            "bot-token"
        );
        assert_eq!(
            json["kubernetes.io/serviceaccount/service-account.uid"],
            "u-1"
        );
        assert!(json.get("exp").is_none());
        let subject = key
            .claims(&token)
            .unwrap()
            .subject(DEFAULT_ISSUER, &[], i64::MAX / 2)
            .unwrap();
        assert_eq!(subject.legacy_secret.as_deref(), Some("bot-token"));
        assert_eq!(subject.service_account, sa());
        let mut tampered = Claims::legacy("work", sa(), "bot-token");
        tampered.sub = "system:serviceaccount:kube-system:bot".into();
        assert!(tampered.subject(DEFAULT_ISSUER, &[], 0).is_err());
    }

    #[test]
    fn keys_survive_their_pem() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(key.pem()).unwrap();
        assert_eq!(key.jwks(), again.jwks());
        let token = key.sign(&Claims::legacy("work", sa(), "s")).unwrap();
        assert!(again.claims(&token).is_ok());
        assert!(SigningKey::from_pem("not a key").is_err());
    }
}
