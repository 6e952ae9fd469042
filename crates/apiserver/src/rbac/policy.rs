//! The bootstrap policy, as upstream's: the default ClusterRoles (user-facing
//! cluster-admin, admin, edit, view; discovery and self-review for
//! everyone; the components' and controllers' roles), their bindings, and
//! the leader-locking Roles in kube-system, all labelled
//! `kubernetes.io/bootstrapping: rbac-defaults` and annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "true"`. At every start
//! missing ones are created and, unless autoupdate is "false", missing rules
//! and subjects are added back (upstream's reconciliation).
//!
//! kubox's controllers share one client (`system:kube-controller-manager`)
//! rather than one ServiceAccount each, so each `system:controller:*`
//! binding names that user beside the ServiceAccount upstream binds; the
//! service proxy and pod network run with their node's identity, so nodes
//! get `kubox:node-network`: the EndpointSlices the proxy follows and the
//! Nodes whose pod ranges the network routes to (flannel's role), which the
//! Node authorizer does not give them. As upstream, `system:node` is bound
//! to no one (the Node authorizer applies its rules to nodes, subdividing
//! what a node may read by the pods bound to it) and `system:node-proxier`
//! only to `system:kube-proxy`; the `system:nodes` subjects earlier kubox
//! versions gave them are withdrawn.

use serde_json::{Value, json};

use crate::api::{Api, ObjectRef, WriteOptions};
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

use super::rules::uncovered;

const LABEL: &str = "kubernetes.io/bootstrapping";
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources, "resourceNames": names})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn events() -> Value {
    rule(
        &["create", "update", "patch"],
        &["", "events.k8s.io"],
        &["events"],
    )
}

fn metadata(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all = json!({LABEL: "rbac-defaults"});
    for (k, v) in labels {
        all[*k] = json!(v);
    }
    json!({"name": name, "labels": all, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({"metadata": metadata(name, &[]), "rules": rules})
}

/// A role made of the roles labelled `aggregate-to-<to>`, itself labelled
/// into `into` (edit into admin, view into edit).
fn aggregated(name: &str, to: &str, into: Option<&str>) -> Value {
    let label = format!("{AGGREGATE}{into}", into = into.unwrap_or_default());
    let labels: Vec<(&str, &str)> = into.map(|_| (label.as_str(), "true")).into_iter().collect();
    json!({
        "metadata": metadata(name, &labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE}{to}"): "true"}}]},
        "rules": [],
    })
}

fn aggregate_to(to: &str, rules: Vec<Value>) -> Value {
    let label = format!("{AGGREGATE}{to}");
    json!({"metadata": metadata(&format!("system:aggregate-to-{to}"), &[(&label, "true")]), "rules": rules})
}

fn subject(kind: &str, name: &str) -> Value {
    match kind.split_once(':') {
        Some(("ServiceAccount", ns)) => {
            json!({"kind": "ServiceAccount", "name": name, "namespace": ns})
        }
        _ => json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name}),
    }
}

fn binding(name: &str, role_kind: &str, subjects: Vec<Value>) -> Value {
    binding_to(name, role_kind, name, subjects)
}

fn binding_to(name: &str, role_kind: &str, role: &str, subjects: Vec<Value>) -> Value {
    let mut binding = json!({
        "metadata": metadata(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
    });
    // As upstream's `system:node`, a binding to no one has no subjects field.
    if !subjects.is_empty() {
        binding["subjects"] = json!(subjects);
    }
    binding
}

const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
const SCHEDULER: &str = "system:kube-scheduler";
/// What the scheduler's VolumeBinding reads and writes, bound to it as upstream's.
const VOLUME_SCHEDULER: &str = "system:volume-scheduler";
/// Cluster DNS runs as kube-system's `coredns` ServiceAccount, under kubeadm's role name.
const DNS_ACCOUNT: &str = "coredns";
const DNS_ROLE: &str = "system:coredns";
const INGRESS: &str = "system:kubox-ingress";
const NODE_NETWORK: &str = "kubox:node-network";
const PUBLISHER: &str = "system:kubox:service-publisher";
const METRICS_SERVER: &str = "system:metrics-server";
const NODE_BOOTSTRAPPER: &str = "system:node-bootstrapper";
const NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";

fn view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
    ]
}

