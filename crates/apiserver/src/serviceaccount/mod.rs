//! ServiceAccount tokens in the API server: issuing them (the
//! `serviceaccounts/token` subresource, `request`), authenticating their
//! bearers, and publishing the keys that verify them (OIDC discovery).
//! The ServiceAccount admission plugin, which mounts them into pods, is
//! `admission`.

pub mod admission;
mod request;

use std::collections::BTreeMap;

use kubox_satoken::{Bound, SigningKey, Subject};
use serde_json::{Value, json};

use crate::api::Api;
use crate::http::{CREDENTIAL_ID, Identity};
use crate::status::ApiResult;

/// How long after its deletion began a bound pod or Secret still lets its
/// tokens in, as upstream's validator allows.
const DELETION_GRACE: i64 = 60;

/// The `extra` keys naming the pod a token is bound to.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

pub struct Tokens {
    key: SigningKey,
    issuer: String,
    /// Audiences the API server accepts (upstream's `--api-audiences`,
    /// which default to the issuer).
    audiences: Vec<String>,
}

impl Tokens {
    pub fn new(key: SigningKey) -> Self {
        Self {
            key,
            issuer: kubox_satoken::DEFAULT_ISSUER.to_owned(),
            audiences: vec![kubox_satoken::DEFAULT_ISSUER.to_owned()],
        }
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        self.key.jwks()
    }

    /// The ServiceAccount a bearer token speaks for, or why it does not:
    /// signed by this cluster, within its lifetime, for this API server, and
    /// its ServiceAccount (and bound object, or Secret) still the one it names.
    pub async fn authenticate(&self, api: &Api, token: &str) -> Result<Identity, String> {
        let claims = self.key.claims(token).map_err(|e| e.to_string())?;
        let subject = claims
            .subject(&self.issuer, &self.audiences, now())
            .map_err(|e| e.to_string())?;
        self.check_objects(api, &subject, token).await?;
        let ns = &subject.namespace;
        // Upstream's extra for a service account: the pod a token is bound
        // to, and the token's ID.
        let mut extra = BTreeMap::new();
        if let Some(Bound::Pod(pod)) = &subject.bound {
            extra.insert(POD_NAME.to_owned(), vec![pod.name.clone()]);
            extra.insert(POD_UID.to_owned(), vec![pod.uid.clone()]);
        }
        if let Some(jti) = claims.jti.as_ref().filter(|j| !j.is_empty()) {
            extra.insert(CREDENTIAL_ID.to_owned(), vec![format!("JTI={jti}")]);
        }
        Ok(Identity {
            user: kubox_satoken::username(ns, &subject.service_account.name),
            uid: subject.service_account.uid.clone(),
            groups: kubox_satoken::groups(ns),
            extra,
        })
    }

    async fn check_objects(&self, api: &Api, subject: &Subject, token: &str) -> Result<(), String> {
        let ns = subject.namespace.as_str();
        let account = live(
            api,
            "serviceaccounts",
            ns,
            &subject.service_account.name,
            None,
        )
        .await?
        .ok_or("its ServiceAccount was deleted")?;
        if uid(&account) != subject.service_account.uid {
            return Err("its ServiceAccount was deleted and made anew".into());
        }
        if let Some(secret) = &subject.legacy_secret {
            let secret = live(api, "secrets", ns, secret, None)
                .await?
                .ok_or("its Secret was deleted")?;
            let stored = secret["data"]["token"].as_str().unwrap_or_default();
            let annotations = &secret["metadata"]["annotations"];
            if base64_decode(stored).as_deref() != Some(token.as_bytes())
                || annotations["kubernetes.io/service-account.name"]
                    != subject.service_account.name.as_str()
            {
                return Err("its Secret holds another token".into());
            }
        }
        let (plural, bound) = match &subject.bound {
            Some(Bound::Pod(r)) => ("pods", r),
            Some(Bound::Secret(r)) => ("secrets", r),
            None => return Ok(()),
        };
        let object = live(api, plural, ns, &bound.name, Some(DELETION_GRACE))
            .await?
            .ok_or_else(|| format!("its bound {plural} object was deleted"))?;
        if uid(&object) != bound.uid {
            return Err(format!(
                "its bound {plural} object was deleted and made anew"
            ));
        }
        Ok(())
    }

    /// The TokenRequest API: a token for the ServiceAccount `ns/name`.
    pub async fn request(&self, api: &Api, ns: &str, name: &str, body: &[u8]) -> ApiResult<Value> {
        request::create(self, api, ns, name, body).await
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A namespaced core object that is not going away: None when absent or
/// when its deletion began (more than `grace` seconds ago, if given).
async fn live(
    api: &Api,
    plural: &str,
    ns: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Option<Value>, String> {
    let rt = api
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| format!("{plural} are not served"))?;
    let obj = match api.get(rt, Some(ns), name).await {
        Ok(obj) => obj,
        Err(e) if e.code == http::StatusCode::NOT_FOUND => return Ok(None),
        Err(e) => return Err(e.message),
    };
    if let Some(deleted) = obj["metadata"]["deletionTimestamp"].as_str() {
        let since =
            time::OffsetDateTime::parse(deleted, &time::format_description::well_known::Rfc3339)
                .map(|t| now() - t.unix_timestamp())
                .unwrap_or(i64::MAX);
        if since > grace.unwrap_or(-1) {
            return Ok(None);
        }
    }
    Ok(Some(obj))
}
