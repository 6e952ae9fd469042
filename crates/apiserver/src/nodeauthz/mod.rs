//! Upstream's Node authorizer (`--authorization-mode=Node,RBAC`): a node
//! (`system:node:<name>` in `system:nodes`) may read the Secrets,
//! ConfigMaps, claims and volumes of the pods bound to it, ask tokens for
//! their ServiceAccounts, read only its own Node and its pods, and use its
//! own Lease; everything else it may do is the `system:node` role's rules.
//! What it does not allow is left to the next authorizer (RBAC), with the
//! reason upstream gives. NodeRestriction admission
//! (`admission::noderestriction`) limits the writes it allows to the
//! node's own objects.

pub mod graph;

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::authz::{Attributes, Authorizer, Decision};
use crate::cache::Cache;
use crate::http::Identity;
use graph::{Graph, Kind, Vertex};

/// The prefix of a node's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group every node is in.
pub const NODES_GROUP: &str = "system:nodes";
/// How long a node's refused request waits for the graph to catch up.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// The namespace of nodes' Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is, as upstream's node identifier: a `system:node:`
/// name in the `system:nodes` group; `Some("")` for a node whose name is
/// missing.
pub fn node_name(user: &Identity) -> Option<&str> {
    let name = user.user.strip_prefix(NODE_USER_PREFIX)?;
    user.groups.iter().any(|g| g == NODES_GROUP).then_some(name)
}

pub struct NodeAuthorizer {
    graph: Arc<Graph>,
    /// The caches the graph follows, by plural.
    followed: Vec<(&'static str, Arc<Cache>)>,
    /// The `system:node` role's rules, for what is not subdivided.
    rules: Vec<PolicyRule>,
}

fn allow() -> Decision {
    Decision::Allow
}

/// No opinion: the next authorizer decides; the reason ends the refusal.
fn pass(reason: impl Into<String>) -> Decision {
    Decision::Deny(reason.into())
}

impl NodeAuthorizer {
    /// Starts following the pods and PersistentVolumes caches.
    pub fn start(cache_of: impl Fn(&str) -> Option<Arc<Cache>>) -> Self {
        let graph = Arc::new(Graph::default());
        let mut followed = Vec::new();
        for plural in ["pods", "persistentvolumes"] {
            if let Some(cache) = cache_of(plural) {
                crate::cache::follow(&graph, cache.clone(), plural);
                followed.push((plural, cache));
            }
        }
        Self {
            graph,
            followed,
            rules: crate::rbac::policy::node_policy_rules(),
        }
    }

    /// Brings the graph up to every write committed before the call (the
    /// pod bound a moment ago), waiting at most [`CATCH_UP`] for each
    /// followed cache: the graph is fed in the background, so a node's
    /// first read after a bind could otherwise find no path yet.
    pub async fn catch_up(&self, api: &crate::api::Api) {
        for (plural, cache) in &self.followed {
            if let Err(e) = api.catch_up(cache, None).await {
                tracing::debug!(plural, "the node graph's cache is behind: {}", e.message);
                continue;
            }
            self.graph
                .wait_for(plural, cache.revision(), CATCH_UP)
                .await;
        }
    }