fn edit_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses"],
        ),
        rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn admin_rules() -> Vec<Value> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            READ_WRITE,
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
        ),
    ]
}

/// The `system:node` role's rules, which the Node authorizer applies.
pub fn node_policy_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    node_rules()
        .into_iter()
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect()
}

fn node_rules() -> Vec<Value> {
    vec![
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(READ, &[""], &["services"]),
        rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        rule(&["update", "patch"], &[""], &["nodes/status"]),
        rule(&["update", "patch"], &[""], &["nodes"]),
        rule(&["create", "update", "patch"], &[""], &["events"]),
        rule(READ, &[""], &["pods"]),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(&["get"], &[""], &["secrets", "configmaps"]),
        rule(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["get"], &[""], &["endpoints"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            &["update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
        rule(
            READ,
            &["storage.k8s.io"],
            &["csidrivers", "csinodes", "volumeattachments"],
        ),
    ]
}

fn volume_scheduler_rules() -> Vec<Value> {
    let read_update = &["get", "list", "watch", "update", "patch"];
    vec![
        rule(read_update, &[""], &["persistentvolumes"]),
        rule(READ, &["storage.k8s.io"], &["storageclasses"]),
        rule(read_update, &[""], &["persistentvolumeclaims"]),
    ]
}

fn scheduler_rules() -> Vec<Value> {
    vec![
        events(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        rule(&["create"], &[""], &["endpoints"]),
        named(
            &["get", "update"],
            &[""],
            &["endpoints"],
            &["kube-scheduler"],
        ),
        rule(READ, &[""], &["nodes"]),
        rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        rule(&["create"], &[""], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &[""], &["replicationcontrollers", "services"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(
            READ,
            &["storage.k8s.io"],
            &["csinodes", "csidrivers", "csistoragecapacities"],
        ),
        rule(READ, &[""], &["namespaces"]),
    ]
}

fn controller_manager_rules() -> Vec<Value> {
    vec![
        events(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[""], &["secrets"]),
        rule(
            &["get"],
            &[""],
            &["namespaces", "secrets", "serviceaccounts"],
        ),
        rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(&["list", "watch"], &["*"], &["*"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

/// The roles of the controllers kubox runs, under upstream's names.
fn controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "clusterrole-aggregation-controller",
            vec![rule(
                &["escalate", "get", "list", "patch", "update", "watch"],
                &["rbac.authorization.k8s.io"],
                &["clusterroles"],
            )],
        ),
        (
            "deployment-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &["apps", "extensions"],
                    &["deployments"],
                ),
                rule(
                    &["update"],
                    &["apps", "extensions"],
                    &["deployments/status"],
                ),
                rule(
                    &["update"],
                    &["apps", "extensions"],
                    &["deployments/finalizers"],
                ),
                rule(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                rule(&["get", "list", "watch", "update"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "cronjob-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &["batch"],
                    &["cronjobs"],
                ),
                rule(
                    &[
                        "get", "list", "watch", "create", "update", "delete", "patch",
                    ],
                    &["batch"],
                    &["jobs"],
                ),
                rule(&["update"], &["batch"], &["cronjobs/status"]),
                rule(&["update"], &["batch"], &["cronjobs/finalizers"]),
                rule(&["list", "delete"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(
                    &["get", "list", "watch"],
                    &["apps", "extensions"],
                    &["daemonsets"],
                ),
                rule(&["update"], &["apps", "extensions"], &["daemonsets/status"]),
                rule(
                    &["update"],
                    &["apps", "extensions"],
                    &["daemonsets/finalizers"],
                ),
                rule(&["list", "watch"], &[""], &["nodes"]),
                rule(
                    &["list", "watch", "create", "delete", "patch"],
                    &[""],
                    &["pods"],
                ),
                rule(&["create"], &[""], &["pods/binding"]),
                rule(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rule(
                    &["get", "list", "watch"],
                    &["apps", "extensions"],
                    &["deployments", "replicasets", "statefulsets"],
                ),
                rule(
                    &["get", "list", "watch"],
                    &[""],
                    &["replicationcontrollers", "pods"],
                ),
                rule(
                    &["get", "list", "watch"],
                    &["policy"],
                    &["poddisruptionbudgets"],
                ),
                rule(
                    &["patch", "update"],
                    &["policy"],
                    &["poddisruptionbudgets/status"],
                ),
                events(),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(&["get", "list", "watch"], &[""], &["services", "pods"]),
                rule(
                    &["get", "list", "create", "update", "delete"],
                    &[""],
                    &["endpoints"],
                ),
                rule(&["create"], &[""], &["endpoints/restricted"]),
                events(),
            ],
        ),
        (
            "endpointslice-controller",
            vec![
                rule(
                    &["get", "list", "watch"],
                    &[""],
                    &["services", "pods", "nodes"],
                ),
                rule(&["update"], &[""], &["services/finalizers"]),
                rule(
                    &["create", "delete", "get", "list", "update"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![
                rule(
                    &["get", "list", "watch", "patch", "update", "delete"],
                    &["*"],
                    &["*"],
                ),
                events(),
            ],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                rule(
                    &["get", "list", "watch"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers"],
                ),
                rule(
                    &["update"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                ),
                rule(&["get", "update"], &["*"], &["*/scale"]),
                rule(&["list"], &[""], &["pods"]),
                rule(&["list"], &["metrics.k8s.io"], &["pods"]),
                rule(&["get", "list"], &["custom.metrics.k8s.io"], &["*"]),
                rule(&["get", "list"], &["external.metrics.k8s.io"], &["*"]),
                events(),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &["batch"],
                    &["jobs"],
                ),
                rule(&["update", "patch"], &["batch"], &["jobs/status"]),
                rule(&["update"], &["batch"], &["jobs/finalizers"]),
                rule(
                    &["list", "watch", "create", "delete", "patch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "local-path-provisioner",
            vec![
                rule(
                    &["get", "list", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                rule(
                    &["get", "list", "watch", "create", "delete"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(
                    &["get", "list", "watch", "create"],
                    &["storage.k8s.io"],
                    &["storageclasses"],
                ),
                events(),
            ],
        ),
        (
            "namespace-controller",
            vec![
                rule(&["get", "list", "watch", "delete"], &[""], &["namespaces"]),
                rule(
                    &["update"],
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                ),
                rule(
                    &["get", "list", "delete", "deletecollection"],
                    &["*"],
                    &["*"],
                ),
            ],
        ),
        (
            "node-controller",
            vec![
                rule(
                    &["get", "list", "update", "delete", "patch"],
                    &[""],
                    &["nodes"],
                ),
                rule(&["patch", "update"], &[""], &["nodes/status"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(&["list", "delete"], &[""], &["pods"]),
                rule(&["get"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            // Upstream's role but for what kubox has no use for: the
            // recycler's pods and the in-tree plugins' endpoints, services,
            // secrets and nodes.
            "persistent-volume-binder",
            vec![
                rule(
                    &["get", "list", "watch", "update", "delete"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(&["update"], &[""], &["persistentvolumes/status"]),
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                rule(&["update"], &[""], &["persistentvolumeclaims/status"]),
                rule(
                    &["get", "list", "watch"],
                    &["storage.k8s.io"],
                    &["storageclasses"],
                ),
                events(),
            ],
        ),
        (
            "pvc-protection-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                rule(&["get", "list", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "pv-protection-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["persistentvolumes"],
                ),
                events(),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                rule(&["list", "watch", "delete"], &[""], &["pods"]),
                rule(&["get", "list", "watch"], &[""], &["nodes"]),
                rule(&["patch"], &[""], &["pods/status"]),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                rule(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/status"],
                ),
                rule(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/finalizers"],
                ),
                rule(
                    &["list", "watch", "patch", "create", "delete"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "replication-controller",
            vec![
                rule(
                    &["get", "list", "watch", "update"],
                    &[""],
                    &["replicationcontrollers"],
                ),
                rule(&["update"], &[""], &["replicationcontrollers/status"]),
                rule(&["update"], &[""], &["replicationcontrollers/finalizers"]),
                rule(
                    &["list", "watch", "patch", "create", "delete"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "resourcequota-controller",
            vec![
                rule(&["list", "watch"], &["*"], &["*"]),
                rule(&["update"], &[""], &["resourcequotas/status"]),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![
                rule(&["create", "update"], &[""], &["configmaps"]),
                events(),
            ],
        ),
        (
            "service-account-controller",
            vec![rule(&["create"], &[""], &["serviceaccounts"]), events()],
        ),
        (
            "service-controller",
            vec![
                rule(&["get", "list", "watch"], &[""], &["services"]),
                rule(&["patch", "update"], &[""], &["services/status"]),
                rule(&["list", "watch"], &[""], &["nodes"]),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(&["list", "watch"], &[""], &["pods"]),
                rule(&["get", "list", "watch"], &["apps"], &["statefulsets"]),
                rule(&["update"], &["apps"], &["statefulsets/status"]),
                rule(&["update"], &["apps"], &["statefulsets/finalizers"]),
                rule(
                    &["get", "create", "delete", "update", "patch"],
                    &[""],
                    &["pods"],
                ),
                rule(
                    &[
                        "get", "create", "delete", "update", "patch", "list", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                rule(&["get", "create"], &[""], &["persistentvolumeclaims"]),
                rule(&["update", "delete"], &[""], &["persistentvolumeclaims"]),
                events(),
            ],
        ),
        (
            "ttl-after-finished-controller",
            vec![
                rule(&["delete", "get", "list", "watch"], &["batch"], &["jobs"]),
                events(),
            ],
        ),
        (
            "certificate-controller",
            vec![
                rule(
                    &["delete", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                rule(
                    &["update"],
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests/approval",
                        "certificatesigningrequests/status",
                    ],
                ),
                named(
                    &["approve", "sign"],
                    &["certificates.k8s.io"],
                    &["signers"],
                    &[
                        "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet",
                    ],
                ),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                events(),
            ],
        ),
    ]
}

pub fn cluster_roles() -> Vec<Value> {
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        // ServiceAccounts (and, if bound to anonymous, anyone) may fetch
        // the keys that verify their tokens.
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            vec![urls(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        aggregated("admin", "admin", None),
        aggregated("edit", "edit", Some("admin")),
        aggregated("view", "view", Some("edit")),
        aggregate_to("admin", admin_rules()),
        aggregate_to("edit", edit_rules()),
        aggregate_to("view", view_rules()),
        cluster_role("system:node", node_rules()),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(&["list", "watch"], &[""], &["services", "endpoints"]),
                rule(&["get", "list", "watch"], &[""], &["nodes"]),
                events(),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role(SCHEDULER, scheduler_rules()),
        cluster_role(VOLUME_SCHEDULER, volume_scheduler_rules()),
        cluster_role(CONTROLLER_MANAGER, controller_manager_rules()),
        cluster_role(
            "system:kube-dns",
            vec![rule(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:certificates.k8s.io:kube-apiserver-client-approver",
            vec![named(
                &["approve"],
                &["certificates.k8s.io"],
                &["signers"],
                &["kubernetes.io/kube-apiserver-client"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
            vec![named(
                &["approve"],
                &["certificates.k8s.io"],
                &["signers"],
                &["kubernetes.io/kube-apiserver-client-kubelet"],
            )],
        ),
        // What a joining node's bootstrap token may do: ask for its client
        // certificate, and have it approved (nodeclient); a node renewing
        // its own certificate has it approved by selfnodeclient.
        cluster_role(
            NODE_BOOTSTRAPPER,
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            NODE_CLIENT,
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            SELF_NODE_CLIENT,
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
    ];
    // kubox's own components that upstream leaves to addons: cluster DNS
    // (CoreDNS's role, as kubeadm makes it) and the ingress controller.
    roles.push(cluster_role(
        DNS_ROLE,
        vec![
            rule(
                &["list", "watch"],
                &[""],
                &["endpoints", "services", "pods", "namespaces"],
            ),
            rule(
                &["list", "watch"],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
        ],
    ));
    roles.push(cluster_role(
        NODE_NETWORK,
        vec![
            rule(&["list", "watch"], &[""], &["nodes"]),
            rule(
                &["list", "watch"],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
        ],
    ));
    roles.push(cluster_role(
        INGRESS,
        vec![
            rule(
                &["get", "list", "watch"],
                &[""],
                &["services", "endpoints", "secrets"],
            ),
            rule(
                &["list", "watch"],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
            rule(
                &["get", "list", "watch"],
                &["networking.k8s.io"],
                &["ingresses"],
            ),
            rule(
                &["get", "list", "watch", "create"],
                &["networking.k8s.io"],
                &["ingressclasses"],
            ),
            rule(
                &["update", "patch"],
                &["networking.k8s.io"],
                &["ingresses/status"],
            ),
            events(),
        ],
    ));
    // metrics-server's roles as its manifests make them. kubox's scrapes
    // nodes through the API server's node proxy rather than the agents'
    // port, so it also needs nodes/proxy.
    roles.push(cluster_role(
        METRICS_SERVER,
        vec![
            rule(&["get"], &[""], &["nodes/metrics", "nodes/proxy"]),
            rule(&["get", "list", "watch"], &[""], &["pods", "nodes"]),
        ],
    ));
    roles.push(json!({
        "metadata": metadata("system:aggregated-metrics-reader", &[
            (format!("{AGGREGATE}view").as_str(), "true"),
            (format!("{AGGREGATE}edit").as_str(), "true"),
            (format!("{AGGREGATE}admin").as_str(), "true"),
        ]),
        "rules": [rule(&["get", "list", "watch"], &["metrics.k8s.io"], &["pods", "nodes"])],
    }));
    roles.extend(
        controller_roles()
            .into_iter()
            .map(|(name, rules)| cluster_role(&format!("system:controller:{name}"), rules)),
    );
    roles
}

pub fn cluster_role_bindings() -> Vec<Value> {
    let group = |n| subject("Group", n);
    let user = |n| subject("User", n);
    let mut bindings = vec![
        binding(
            "cluster-admin",
            "ClusterRole",
            vec![group("system:masters")],
        ),
        binding(
            "system:discovery",
            "ClusterRole",
            vec![group("system:authenticated")],
        ),
        binding(
            "system:basic-user",
            "ClusterRole",
            vec![group("system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "ClusterRole",
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "ClusterRole",
            vec![group("system:serviceaccounts")],
        ),
        binding(
            "system:monitoring",
            "ClusterRole",
            vec![group("system:monitoring")],
        ),
        binding("system:node", "ClusterRole", Vec::new()),
        binding(
            "system:node-proxier",
            "ClusterRole",
            vec![user("system:kube-proxy")],
        ),
        binding(SCHEDULER, "ClusterRole", vec![user(SCHEDULER)]),
        binding(VOLUME_SCHEDULER, "ClusterRole", vec![user(SCHEDULER)]),
        binding(
            CONTROLLER_MANAGER,
            "ClusterRole",
            vec![user(CONTROLLER_MANAGER)],
        ),
        binding(
            "system:kube-dns",
            "ClusterRole",
            vec![subject("ServiceAccount:kube-system", "kube-dns")],
        ),
    ];
    bindings.push(binding(
        DNS_ROLE,
        "ClusterRole",
        vec![subject("ServiceAccount:kube-system", DNS_ACCOUNT)],
    ));
    // kubeadm's bindings for joining nodes, under kubox's prefix: bootstrap
    // tokens may ask for node certificates and have them approved, nodes
    // may renew their own.
    bindings.push(binding_to(
        "kubox:kubelet-bootstrap",
        "ClusterRole",
        NODE_BOOTSTRAPPER,
        vec![group(crate::bootstrap_token::GROUP)],
    ));
    bindings.push(binding_to(
        "kubox:node-autoapprove-bootstrap",
        "ClusterRole",
        NODE_CLIENT,
        vec![group(crate::bootstrap_token::GROUP)],
    ));
    bindings.push(binding_to(
        "kubox:node-autoapprove-certificate-rotation",
        "ClusterRole",
        SELF_NODE_CLIENT,
        vec![group("system:nodes")],
    ));
    bindings.push(binding(
        NODE_NETWORK,
        "ClusterRole",
        vec![group(crate::nodeauthz::NODES_GROUP)],
    ));
    bindings.push(binding(INGRESS, "ClusterRole", vec![user(INGRESS)]));
    bindings.push(binding(
        METRICS_SERVER,
        "ClusterRole",
        vec![
            subject("ServiceAccount:kube-system", "metrics-server"),
            user(METRICS_SERVER),
        ],
    ));
    bindings.extend(controller_roles().into_iter().map(|(name, _)| {
        binding(
            &format!("system:controller:{name}"),
            "ClusterRole",
            vec![
                subject("ServiceAccount:kube-system", name),
                user(CONTROLLER_MANAGER),
            ],
        )
    }));
    bindings
}

/// The Roles and RoleBindings of kube-system.
fn namespaced() -> (Vec<Value>, Vec<Value>) {
    let leader = |component: &str| {
        json!({
            "metadata": metadata(&format!("system::leader-locking-{component}"), &[]),
            "rules": [
                rule(&["watch"], &[""], &["configmaps"]),
                named(&["get", "update"], &[""], &["configmaps"], &[component]),
            ],
        })
    };
    let roles = vec![
        leader("kube-controller-manager"),
        leader("kube-scheduler"),
        json!({
            "metadata": metadata("extension-apiserver-authentication-reader", &[]),
            "rules": [named(&["get", "list", "watch"], &[""], &["configmaps"], &["extension-apiserver-authentication"])],
        }),
    ];
    // The Services (and their endpoints) DNS and the ingress controller
    // publish for themselves, and nothing else, in kube-system; the Leases
    // the ingress controller elects its status writer by and reads the live
    // servers from.
    let mut roles = roles;
    roles.push(json!({
        "metadata": metadata(PUBLISHER, &[]),
        "rules": [
            rule(&["get", "create", "update", "patch"], &[""], &["services", "endpoints"]),
            rule(&["get", "create", "update", "patch"], &["discovery.k8s.io"], &["endpointslices"]),
            rule(&["get", "list", "watch", "create", "update"], &["coordination.k8s.io"], &["leases"]),
        ],
    }));
    let bindings = vec![
        binding(
            "system::leader-locking-kube-controller-manager",
            "Role",
            vec![
                subject("User", CONTROLLER_MANAGER),
                subject("ServiceAccount:kube-system", "kube-controller-manager"),
            ],
        ),
        binding(
            "system::leader-locking-kube-scheduler",
            "Role",
            vec![
                subject("User", SCHEDULER),
                subject("ServiceAccount:kube-system", "kube-scheduler"),
            ],
        ),
        binding(
            PUBLISHER,
            "Role",
            vec![
                subject("ServiceAccount:kube-system", DNS_ACCOUNT),
                subject("User", INGRESS),
            ],
        ),
        binding_to(
            "system::extension-apiserver-authentication-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            vec![
                subject("User", CONTROLLER_MANAGER),
                subject("User", SCHEDULER),
            ],
        ),
    ];
    (roles, bindings)
}

fn find(api: &Api, plural: &str) -> ApiResult<std::sync::Arc<ResourceType>> {
    api.registry
        .get("rbac.authorization.k8s.io", "v1", plural)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("{plural} is not registered")))
}

/// The revision of the newest write or object this start saw, per plural.
pub type Revisions = Vec<(&'static str, i64)>;

fn revision_of(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Subjects earlier kubox versions bound that the policy no longer grants:
/// (binding, subject kind, subject name).
const WITHDRAWN: &[(&str, &str, &str)] = &[
    ("system:node", "Group", "system:nodes"),
    ("system:node-proxier", "Group", "system:nodes"),
];

/// What `wanted` adds to `current`: rules for roles, subjects for bindings
/// (less the withdrawn ones).
fn reconciled(current: &Value, wanted: &Value) -> Option<Value> {
    if current["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return None;
    }
    let mut out = current.clone();
    if wanted.get("roleRef").is_some() {
        let name = &current["metadata"]["name"];
        let mut have = current["subjects"].as_array().cloned().unwrap_or_default();
        let before = have.len();
        have.retain(|s| {
            !WITHDRAWN
                .iter()
                .any(|(b, kind, who)| name == b && s["kind"] == *kind && s["name"] == *who)
        });
        let withdrawn = have.len() != before;
        let missing: Vec<Value> = wanted["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                !have.iter().any(|h| {
                    h["kind"] == s["kind"]
                        && h["name"] == s["name"]
                        && h["namespace"] == s["namespace"]
                })
            })
            .cloned()
            .collect();
        if missing.is_empty() && !withdrawn {
            return None;
        }
        out["subjects"] = json!([have, missing].concat());
        return Some(out);
    }
    if wanted["aggregationRule"].is_object() {
        // The aggregation controller owns the rules; the selectors are ours.
        if current["aggregationRule"] == wanted["aggregationRule"] {
            return None;
        }
        out["aggregationRule"] = wanted["aggregationRule"].clone();
        return Some(out);
    }
    let have: Vec<_> = serde_json::from_value(current["rules"].clone()).unwrap_or_default();
    let want: Vec<_> = serde_json::from_value(wanted["rules"].clone()).unwrap_or_default();
    if uncovered(&have, &want).is_empty() {
        return None;
    }
    let mut rules = current["rules"].as_array().cloned().unwrap_or_default();
    for r in wanted["rules"].as_array().into_iter().flatten() {
        if !rules.contains(r) {
            rules.push(r.clone());
        }
    }
    out["rules"] = json!(rules);
    Some(out)
}

async fn ensure(api: &Api, rt: &ResourceType, ns: Option<&str>, obj: Value) -> ApiResult<i64> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::to_vec(&obj).unwrap_or_default();
    let opts = WriteOptions::default();
    match api.create(rt, ns, &body, &opts).await {
        Ok(w) => return Ok(revision_of(&w.object)),
        Err(e) if e.reason == "AlreadyExists" => {}
        Err(e) => return Err(e),
    }
    let current = api.get(rt, ns, &name).await?;
    let Some(updated) = reconciled(&current, &obj) else {
        return Ok(revision_of(&current));
    };
    let target = ObjectRef {
        rt,
        ns,
        name: &name,
        subresource: None,
    };
    let body = serde_json::to_vec(&updated).unwrap_or_default();
    let w = api.update(target, &body, &opts).await?;
    Ok(revision_of(&w.object))
}

/// kube-public's: anyone may read `cluster-info`, as kubeadm allows, for
/// joining nodes to find the CA their token's hash vouches for.
fn public() -> (Vec<Value>, Vec<Value>) {
    let name = "kubeadm:bootstrap-signer-clusterinfo";
    let role = json!({
        "metadata": metadata(name, &[]),
        "rules": [named(&["get"], &[""], &["configmaps"], &["cluster-info"])],
    });
    let binding = binding(name, "Role", vec![subject("User", crate::http::ANONYMOUS)]);
    (vec![role], vec![binding])
}

/// Creates or reconciles the whole policy.
pub async fn run(api: &Api) -> ApiResult<Revisions> {
    let (roles, role_bindings) = namespaced();
    let (public_roles, public_bindings) = public();
    let sets = [
        ("clusterroles", None, cluster_roles()),
        ("clusterrolebindings", None, cluster_role_bindings()),
        ("roles", Some("kube-system"), roles),
        ("rolebindings", Some("kube-system"), role_bindings),
        ("roles", Some("kube-public"), public_roles),
        ("rolebindings", Some("kube-public"), public_bindings),
    ];
    let mut revisions = Vec::new();
    for (plural, ns, objects) in sets {
        let rt = find(api, plural)?;
        let mut newest = 0;
        for obj in objects {
            newest = newest.max(ensure(api, &rt, ns, obj).await?);
        }
        revisions.push((plural, newest));
    }
    Ok(revisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciling_withdraws_the_nodes_group_from_the_node_roles() {
        let wanted = binding("system:node", "ClusterRole", Vec::new());
        let mut old = wanted.clone();
        old["subjects"] = json!([subject("Group", "system:nodes")]);
        let updated = reconciled(&old, &wanted).expect("the subject is withdrawn");
        assert_eq!(updated["subjects"], json!([]));
        assert!(reconciled(&wanted, &wanted).is_none());
        let wanted = binding(
            "system:node-proxier",
            "ClusterRole",
            vec![subject("User", "system:kube-proxy")],
        );
        let mut old = wanted.clone();
        old["subjects"] = json!([
            subject("User", "system:kube-proxy"),
            subject("Group", "system:nodes")
        ]);
        let updated = reconciled(&old, &wanted).expect("the subject is withdrawn");
        assert_eq!(updated["subjects"], wanted["subjects"]);
        // Only from those bindings.
        let mut other = binding(NODE_NETWORK, "ClusterRole", Vec::new());
        other["subjects"] = json!([subject("Group", "system:nodes")]);
        assert!(reconciled(&other, &other).is_none());
    }
}
