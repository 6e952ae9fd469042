//! Authorization: one interface every request passes after authentication.
//! Until RBAC lands, authenticated users may do everything; the Forbidden
//! wording is upstream's, for the authorizers to come.

use crate::http::Identity;
use crate::status::ApiError;

/// What a request asks to do, as upstream's authorizer attributes.
pub struct Attributes<'a> {
    pub user: &'a Identity,
    pub verb: &'a str,
    pub namespace: Option<&'a str>,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub name: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, with an optional reason appended to the message.
    Deny(String),
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, attrs: &Attributes<'_>) -> Decision;
}

/// Every authenticated user may do everything.
pub struct AllowAuthenticated;

impl Authorizer for AllowAuthenticated {
    fn authorize(&self, _attrs: &Attributes<'_>) -> Decision {
        Decision::Allow
    }
}

/// Upstream's message: `pods "x" is forbidden: User "u" cannot get resource
/// "pods" in API group "" in the namespace "default"`.
pub fn forbidden(attrs: &Attributes<'_>, reason: &str) -> ApiError {
    let resource = match attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.to_owned(),
    };
    let subject = match attrs.name {
        Some(name) => format!(
            "{} {name:?}",
            crate::status::qualified(attrs.group, attrs.resource)
        ),
        None => crate::status::qualified(attrs.group, attrs.resource),
    };
    let scope = match attrs.namespace {
        Some(ns) => format!(" in the namespace {ns:?}"),
        None => " at the cluster scope".to_owned(),
    };
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    ApiError::forbidden(format!(
        "{subject} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?}{scope}{reason}",
        attrs.user.user, attrs.verb, attrs.group
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_reads_like_upstream() {
        let user = Identity {
            user: "backend".into(),
            groups: vec!["dev".into()],
        };
        let list = Attributes {
            user: &user,
            verb: "list",
            namespace: Some("default"),
            group: "",
            resource: "pods",
            subresource: None,
            name: None,
        };
        assert_eq!(
            forbidden(&list, "").message,
            r#"pods is forbidden: User "backend" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        let get = Attributes {
            user: &user,
            verb: "get",
            namespace: None,
            group: "apps",
            resource: "deployments",
            subresource: Some("scale"),
            name: Some("web"),
        };
        assert_eq!(
            forbidden(&get, "").message,
            r#"deployments.apps "web" is forbidden: User "backend" cannot get resource "deployments/scale" in API group "apps" at the cluster scope"#
        );
    }
}
