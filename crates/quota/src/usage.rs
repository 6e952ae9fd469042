//! What one object uses of a ResourceQuota, as upstream's evaluators
//! (pkg/quota/v1/evaluator/core and the generic object counter) compute
//! it, and which objects a quota's scopes select.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::Quantity;

/// Resource name → quantity, sorted as upstream prints them.
pub type ResourceList = BTreeMap<String, Quantity>;

/// `a=1,b=2`, as upstream's quota messages print a list.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A map of quantities in an object (`resources.requests`, `spec.hard`);
/// values that do not parse are left out (validation refuses them).
pub fn list_of(v: &Value) -> ResourceList {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), Quantity::parse(q.as_str()?)?)))
        .collect()
}

fn add_all(into: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        let sum = into.get(k).copied().unwrap_or_default().add(v);
        into.insert(k.clone(), sum);
    }
}

fn max_all(into: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        if into.get(k).is_none_or(|cur| v > cur) {
            into.insert(k.clone(), *v);
        }
    }
}

/// The count name of a resource: `count/pods`, `count/deployments.apps`.
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// Core resources whose count also has a bare name (`secrets`), as upstream's
/// legacy object-count quota names.
const LEGACY_COUNTS: &[&str] = &[
    "configmaps",
    "secrets",
    "replicationcontrollers",
    "resourcequotas",
];

/// What `obj`, an object of `group`/`plural`, uses.
pub fn usage(group: &str, plural: &str, obj: &Value) -> ResourceList {
    let one = Quantity::from_units(1);
    let mut used = ResourceList::from([(count_name(group, plural), one)]);
    if !group.is_empty() {
        return used;
    }
    match plural {
        "pods" => add_all(&mut used, &pod_usage(obj)),
        "services" => add_all(&mut used, &service_usage(obj)),
        "persistentvolumeclaims" => add_all(&mut used, &claim_usage(obj)),
        p if LEGACY_COUNTS.contains(&p) => {
            used.insert(p.to_owned(), one);
        }
        _ => {}
    }
    used
}

/// Whether a pod still counts for compute resources: not terminal, and
/// not past its deletion grace (upstream's QuotaV1Pod).
fn pod_counts(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return false;
    }
    // Upstream stops counting a pod some grace after its deletion time;
    // here it counts until it is gone, unless deleted without grace.
    pod["metadata"]["deletionTimestamp"].is_null()
        || pod["metadata"]["deletionGracePeriodSeconds"].as_i64() != Some(0)
}

fn containers(pod: &Value, field: &str) -> impl Iterator<Item = (ResourceList, ResourceList)> {
    pod["spec"][field]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            (
                list_of(&c["resources"]["requests"]),
                list_of(&c["resources"]["limits"]),
            )
        })
}

/// A pod's effective requests and limits: its containers' sum, at least
/// its largest init container's, plus its overhead if asked (quota counts
/// it, LimitRange's Pod limits do not).
pub fn pod_resources(pod: &Value, with_overhead: bool) -> (ResourceList, ResourceList) {
    let mut requests = ResourceList::new();
    let mut limits = ResourceList::new();
    for (r, l) in containers(pod, "containers") {
        add_all(&mut requests, &r);
        add_all(&mut limits, &l);
    }
    for (r, l) in containers(pod, "initContainers") {
        max_all(&mut requests, &r);
        max_all(&mut limits, &l);
    }
    if with_overhead {
        let overhead = list_of(&pod["spec"]["overhead"]);
        add_all(&mut requests, &overhead);
        add_all(&mut limits, &overhead);
    }
    (requests, limits)
}

/// Whether a resource name is an extended resource (`example.com/gpu`),
/// which quota tracks only as `requests.<name>`.
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.")
}

/// The quota names compute resources count under (upstream's
/// podComputeUsageHelper), `pods` among them.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut used = ResourceList::from([("pods".to_owned(), Quantity::from_units(1))]);
    for name in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(name) {
            used.insert(name.to_owned(), *q);
            used.insert(format!("requests.{name}"), *q);
        }
        if let Some(q) = limits.get(name) {
            used.insert(format!("limits.{name}"), *q);
        }
    }
    for (name, q) in requests {
        if name.starts_with("hugepages-") {
            used.insert(name.clone(), *q);
            used.insert(format!("requests.{name}"), *q);
        }
        if is_extended(name) {
            used.insert(format!("requests.{name}"), *q);
        }
    }
    used
}

