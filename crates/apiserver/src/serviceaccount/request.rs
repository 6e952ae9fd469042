//! The TokenRequest API (authentication.k8s.io/v1, `serviceaccounts/token`):
//! a token for a ServiceAccount, for the audiences and lifetime asked,
//! bound to a Pod or Secret of its namespace if asked, as upstream's
//! registry validates and answers it.

use kubox_satoken::{Bound, Claims, Ref};
use serde_json::{Value, json};

use super::{Tokens, live, now, uid};
use crate::api::Api;
use crate::status::{ApiError, ApiResult, FieldError};

const KIND: &str = "TokenRequest";
const GROUP: &str = "authentication.k8s.io";
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

fn invalid(name: &str, field: &str, value: &Value, why: &str) -> ApiError {
    ApiError::invalid(
        GROUP,
        KIND,
        name,
        vec![FieldError::invalid(field, value, why)],
    )
}

pub(super) async fn create(
    tokens: &Tokens,
    api: &Api,
    ns: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding TokenRequest: {e}")))?;
    let spec = &request["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let field = "spec.expirationSeconds";
    if expiration < MIN_EXPIRATION {
        return Err(invalid(
            name,
            field,
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION {
        return Err(invalid(
            name,
            field,
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    if audiences.is_empty() {
        audiences = tokens.audiences.clone();
    }
    let account = live(api, "serviceaccounts", ns, name, None)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let mut bound_ref = spec["boundObjectRef"].clone();
    let kind = bound_ref["kind"].as_str().map(str::to_owned);
    let bound = match kind.as_deref() {
        None => None,
        Some(kind @ ("Pod" | "Secret")) => {
            let bound_name = bound_ref["name"].as_str().unwrap_or_default().to_owned();
            let bound_name = bound_name.as_str();
            let plural = if kind == "Pod" { "pods" } else { "secrets" };
            let object = live(api, plural, ns, bound_name, None)
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::not_found("", plural, bound_name))?;
            let actual = uid(&object).to_owned();
            match bound_ref["uid"].as_str().map(str::to_owned) {
                Some(wanted) if !wanted.is_empty() && wanted != actual => {
                    return Err(ApiError::conflict(
                        "",
                        plural,
                        bound_name,
                        &format!(
                            "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
                        ),
                    ));
                }
                _ => bound_ref["uid"] = json!(actual),
            }
            if kind == "Pod" && object["spec"]["serviceAccountName"].as_str() != Some(name) {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                )));
            }
            let r = Ref {
                name: bound_name.to_owned(),
                uid: actual,
            };
            Some(if kind == "Pod" {
                Bound::Pod(r)
            } else {
                Bound::Secret(r)
            })
        }
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to object of kind {kind:?}"
            )));
        }
    };
    let is_bound = bound.is_some();
    let issued = now();
    let account_ref = Ref {
        name: name.to_owned(),
        uid: uid(&account).to_owned(),
    };
    let claims = Claims::bound(
        &tokens.issuer,
        audiences.clone(),
        ns,
        account_ref,
        bound,
        issued,
        expiration,
    );
    let token = tokens
        .key
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = time::OffsetDateTime::from_unix_timestamp(issued + expiration)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if is_bound {
        spec["boundObjectRef"] = bound_ref;
    }
    Ok(json!({
        "kind": KIND,
        "apiVersion": format!("{GROUP}/v1"),
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}
