//! NodeRestriction, as upstream's admission plugin: what the Node
//! authorizer lets a node write, it may write only for itself. Its own
//! Node (not its taints, nor labels outside the kubelet's own), mirror
//! pods bound to it, the status of its pods, its own Lease, tokens for
//! pods bound to it, evictions of its pods. Messages are upstream's.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde_json::Value;

use super::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::http::Identity;
use crate::nodeauthz::graph::{Kind, pod_references};
use crate::nodeauthz::{NODE_LEASE_NAMESPACE, node_name};
use crate::status::{ApiError, ApiResult};

pub struct NodeRestriction;

/// The annotation that makes a pod a mirror pod.
const MIRROR: &str = "kubernetes.io/config.mirror";

fn refuse(group: &str, plural: &str, name: &str, why: &str) -> ApiError {
    ApiError::forbidden_on(group, plural, name, why)
}

/// The node `user` is, or None for other users; refuses a node whose name
/// is missing.
fn node_of<'a>(
    user: Option<&'a Identity>,
    group: &str,
    plural: &str,
    name: &str,
) -> ApiResult<Option<&'a str>> {
    let Some(user) = user else {
        return Ok(None);
    };
    match node_name(user) {
        Some("") => Err(refuse(
            group,
            plural,
            name,
            &format!("could not determine node from user {:?}", user.user),
        )),
        node => Ok(node),
    }
}

