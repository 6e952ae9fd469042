//! RBAC, as upstream's authorizer: a request is allowed when a
//! ClusterRoleBinding, or a RoleBinding in the request's namespace, names
//! the user (directly, by a group, or as a ServiceAccount) and its role has
//! a rule allowing the request. Nothing denies; bindings to missing roles
//! grant nothing. Roles and bindings come from an in-memory view
//! (`view`); writes of them are checked for escalation (`escalation`).

pub mod escalation;
pub mod policy;
pub mod rules;
pub mod view;

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};

use crate::authz::{Attributes, Authorizer, Decision};
use crate::http::Identity;
use view::{Binding, RbacView};

/// The prefix of a ServiceAccount's user name.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

pub struct Rbac {
    pub view: Arc<RbacView>,
}

/// Whether `subject` of a binding in `namespace` names `user`.
fn names(subject: &Subject, user: &Identity, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.user,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            user.user == format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", subject.name)
        }
        _ => false,
    }
}

impl Rbac {
    /// The rules of the role a binding in `namespace` ("" for cluster
    /// bindings) refers to; nothing when it is missing.
    fn role_rules(&self, binding: &Binding, namespace: &str) -> Option<Arc<Vec<PolicyRule>>> {
        match binding.role_ref.kind.as_str() {
            "ClusterRole" => self.view.cluster_role(&binding.role_ref.name),
            "Role" if !namespace.is_empty() => self.view.role(namespace, &binding.role_ref.name),
            _ => None,
        }
    }

    /// Calls `visit` with the rule sets that apply to `user` in `namespace`
    /// until it returns true.
    fn visit(
        &self,
        user: &Identity,
        namespace: &str,
        visit: &mut dyn FnMut(&[PolicyRule]) -> bool,
    ) {
        let cluster = self
            .view
            .cluster_role_bindings()
            .into_iter()
            .map(|b| (b, ""));
        let local = (!namespace.is_empty())
            .then(|| self.view.role_bindings(namespace))
            .into_iter()
            .flatten()
            .map(|b| (b, namespace));
        for (b, ns) in cluster.chain(local) {
            if !b.subjects.iter().any(|s| names(s, user, ns)) {
                continue;
            }
            if self.role_rules(&b, ns).is_some_and(|rules| visit(&rules)) {
                return;
            }
        }
    }
}

impl Authorizer for Rbac {
    fn authorize(&self, attrs: &Attributes<'_>) -> Decision {
        let mut allowed = false;
        self.visit(
            attrs.user,
            attrs.namespace.unwrap_or_default(),
            &mut |rules| {
                allowed = rules.iter().any(|r| rules::allows(r, attrs));
                allowed
            },
        );
        if allowed {
            Decision::Allow
        } else {
            // Upstream's RBAC gives no reason for an unmatched request.
            Decision::Deny(String::new())
        }
    }

    fn rules_for(&self, user: &Identity, namespace: &str) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        self.visit(user, namespace, &mut |rules| {
            out.extend_from_slice(rules);
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(Into::into),
            api_group: None,
        }
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let jane = Identity {
            user: "jane".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            ..Identity::default()
        };
        assert!(names(&subject("User", "jane", None), &jane, ""));
        assert!(!names(&subject("User", "bob", None), &jane, ""));
        assert!(names(&subject("Group", "dev", None), &jane, ""));
        assert!(names(
            &subject("Group", "system:authenticated", None),
            &jane,
            ""
        ));
        assert!(!names(&subject("Group", "jane", None), &jane, ""));
        let bot = Identity {
            user: "system:serviceaccount:work:bot".into(),
            groups: vec![],
            ..Identity::default()
        };
        assert!(names(
            &subject("ServiceAccount", "bot", Some("work")),
            &bot,
            ""
        ));
        assert!(!names(
            &subject("ServiceAccount", "bot", Some("other")),
            &bot,
            ""
        ));
        // A RoleBinding's ServiceAccount without a namespace is of the binding's.
        assert!(names(&subject("ServiceAccount", "bot", None), &bot, "work"));
        assert!(!names(
            &subject("ServiceAccount", "bot", None),
            &bot,
            "default"
        ));
        assert!(!names(&subject("User", "bot", None), &bot, "work"));
    }
}
