//! Discovery: /version, /api, /apis and per-group-version resource lists, in
//! the legacy form and as aggregated discovery (apidiscovery.k8s.io/v2).

use serde_json::{Value, json};

use crate::registry::{Registry, ResourceType};

/// The Kubernetes minor version served: the one k8s-openapi's `latest` feature
/// (selected in the workspace manifest) describes.
pub const KUBERNETES_MINOR: &str = "37";

pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// What a review resource allows: only create.
const REVIEW_VERBS: &[&str] = &["create"];

/// What resource metrics allow, as metrics-server serves them.
const METRICS_VERBS: &[&str] = &["get", "list"];

fn verbs(rt: &ResourceType) -> &'static [&'static str] {
    if rt.review {
        REVIEW_VERBS
    } else if rt.metrics {
        METRICS_VERBS
    } else {
        VERBS
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+kubox"),
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rustc",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else if cfg!(target_arch = "aarch64") { "arm64" } else { std::env::consts::ARCH }),
    })
}

fn subresources(
    rt: &ResourceType,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
)> {
    let mut subs = Vec::new();
    if rt.status_subresource {
        subs.push(("status", rt.kind, rt.group, &["get", "patch", "update"][..]));
    }
    if rt.scale_subresource {
        subs.push((
            "scale",
            "Scale",
            "autoscaling",
            &["get", "patch", "update"][..],
        ));
    }
    if rt.plural == "namespaces" {
        subs.push(("finalize", rt.kind, rt.group, &["update"][..]));
    }
    // kubectl drain evicts through this when discovery lists it.
    if rt.plural == "pods" && rt.group.is_empty() {
        subs.push(("eviction", "Eviction", "policy", &["create"][..]));
    }
    // kubectl create token posts here.
    if rt.plural == "serviceaccounts" {
        subs.push((
            "token",
            "TokenRequest",
            "authentication.k8s.io",
            &["create"][..],
        ));
    }
    if rt.plural == "nodes" && rt.group.is_empty() {
        subs.push(("proxy", "NodeProxyOptions", "", &["get"][..]));
    }
    subs
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in types {
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs(t),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for (sub, kind, sub_group, verbs) in subresources(t) {
            let mut r = json!({"name": format!("{}/{sub}", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": kind, "verbs": verbs});
            if sub_group != t.group {
                r["group"] = json!(sub_group);
                r["version"] = json!("v1");
            }
            resources.push(r);
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

pub fn api_groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    registry
        .groups()
        .into_iter()
        .find(|(g, _)| *g == group && !g.is_empty())
        .map(|(g, vs)| {
            let mut v = group_json(g, &vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        })
}

/// Aggregated discovery for the core group (`legacy`) or all named groups.
pub fn aggregated(registry: &Registry, legacy: bool) -> Value {
    let items: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = registry
                        .group_version(group, version)
                        .into_iter()
                        .map(|t| {
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": verbs(t),
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if !t.categories.is_empty() {
                                r["categories"] = json!(t.categories);
                            }
                            let subs: Vec<Value> = subresources(t)
                                .into_iter()
                                .map(|(sub, kind, g, verbs)| {
                                    let v = if g == t.group { t.version } else { "v1" };
                                    json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": verbs})
                                })
                                .collect();
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
                            }
                            r
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
