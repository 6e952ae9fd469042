//! Escalation prevention, as upstream's RBAC storage: a user may write a
//! Role or ClusterRole only with rules they hold themselves (or the
//! `escalate` verb on it), and a binding only to a role whose rules they
//! hold (or the `bind` verb on it). `system:masters` may do anything.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;

use super::Rbac;
use super::rules::{compact, go_quoted, uncovered};
use crate::api::{CheckedWrite, WriteCheck};
use crate::authz::{self, Attributes, Authorizer, Decision};
use crate::http::Identity;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

pub const GROUP: &str = "rbac.authorization.k8s.io";

pub struct Escalation {
    pub rbac: Arc<Rbac>,
}

impl Escalation {
    /// Whether `user` may `verb` the named role (escalate, bind).
    fn may(
        &self,
        user: &Identity,
        verb: &str,
        resource: &str,
        ns: Option<&str>,
        name: &str,
    ) -> bool {
        let attrs = Attributes {
            user,
            verb,
            namespace: ns,
            group: GROUP,
            resource,
            subresource: None,
            name: Some(name),
            fields: None,
            path: None,
        };
        authz::decide(&*self.rbac, &attrs) == Decision::Allow
    }

    /// Refuses unless `user` holds every rule of `wanted` in `ns`.
    fn confirm_held(
        &self,
        user: &Identity,
        ns: Option<&str>,
        wanted: &[PolicyRule],
        rt: &ResourceType,
        name: &str,
    ) -> ApiResult<()> {
        let owned = self.rbac.rules_for(user, ns.unwrap_or_default());
        let mut missing: Vec<String> = uncovered(&owned, wanted).iter().map(compact).collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort();
        missing.dedup();
        Err(ApiError::forbidden_on(
            rt.group,
            rt.plural,
            name,
            &format!(
                "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
                user.user,
                go_quoted(&user.groups),
                missing.join("\n")
            ),
        ))
    }
}

fn decode<T: serde::de::DeserializeOwned + Default>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

impl WriteCheck for Escalation {
    fn check(&self, user: &Identity, write: &CheckedWrite<'_>) -> ApiResult<()> {
        let CheckedWrite { rt, ns, obj, .. } = *write;
        if rt.group != GROUP || user.groups.iter().any(|g| g == authz::MASTERS) {
            return Ok(());
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        match rt.plural {
            "roles" | "clusterroles" => {
                if self.may(user, "escalate", rt.plural, ns, name) {
                    return Ok(());
                }
                if obj["aggregationRule"].is_object() {
                    return Err(ApiError::forbidden_on(
                        rt.group,
                        rt.plural,
                        name,
                        "must have cluster-admin privileges to use an aggregationRule",
                    ));
                }
                let rules: Vec<PolicyRule> = decode(&obj["rules"]);
                self.confirm_held(user, ns, &rules, rt, name)
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_ref: RoleRef = decode(&obj["roleRef"]);
                let (resource, role_ns) = match role_ref.kind.as_str() {
                    "Role" => ("roles", ns),
                    _ => ("clusterroles", None),
                };
                // `bind` on a ClusterRole counts in the binding's namespace too.
                if self.may(user, "bind", resource, ns, &role_ref.name) {
                    return Ok(());
                }
                let rules = match role_ns {
                    Some(role_ns) => self.rbac.view.role(role_ns, &role_ref.name),
                    None => self.rbac.view.cluster_role(&role_ref.name),
                };
                let Some(rules) = rules else {
                    return Err(ApiError::forbidden_on(
                        rt.group,
                        rt.plural,
                        name,
                        &format!(
                            "{} {:?} not found",
                            crate::status::qualified(GROUP, resource),
                            role_ref.name
                        ),
                    ));
                };
                self.confirm_held(user, ns, &rules, rt, name)
            }
            _ => Ok(()),
        }
    }
}
