//! Authorization: one interface every request passes after authentication,
//! with upstream's modes (`--authorization-mode`): Node
//! (`crate::nodeauthz`) then RBAC (`crate::rbac`) by default, AlwaysAllow
//! for compatibility. Members of `system:masters` are allowed before any
//! authorizer is asked, as upstream's privileged group.

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::http::Identity;
use crate::selectors::FieldSelector;
use crate::status::ApiError;

/// The group whose members may do everything, whatever the authorizer.
pub const MASTERS: &str = "system:masters";

/// What a request asks to do, as upstream's authorizer attributes: a
/// resource request, or (with `path`) a non-resource one.
pub struct Attributes<'a> {
    pub user: &'a Identity,
    pub verb: &'a str,
    pub namespace: Option<&'a str>,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub name: Option<&'a str>,
    /// A list's or watch's field selector (the Node authorizer lets a node
    /// list only its own pods).
    pub fields: Option<&'a FieldSelector>,
    /// The URL path of a non-resource request (`/healthz`, `/apis`).
    pub path: Option<&'a str>,
}

impl<'a> Attributes<'a> {
    /// A request for a non-resource URL with the HTTP method's verb.
    pub fn non_resource(user: &'a Identity, verb: &'a str, path: &'a str) -> Self {
        Self {
            user,
            verb,
            namespace: None,
            group: "",
            resource: "",
            subresource: None,
            name: None,
            fields: None,
            path: Some(path),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Not allowed, with an optional reason appended to the message. No
    /// authorizer of kubox denies outright: in a `Union` the next one is asked.
    Deny(String),
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, attrs: &Attributes<'_>) -> Decision;

    /// The rules `user` holds in `namespace` (empty: cluster-wide ones
    /// only), for SelfSubjectRulesReview and escalation checks.
    fn rules_for(&self, user: &Identity, namespace: &str) -> Vec<PolicyRule>;
}

/// Asks `authorizer` unless the user is in `system:masters`.
pub fn decide(authorizer: &dyn Authorizer, attrs: &Attributes<'_>) -> Decision {
    if attrs.user.groups.iter().any(|g| g == MASTERS) {
        return Decision::Allow;
    }
    authorizer.authorize(attrs)
}

/// Authorizers asked in turn until one allows, as upstream's union of
/// `--authorization-mode`s; the refusal gives every reason they gave.
pub struct Union(pub Vec<std::sync::Arc<dyn Authorizer>>);

impl Authorizer for Union {
    fn authorize(&self, attrs: &Attributes<'_>) -> Decision {
        let mut reasons = Vec::new();
        for a in &self.0 {
            match a.authorize(attrs) {
                Decision::Allow => return Decision::Allow,
                Decision::Deny(reason) if !reason.is_empty() => reasons.push(reason),
                Decision::Deny(_) => {}
            }
        }
        Decision::Deny(reasons.join("\n"))
    }

    fn rules_for(&self, user: &Identity, namespace: &str) -> Vec<PolicyRule> {
        self.0
            .iter()
            .flat_map(|a| a.rules_for(user, namespace))
            .collect()
    }
}

/// Every request is allowed (upstream's AlwaysAllow mode).
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _attrs: &Attributes<'_>) -> Decision {
        Decision::Allow
    }

    fn rules_for(&self, _user: &Identity, _namespace: &str) -> Vec<PolicyRule> {
        let all = vec!["*".to_owned()];
        vec![
            PolicyRule {
                api_groups: Some(all.clone()),
                resources: Some(all.clone()),
                verbs: all.clone(),
                ..Default::default()
            },
            PolicyRule {
                non_resource_urls: Some(all.clone()),
                verbs: all,
                ..Default::default()
            },
        ]
    }
}

/// Upstream's message: `pods "x" is forbidden: User "u" cannot get resource
/// "pods" in API group "" in the namespace "default"`, or for a path
/// `forbidden: User "u" cannot get path "/apis"`.
pub fn forbidden(attrs: &Attributes<'_>, reason: &str) -> ApiError {
    let user = &attrs.user.user;
    let why = match attrs.path {
        Some(path) => format!("User {user:?} cannot {} path {path:?}", attrs.verb),
        None => {
            let resource = match attrs.subresource {
                Some(sub) => format!("{}/{sub}", attrs.resource),
                None => attrs.resource.to_owned(),
            };
            let scope = match attrs.namespace {
                Some(ns) => format!(" in the namespace {ns:?}"),
                None => " at the cluster scope".to_owned(),
            };
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?}{scope}",
                attrs.verb, attrs.group
            )
        }
    };
    let why = if reason.is_empty() {
        why
    } else {
        format!("{why}: {reason}")
    };
    ApiError::forbidden_on(
        attrs.group,
        attrs.resource,
        attrs.name.unwrap_or_default(),
        &why,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_reads_like_upstream() {
        let user = Identity {
            user: "backend".into(),
            groups: vec!["dev".into()],
            ..Identity::default()
        };
        let list = Attributes {
            user: &user,
            verb: "list",
            namespace: Some("default"),
            group: "",
            resource: "pods",
            subresource: None,
            name: None,
            fields: None,
            path: None,
        };
        let e = forbidden(&list, "");
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "backend" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        assert_eq!(
            e.to_status()["details"],
            serde_json::json!({"kind": "pods"})
        );
        let get = Attributes {
            user: &user,
            verb: "get",
            namespace: None,
            group: "apps",
            resource: "deployments",
            subresource: Some("scale"),
            name: Some("web"),
            fields: None,
            path: None,
        };
        assert_eq!(
            forbidden(&get, "").message,
            r#"deployments.apps "web" is forbidden: User "backend" cannot get resource "deployments/scale" in API group "apps" at the cluster scope"#
        );
        assert_eq!(
            forbidden(&Attributes::non_resource(&user, "get", "/metrics"), "").message,
            r#"forbidden: User "backend" cannot get path "/metrics""#
        );
    }

    #[test]
    fn masters_bypass_the_authorizer() {
        struct Never;
        impl Authorizer for Never {
            fn authorize(&self, _: &Attributes<'_>) -> Decision {
                Decision::Deny(String::new())
            }
            fn rules_for(&self, _: &Identity, _: &str) -> Vec<PolicyRule> {
                Vec::new()
            }
        }
        let admin = Identity {
            user: "kubox-admin".into(),
            groups: vec![MASTERS.into()],
            ..Identity::default()
        };
        let jane = Identity {
            user: "jane".into(),
            groups: vec![],
            ..Identity::default()
        };
        let path = |u| Attributes::non_resource(u, "get", "/");
        assert_eq!(decide(&Never, &path(&admin)), Decision::Allow);
        assert!(matches!(decide(&Never, &path(&jane)), Decision::Deny(_)));
    }
}