fn pod_usage(pod: &Value) -> ResourceList {
    if !pod_counts(pod) {
        return ResourceList::new();
    }
    let (requests, limits) = pod_resources(pod, true);
    compute_usage(&requests, &limits)
}

fn service_usage(svc: &Value) -> ResourceList {
    let ports = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
    let ports = i64::try_from(ports).unwrap_or(i64::MAX);
    let (node_ports, balancers) = match svc["spec"]["type"].as_str() {
        Some("NodePort") => (ports, 0),
        Some("LoadBalancer") => {
            let explicit = svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["nodePort"].as_i64().is_some_and(|n| n != 0))
                .count();
            // Without allocated node ports only the explicit ones count.
            if svc["spec"]["allocateLoadBalancerNodePorts"] == false {
                (i64::try_from(explicit).unwrap_or(i64::MAX), 1)
            } else {
                (ports, 1)
            }
        }
        _ => (0, 0),
    };
    ResourceList::from([
        ("services".to_owned(), Quantity::from_units(1)),
        (
            "services.nodeports".to_owned(),
            Quantity::from_units(node_ports),
        ),
        (
            "services.loadbalancers".to_owned(),
            Quantity::from_units(balancers),
        ),
    ])
}

fn claim_usage(pvc: &Value) -> ResourceList {
    let one = Quantity::from_units(1);
    let mut used = ResourceList::from([("persistentvolumeclaims".to_owned(), one)]);
    let storage = Quantity::parse(
        pvc["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap_or_default(),
    );
    if let Some(q) = storage {
        used.insert("requests.storage".to_owned(), q);
    }
    if let Some(class) = pvc["spec"]["storageClassName"]
        .as_str()
        .filter(|c| !c.is_empty())
    {
        let prefix = format!("{class}.storageclass.storage.k8s.io/");
        used.insert(format!("{prefix}persistentvolumeclaims"), one);
        if let Some(q) = storage {
            used.insert(format!("{prefix}requests.storage"), q);
        }
    }
    used
}

/// The container compute resources a quota on cpu or memory requires every
/// container to state.
const CONSTRAINED: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// Upstream's pod constraint: a quota on cpu or memory needs every
/// container to state it. The message lists what is missing, by container
/// (`must specify limits.cpu for: app; requests.memory for: app,init`).
pub fn pod_constraints(required: &BTreeSet<String>, pod: &Value) -> Result<(), String> {
    let required: BTreeSet<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| CONSTRAINED.contains(r))
        .collect();
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for field in ["containers", "initContainers"] {
        for c in pod["spec"][field].as_array().into_iter().flatten() {
            let stated = compute_usage(
                &list_of(&c["resources"]["requests"]),
                &list_of(&c["resources"]["limits"]),
            );
            for r in &required {
                if !stated.contains_key(*r) {
                    let name = c["name"].as_str().unwrap_or_default().to_owned();
                    missing.entry(*r).or_default().insert(name);
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// Whether a pod is BestEffort: no container states a request or limit
/// of cpu or memory.
fn best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|field| {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| {
                ["requests", "limits"].iter().all(|kind| {
                    let list = &c["resources"][kind];
                    list["cpu"].is_null() && list["memory"].is_null()
                })
            })
    })
}

/// Whether a quota's scopes (`spec.scopes`, and `scopeSelector`
/// expressions with Exists) select an object. Scopes only select pods.
pub fn in_scope(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let mut scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if e["operator"] == "Exists"
            && let Some(s) = e["scopeName"].as_str()
        {
            scopes.push(s);
        }
    }
    if scopes.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    scopes.iter().all(|s| match *s {
        "Terminating" => obj["spec"]["activeDeadlineSeconds"].as_i64().is_some(),
        "NotTerminating" => obj["spec"]["activeDeadlineSeconds"].as_i64().is_none(),
        "BestEffort" => best_effort(obj),
        "NotBestEffort" => !best_effort(obj),
        _ => false,
    })
}

/// Which resource's objects a quota name counts, as (group, plural):
/// compute names count pods.
pub fn counted_resource(name: &str) -> (String, String) {
    if let Some(rest) = name.strip_prefix("count/") {
        return match rest.split_once('.') {
            Some((plural, group)) => (group.to_owned(), plural.to_owned()),
            None => (String::new(), rest.to_owned()),
        };
    }
    let core = |p: &str| (String::new(), p.to_owned());
    match name {
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        n if n.contains(".storageclass.storage.k8s.io/") => core("persistentvolumeclaims"),
        n if LEGACY_COUNTS.contains(&n) => core(n),
        _ => core("pods"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn a_pod_uses_its_containers_sum_and_its_largest_init_container() {
        let mut p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
        ]));
        p["spec"]["initContainers"] =
            json!([{"name": "i", "resources": {"requests": {"cpu": "2"}}}]);
        let used = usage("", "pods", &p);
        assert_eq!(
            pretty(&used),
            "count/pods=1,cpu=2,limits.cpu=500m,memory=128Mi,pods=1,requests.cpu=2,requests.memory=128Mi"
        );
        p["status"]["phase"] = json!("Succeeded");
        assert_eq!(pretty(&usage("", "pods", &p)), "count/pods=1");
    }

    #[test]
    fn services_count_node_ports_and_load_balancers() {
        let svc = |t: &str| json!({"spec": {"type": t, "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(
            pretty(&usage("", "services", &svc("LoadBalancer"))),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=2"
        );
        assert_eq!(
            pretty(&usage("", "services", &svc("ClusterIP"))),
            "count/services=1,services=1,services.loadbalancers=0,services.nodeports=0"
        );
        assert_eq!(
            pretty(&usage("apps", "deployments", &json!({}))),
            "count/deployments.apps=1"
        );
        assert_eq!(
            pretty(&usage("", "secrets", &json!({}))),
            "count/secrets=1,secrets=1"
        );
    }

    #[test]
    fn constraints_name_each_missing_resource_and_container() {
        let p = pod(json!([
            {"name": "app", "resources": {"requests": {"cpu": "1"}}},
            {"name": "side"},
        ]));
        let required: BTreeSet<String> = ["limits.cpu", "requests.cpu", "pods"]
            .map(String::from)
            .into();
        assert_eq!(
            pod_constraints(&required, &p),
            Err("must specify limits.cpu for: app,side; requests.cpu for: side".into())
        );
        let required: BTreeSet<String> = ["pods".to_owned()].into();
        assert_eq!(pod_constraints(&required, &p), Ok(()));
    }

    #[test]
    fn scopes_select_pods_by_deadline_and_qos() {
        let quota = |scopes: Value| json!({"spec": {"scopes": scopes}});
        let best = pod(json!([{"name": "a"}]));
        let mut burstable = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        burstable["spec"]["activeDeadlineSeconds"] = json!(30);
        assert!(in_scope(&quota(json!(["BestEffort"])), "", "pods", &best));
        assert!(!in_scope(
            &quota(json!(["BestEffort"])),
            "",
            "pods",
            &burstable
        ));
        assert!(in_scope(
            &quota(json!(["NotBestEffort", "Terminating"])),
            "",
            "pods",
            &burstable
        ));
        assert!(!in_scope(
            &quota(json!(["NotTerminating"])),
            "",
            "pods",
            &burstable
        ));
        assert!(!in_scope(
            &quota(json!(["NotTerminating"])),
            "",
            "services",
            &json!({})
        ));
        assert!(in_scope(&quota(json!([])), "", "services", &json!({})));
    }

    #[test]
    fn names_map_to_the_resource_they_count() {
        let core = |p: &str| (String::new(), p.to_owned());
        assert_eq!(counted_resource("requests.cpu"), core("pods"));
        assert_eq!(counted_resource("services.nodeports"), core("services"));
        assert_eq!(
            counted_resource("count/deployments.apps"),
            ("apps".to_owned(), "deployments".to_owned())
        );
        assert_eq!(counted_resource("secrets"), core("secrets"));
    }
}