fn operation(op: Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A label's prefix, before the `/`.
fn label_namespace(label: &str) -> &str {
    label.split_once('/').map_or("", |(ns, _)| ns)
}

fn in_namespace(label_ns: &str, ns: &str) -> bool {
    label_ns == ns || label_ns.ends_with(&format!(".{ns}"))
}

/// The labels the kubelet sets on its own Node (upstream's kubeletapis).
fn kubelet_label(label: &str) -> bool {
    const LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    let ns = label_namespace(label);
    LABELS.contains(&label)
        || ["kubelet.kubernetes.io", "node.kubernetes.io"]
            .iter()
            .any(|allowed| in_namespace(ns, allowed))
}

/// Of the labels a node changes, those it may not: the
/// `node-restriction.kubernetes.io/` ones, and `kubernetes.io` or `k8s.io`
/// ones the kubelet does not set.
fn forbidden_labels(new: &Value, old: &Value) -> BTreeSet<String> {
    let labels = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let (new, old) = (labels(new), labels(old));
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(old.keys().filter(|k| !new.contains_key(*k)));
    changed
        .filter(|label| {
            let ns = label_namespace(label);
            let restricted = in_namespace(ns, "node-restriction.kubernetes.io");
            let kubernetes = in_namespace(ns, "kubernetes.io") || in_namespace(ns, "k8s.io");
            restricted || (kubernetes && !kubelet_label(label))
        })
        .cloned()
        .collect()
}

fn join(labels: &BTreeSet<String>) -> String {
    labels.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn node(node: &str, attrs: &Attributes<'_>, obj: &Value) -> ApiResult<()> {
    let fail = |why: String| Err(refuse("", "nodes", attrs.name, &why));
    if attrs.name != node {
        return fail(format!(
            "node {node:?} is not allowed to modify node {:?}",
            attrs.name
        ));
    }
    match (attrs.operation, attrs.old) {
        (Operation::Create, _) => {
            let labels = forbidden_labels(&obj["metadata"]["labels"], &Value::Null);
            if !labels.is_empty() {
                return fail(format!(
                    "node {node:?} is not allowed to set the following labels: {}",
                    join(&labels)
                ));
            }
        }
        (Operation::Update, Some(old)) => {
            let taints = |v: &Value| v["spec"]["taints"].as_array().cloned().unwrap_or_default();
            if taints(obj) != taints(old) {
                return fail(format!("node {node:?} is not allowed to modify taints"));
            }
            let labels = forbidden_labels(&obj["metadata"]["labels"], &old["metadata"]["labels"]);
            if !labels.is_empty() {
                return fail(format!(
                    "is not allowed to modify labels: {}",
                    join(&labels)
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// A node creates only mirror pods of its own, owned by its Node and using
/// nothing of the API's, and deletes only pods bound to it.
fn pod(node: &str, attrs: &Attributes<'_>, obj: &Value) -> ApiResult<()> {
    let fail = |why: String| Err(refuse("", "pods", attrs.name, &why));
    match attrs.operation {
        Operation::Create => {
            if !obj["metadata"]["annotations"][MIRROR].is_string() {
                return fail(format!(
                    "pod does not have {MIRROR:?} annotation, node {node:?} can only create mirror pods"
                ));
            }
            if text(&obj["spec"]["nodeName"]) != node {
                return fail(format!(
                    "node {node:?} can only create pods with spec.nodeName set to itself"
                ));
            }
            let owners = obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if owners.len() > 1 {
                return fail(format!(
                    "node {node:?} can only create pods with a single owner reference set to itself"
                ));
            }
            let owned = owners.first().is_some_and(|o| {
                o["apiVersion"] == "v1" && o["kind"] == "Node" && o["name"] == node
            });
            if !owned {
                return fail(format!(
                    "node {node:?} can only create pods with an owner reference set to itself"
                ));
            }
            let uses = pod_references(obj);
            for (kind, what) in [
                (Kind::ServiceAccount, "a service account"),
                (Kind::Secret, "secrets"),
                (Kind::ConfigMap, "configmaps"),
                (Kind::PersistentVolumeClaim, "persistentvolumeclaims"),
            ] {
                if uses.iter().any(|(k, _)| *k == kind) {
                    return fail(format!(
                        "node {node:?} can not create pods that reference {what}"
                    ));
                }
            }
            Ok(())
        }
        Operation::Delete if text(&obj["spec"]["nodeName"]) != node => fail(format!(
            "node {node:?} can only delete pods with spec.nodeName set to itself"
        )),
        Operation::Delete => Ok(()),
        op => fail(format!(
            "unexpected operation {:?}, node {node:?} can only create and delete mirror pods",
            operation(op)
        )),
    }
}

fn pod_status(node: &str, attrs: &Attributes<'_>, obj: &Value) -> ApiResult<()> {
    let fail = |why: String| Err(refuse("", "pods", attrs.name, &why));
    let (Operation::Update, Some(old)) = (attrs.operation, attrs.old) else {
        return fail(format!(
            "unexpected operation {:?}",
            operation(attrs.operation)
        ));
    };
    if text(&old["spec"]["nodeName"]) != node {
        return fail(format!(
            "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
        ));
    }
    let labels = |v: &Value| {
        v["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    if labels(obj) != labels(old) {
        return fail(format!(
            "node {node:?} cannot update labels through pod status"
        ));
    }
    Ok(())
}

fn lease(node: &str, attrs: &Attributes<'_>, obj: &Value) -> ApiResult<()> {
    let fail = |why: String| Err(refuse("coordination.k8s.io", "leases", attrs.name, &why));
    if attrs.namespace != Some(NODE_LEASE_NAMESPACE) {
        return fail(format!(
            "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
        ));
    }
    let name = match attrs.operation {
        Operation::Create => text(&obj["metadata"]["name"]),
        _ => attrs.name,
    };
    if name != node {
        return fail("can only access node lease with the same name as the requesting node".into());
    }
    Ok(())
}

#[async_trait]
impl AdmissionPlugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    async fn validate(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        _reads: &Reads<'_>,
    ) -> ApiResult<()> {
        let rt = attrs.resource;
        let handled = matches!(
            (rt.group, rt.plural),
            ("", "nodes" | "pods") | ("coordination.k8s.io", "leases")
        );
        if !handled {
            return Ok(());
        }
        let Some(node_name) = node_of(attrs.user, rt.group, rt.plural, attrs.name)? else {
            return Ok(());
        };
        match (rt.plural, attrs.subresource) {
            ("nodes", _) => node(node_name, attrs, obj),
            ("pods", None) => pod(node_name, attrs, obj),
            ("pods", Some("status")) => pod_status(node_name, attrs, obj),
            ("leases", _) => lease(node_name, attrs, obj),
            _ => Ok(()),
        }
    }
}

/// A node evicts only pods bound to it.
pub fn eviction(user: &Identity, pod: &Value) -> ApiResult<()> {
    let name = text(&pod["metadata"]["name"]);
    let Some(node) = node_of(Some(user), "", "pods", name)? else {
        return Ok(());
    };
    if text(&pod["spec"]["nodeName"]) != node {
        return Err(refuse(
            "",
            "pods",
            name,
            &format!("node {node} can only evict pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

/// A node asks tokens only bound to a pod of its own: `pod` is the one the
/// request's `boundObjectRef` names (None when it names none, or no pod).
pub fn token_request(
    user: &Identity,
    account: &str,
    request: &Value,
    pod: Option<&Value>,
) -> ApiResult<()> {
    let Some(node) = node_of(Some(user), "", "serviceaccounts", account)? else {
        return Ok(());
    };
    let fail = |why: String| Err(refuse("", "serviceaccounts", account, &why));
    let bound = &request["spec"]["boundObjectRef"];
    if bound["apiVersion"] != "v1" || bound["kind"] != "Pod" || text(&bound["name"]).is_empty() {
        return fail("node requested token not bound to a pod".into());
    }
    let uid = text(&bound["uid"]);
    if uid.is_empty() {
        return fail("node requested token with a pod binding without a uid".into());
    }
    let Some(pod) = pod else {
        return Err(ApiError::not_found("", "pods", text(&bound["name"])));
    };
    if text(&pod["metadata"]["uid"]) != uid {
        return fail(format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
        ));
    }
    if text(&pod["spec"]["nodeName"]) != node {
        return fail("node requested token bound to a pod scheduled on a different node".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_keeps_to_the_kubelet_labels() {
        let old =
            json!({"kubernetes.io/hostname": "a", "node-role.kubernetes.io/control-plane": ""});
        let new = json!({
            "kubernetes.io/hostname": "a",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/exclude-from-external-load-balancers": "",
            "example.com/rack": "r1",
            "node-restriction.kubernetes.io/secure": "true",
            "team.node-restriction.kubernetes.io/x": "y",
            "k8s.io/other": "z",
        });
        let forbidden: Vec<String> = forbidden_labels(&new, &old).into_iter().collect();
        assert_eq!(
            forbidden,
            [
                "k8s.io/other",
                "node-restriction.kubernetes.io/secure",
                "node-role.kubernetes.io/control-plane",
                "team.node-restriction.kubernetes.io/x",
            ]
        );
        assert!(forbidden_labels(&old, &old).is_empty());
    }
}
