//! Impersonation, as upstream's filter: `Impersonate-User`,
//! `Impersonate-Group`, `Impersonate-Uid` and `Impersonate-Extra-*` make a
//! request act as another user, when the caller may `impersonate` each of
//! them (users, serviceaccounts, groups, uids, userextras).

use http::HeaderMap;

use crate::authz::{self, Attributes, Authorizer, Decision};
use crate::http::{ANONYMOUS, Identity, UNAUTHENTICATED};
use crate::rbac::SERVICE_ACCOUNT_PREFIX;
use crate::status::{ApiError, ApiResult};

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn check(authorizer: &dyn Authorizer, attrs: &Attributes<'_>) -> ApiResult<()> {
    match authz::decide(authorizer, attrs) {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(authz::forbidden(attrs, &reason)),
    }
}

/// The identity a request acts as: the caller's, or the one it
/// impersonates once every part of it is authorized.
pub fn impersonate(
    authorizer: &dyn Authorizer,
    caller: &Identity,
    headers: &HeaderMap,
) -> ApiResult<Identity> {
    let users = values(headers, USER);
    let groups = values(headers, GROUP);
    let uids = values(headers, UID);
    let extras: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix(EXTRA)?, v.to_str().ok()?)))
        .collect();
    let Some(user) = users.first().copied() else {
        if groups.is_empty() && uids.is_empty() && extras.is_empty() {
            return Ok(caller.clone());
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, a uid or extra fields without impersonating a user",
        ));
    };
    let attrs = |resource, group, namespace, name| Attributes {
        user: caller,
        verb: "impersonate",
        namespace,
        group,
        resource,
        subresource: None,
        name: Some(name),
        fields: None,
        path: None,
    };
    let service_account = user
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'));
    match service_account {
        Some((ns, name)) => check(authorizer, &attrs("serviceaccounts", "", Some(ns), name))?,
        None => check(authorizer, &attrs("users", "", None, user))?,
    }
    for g in &groups {
        check(authorizer, &attrs("groups", "", None, g))?;
    }
    for u in &uids {
        check(authorizer, &attrs("uids", "authentication.k8s.io", None, u))?;
    }
    for (key, value) in &extras {
        let mut a = attrs("userextras", "authentication.k8s.io", None, value);
        a.subresource = Some(key);
        check(authorizer, &a)?;
    }
    let mut out: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    if let (Some((ns, _)), true) = (service_account, groups.is_empty()) {
        out.push("system:serviceaccounts".into());
        out.push(format!("system:serviceaccounts:{ns}"));
    }
    let implied = if user == ANONYMOUS {
        UNAUTHENTICATED
    } else {
        "system:authenticated"
    };
    if !out.iter().any(|g| g == implied) {
        out.push(implied.into());
    }
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (key, value) in extras {
        extra
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    Ok(Identity {
        user: user.to_owned(),
        uid: uids.first().map(|u| u.to_string()).unwrap_or_default(),
        groups: out,
        extra,
    })
}