    fn related(&self, node: &str, kind: Kind, attrs: &Attributes<'_>) -> Decision {
        let Some(name) = attrs.name.filter(|n| !n.is_empty()) else {
            return pass("No Object name found");
        };
        let object = Vertex::new(kind, attrs.namespace.unwrap_or_default(), name);
        if self.graph.reaches(&object, node) {
            allow()
        } else {
            pass(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }

    /// Secrets and ConfigMaps: get, list and watch of one related object.
    fn read_namespaced(&self, node: &str, kind: Kind, attrs: &Attributes<'_>) -> Decision {
        if !matches!(attrs.verb, "get" | "list" | "watch") {
            return pass("can only read resources of this type");
        }
        if attrs.subresource.is_some() {
            return pass("cannot read subresource");
        }
        if attrs.namespace.is_none_or(str::is_empty) {
            return pass("can only read namespaced object of this type");
        }
        self.related(node, kind, attrs)
    }

    fn get(&self, node: &str, kind: Kind, attrs: &Attributes<'_>) -> Decision {
        if attrs.verb != "get" {
            return pass("can only get individual resources of this type");
        }
        if attrs.subresource.is_some() {
            return pass("cannot get subresource");
        }
        self.related(node, kind, attrs)
    }

    fn claim(&self, node: &str, attrs: &Attributes<'_>) -> Decision {
        if attrs.subresource != Some("status") {
            return self.get(node, Kind::PersistentVolumeClaim, attrs);
        }
        if !matches!(attrs.verb, "update" | "patch") {
            return pass("can only get/update/patch this type");
        }
        self.related(node, Kind::PersistentVolumeClaim, attrs)
    }

    fn token(&self, node: &str, attrs: &Attributes<'_>) -> Decision {
        if attrs.verb != "create" || attrs.name.is_none_or(str::is_empty) {
            return pass("can only create tokens for individual service accounts");
        }
        if attrs.subresource != Some("token") {
            return pass("can only create token subresource of serviceaccount");
        }
        self.related(node, Kind::ServiceAccount, attrs)
    }

    fn lease(node: &str, attrs: &Attributes<'_>) -> Decision {
        if !matches!(attrs.verb, "get" | "create" | "update" | "patch" | "delete") {
            return pass("can only get, create, update, patch, or delete a node lease");
        }
        if attrs.namespace != Some(NODE_LEASE_NAMESPACE) {
            return pass(format!(
                "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
            ));
        }
        // A create names no object: NodeRestriction checks its body.
        if attrs.verb != "create" && attrs.name != Some(node) {
            return pass("can only access node lease with the same name as the requesting node");
        }
        allow()
    }

    fn node(node: &str, attrs: &Attributes<'_>) -> Decision {
        match (attrs.subresource, attrs.verb) {
            // NodeRestriction keeps a node to its own Node.
            (None, "create" | "update" | "patch") | (Some("status"), "update" | "patch") => allow(),
            // By name, not by the graph: a node reads its Node before creating it.
            (None, "get" | "list" | "watch") => match attrs.name {
                Some(name) if name == node => allow(),
                None | Some("") => pass(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                )),
                Some(other) => pass(format!(
                    "node '{node}' cannot read '{other}', only its own Node object"
                )),
            },
            _ => pass(""),
        }
    }

    fn pod(&self, node: &str, attrs: &Attributes<'_>) -> Decision {
        match (attrs.subresource, attrs.verb) {
            (None, "get") => self.get(node, Kind::Pod, attrs),
            (None, "list" | "watch") => {
                let selected = attrs
                    .fields
                    .and_then(|f| f.requires("spec.nodeName"))
                    .is_some_and(|n| n == node);
                if selected {
                    allow()
                } else if attrs.name.is_some_and(|n| !n.is_empty()) {
                    self.related(node, Kind::Pod, attrs)
                } else {
                    pass("can only list/watch pods with spec.nodeName field selector")
                }
            }
            // Mirror pods, statuses and evictions: NodeRestriction keeps
            // them to the node's own pods.
            (None, "create" | "delete")
            | (Some("status"), "update" | "patch")
            | (Some("eviction"), "create") => allow(),
            _ => pass(""),
        }
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, attrs: &Attributes<'_>) -> Decision {
        let Some(node) = node_name(attrs.user) else {
            return pass("");
        };
        if node.is_empty() {
            return pass(format!("unknown node for user {:?}", attrs.user.user));
        }
        if attrs.path.is_none() && attrs.group.is_empty() {
            match attrs.resource {
                "secrets" => return self.read_namespaced(node, Kind::Secret, attrs),
                "configmaps" => return self.read_namespaced(node, Kind::ConfigMap, attrs),
                "persistentvolumeclaims" => return self.claim(node, attrs),
                "persistentvolumes" => return self.get(node, Kind::PersistentVolume, attrs),
                "serviceaccounts" => return self.token(node, attrs),
                "nodes" => return Self::node(node, attrs),
                "pods" => return self.pod(node, attrs),
                _ => {}
            }
        }
        if attrs.path.is_none()
            && attrs.group == "coordination.k8s.io"
            && attrs.resource == "leases"
        {
            return Self::lease(node, attrs);
        }
        if self
            .rules
            .iter()
            .any(|r| crate::rbac::rules::allows(r, attrs))
        {
            allow()
        } else {
            pass("")
        }
    }

    /// Upstream's Node authorizer does not enumerate what nodes may do.
    fn rules_for(&self, _user: &Identity, _namespace: &str) -> Vec<PolicyRule> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn a_node_is_a_node_name_in_the_nodes_group() {
        assert_eq!(
            node_name(&identity("system:node:a", &[NODES_GROUP])),
            Some("a")
        );
        assert_eq!(node_name(&identity("system:node:a", &["dev"])), None);
        assert_eq!(node_name(&identity("jane", &[NODES_GROUP])), None);
        assert_eq!(
            node_name(&identity("system:node:", &[NODES_GROUP])),
            Some("")
        );
    }

    fn decide(verb: &str, resource: &str, sub: Option<&str>, name: Option<&str>) -> Decision {
        let authz = NodeAuthorizer {
            graph: Arc::new(Graph::default()),
            followed: Vec::new(),
            rules: crate::rbac::policy::node_policy_rules(),
        };
        let user = identity("system:node:a", &[NODES_GROUP]);
        let (group, resource) = resource.rsplit_once('.').unwrap_or(("", resource));
        let namespace = match resource {
            "nodes" => None,
            "leases" => Some(NODE_LEASE_NAMESPACE),
            _ => Some("default"),
        };
        authz.authorize(&Attributes {
            user: &user,
            verb,
            namespace,
            group,
            resource,
            subresource: sub,
            name,
            fields: None,
            path: None,
        })
    }

    #[test]
    fn what_is_not_subdivided_is_the_node_role() {
        assert_eq!(decide("get", "nodes", None, Some("a")), Decision::Allow);
        assert_eq!(
            decide("get", "nodes", None, Some("b")),
            pass("node 'a' cannot read 'b', only its own Node object")
        );
        assert_eq!(
            decide("list", "nodes", None, None),
            pass("node 'a' cannot read all nodes, only its own Node object")
        );
        assert_eq!(
            decide("patch", "nodes", Some("status"), Some("b")),
            Decision::Allow
        );
        assert_eq!(
            decide("get", "secrets", None, Some("x")),
            pass("no relationship found between node 'a' and this object")
        );
        assert_eq!(
            decide("delete", "secrets", None, Some("x")),
            pass("can only read resources of this type")
        );
        assert_eq!(
            decide("list", "pods", None, None),
            pass("can only list/watch pods with spec.nodeName field selector")
        );
        assert_eq!(
            decide("get", "coordination.k8s.io.leases", None, Some("b")),
            pass("can only access node lease with the same name as the requesting node")
        );
        assert_eq!(
            decide("update", "coordination.k8s.io.leases", None, Some("a")),
            Decision::Allow
        );
        assert_eq!(decide("create", "events", None, None), Decision::Allow);
        assert_eq!(decide("list", "services", None, None), Decision::Allow);
        assert_eq!(decide("delete", "services", None, Some("s")), pass(""));
    }
}
