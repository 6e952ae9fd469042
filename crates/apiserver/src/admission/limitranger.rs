//! LimitRanger, as upstream's plugin: the LimitRanges of a pod's namespace
//! give its containers the default requests and limits they lack
//! (recorded in the `kubernetes.io/limit-ranger` annotation), and pods and
//! PersistentVolumeClaims outside a range's min, max or
//! maxLimitRequestRatio are refused with upstream's messages.

use async_trait::async_trait;
use kubox_quota::usage::{list_of, pod_resources};
use kubox_quota::{Quantity, ResourceList};
use serde_json::{Value, json};

use super::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::status::{ApiError, ApiResult};

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

pub struct LimitRanger;

/// Whether the plugin looks at a write: pod creates (a pod's containers
/// cannot change afterwards) and PVC creates and updates.
fn applies(attrs: &Attributes<'_>) -> bool {
    let rt = attrs.resource;
    if attrs.subresource.is_some() || !rt.group.is_empty() {
        return false;
    }
    match rt.plural {
        "pods" => attrs.operation == Operation::Create,
        "persistentvolumeclaims" => attrs.operation != Operation::Delete,
        _ => false,
    }
}

/// The namespace's LimitRanges, in name order.
async fn ranges(reads: &Reads<'_>, ns: &str) -> ApiResult<Vec<Value>> {
    reads
        .list("limitranges", &format!("/registry/limitranges/{ns}/"))
        .await
}

fn limits(range: &Value) -> impl Iterator<Item = &Value> {
    range["spec"]["limits"].as_array().into_iter().flatten()
}

/// Sets the defaults of one range on containers missing them; returns
/// what it set, as the annotation words it (`cpu, memory request for
/// container app`).
fn default_containers(range: &Value, pod: &mut Value) -> Vec<String> {
    let mut requests = serde_json::Map::new();
    let mut limits_ = serde_json::Map::new();
    for l in limits(range).filter(|l| l["type"] == "Container") {
        requests.extend(l["defaultRequest"].as_object().cloned().unwrap_or_default());
        limits_.extend(l["default"].as_object().cloned().unwrap_or_default());
    }
    let mut set = Vec::new();
    for (field, what) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(containers) = pod["spec"][field].as_array_mut() else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let mut fill = |kind: &str, defaults: &serde_json::Map<String, Value>| {
                let mut filled: Vec<String> = Vec::new();
                for (k, v) in defaults {
                    if c["resources"][kind].get(k).is_none() {
                        c["resources"][kind][k] = v.clone();
                        filled.push(k.clone());
                    }
                }
                filled.sort();
                filled
            };
            let req = fill("requests", &requests);
            let lim = fill("limits", &limits_);
            if !req.is_empty() {
                set.push(format!("{} request for {what} {name}", req.join(", ")));
            }
            if !lim.is_empty() {
                set.push(format!("{} limit for {what} {name}", lim.join(", ")));
            }
        }
    }
    set
}

fn min_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let Some(req) = requests.get(resource) else {
        return Some(format!(
            "minimum {resource} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    if req.milli() < enforced.milli() {
        return Some(format!(
            "minimum {resource} usage per {kind} is {enforced}, but request is {req}"
        ));
    }
    match limits.get(resource) {
        Some(lim) if lim.milli() < enforced.milli() => Some(format!(
            "minimum {resource} usage per {kind} is {enforced}, but limit is {lim}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let Some(lim) = limits.get(resource) else {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}.  No limit is specified"
        ));
    };
    if lim.milli() > enforced.milli() {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}, but limit is {lim}"
        ));
    }
    match requests.get(resource) {
        Some(req) if req.milli() > enforced.milli() => Some(format!(
            "maximum {resource} usage per {kind} is {enforced}, but request is {req}"
        )),
        _ => None,
    }
}

/// A claim's max applies to what it requests (its limits mean nothing).
fn max_request_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &ResourceList,
) -> Option<String> {
    let Some(req) = requests.get(resource) else {
        return Some(format!(
            "maximum {resource} usage per {kind} is {enforced}.  No request is specified"
        ));
    };
    (req.milli() > enforced.milli())
        .then(|| format!("maximum {resource} usage per {kind} is {enforced}, but request is {req}"))
}

fn ratio_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let req = requests.get(resource).map_or(0, Quantity::milli);
    if req == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    let lim = limits.get(resource).map_or(0, Quantity::milli);
    if lim == 0 {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    let observed = lim as f64 / req as f64;
    (observed * 1000.0 > enforced.milli() as f64).then(|| {
        format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"
        )
    })
}

/// Every violation of one limit by one set of requests and limits.
fn check(kind: &str, limit: &Value, requests: &ResourceList, limits: &ResourceList) -> Vec<String> {
    let mut errs = Vec::new();
    for (r, q) in list_of(&limit["min"]) {
        errs.extend(min_constraint(kind, &r, &q, requests, limits));
    }
    for (r, q) in list_of(&limit["max"]) {
        errs.extend(max_constraint(kind, &r, &q, requests, limits));
    }
    for (r, q) in list_of(&limit["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(kind, &r, &q, requests, limits));
    }
    errs
}

fn validate_pod(range: &Value, pod: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    for limit in limits(range) {
        match limit["type"].as_str() {
            Some(kind @ "Container") => {
                for field in ["containers", "initContainers"] {
                    for c in pod["spec"][field].as_array().into_iter().flatten() {
                        let requests = list_of(&c["resources"]["requests"]);
                        let limits = list_of(&c["resources"]["limits"]);
                        errs.extend(check(kind, limit, &requests, &limits));
                    }
                }
            }
            Some(kind @ "Pod") => {
                let (requests, limits) = pod_resources(pod, false);
                errs.extend(check(kind, limit, &requests, &limits));
            }
            _ => {}
        }
    }
    errs
}

fn validate_claim(range: &Value, pvc: &Value) -> Vec<String> {
    let requests = list_of(&pvc["spec"]["resources"]["requests"]);
    let mut errs = Vec::new();
    for limit in limits(range) {
        let Some(kind @ "PersistentVolumeClaim") = limit["type"].as_str() else {
            continue;
        };
        for (r, q) in list_of(&limit["min"]) {
            errs.extend(min_constraint(
                kind,
                &r,
                &q,
                &requests,
                &ResourceList::new(),
            ));
        }
        for (r, q) in list_of(&limit["max"]) {
            errs.extend(max_request_constraint(kind, &r, &q, &requests));
        }
    }
    errs
}

/// Upstream's aggregate error: one message alone, several in brackets.
fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

#[async_trait]
impl AdmissionPlugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    async fn mutate(
        &self,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        if !applies(attrs) || attrs.resource.plural != "pods" {
            return Ok(());
        }
        let Some(ns) = attrs.namespace else {
            return Ok(());
        };
        for range in ranges(reads, ns).await? {
            let set = default_containers(&range, obj);
            // As upstream, the last range that set something names it.
            if !set.is_empty() {
                obj["metadata"]["annotations"][ANNOTATION] =
                    json!(format!("LimitRanger plugin set: {}", set.join("; ")));
            }
        }
        Ok(())
    }

    async fn validate(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        if !applies(attrs) || obj["metadata"]["deletionTimestamp"].is_string() {
            return Ok(());
        }
        let Some(ns) = attrs.namespace else {
            return Ok(());
        };
        for range in ranges(reads, ns).await? {
            let errs = if attrs.resource.plural == "pods" {
                validate_pod(&range, obj)
            } else {
                validate_claim(&range, obj)
            };
            if !errs.is_empty() {
                let rt = attrs.resource;
                return Err(ApiError::forbidden_on(
                    rt.group,
                    rt.plural,
                    attrs.name,
                    &aggregate(&errs),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Value {
        json!({"spec": {"limits": limits}})
    }

    fn pod(resources: Value) -> Value {
        json!({"spec": {"containers": [{"name": "app", "resources": resources}]}})
    }

    #[test]
    fn defaults_fill_only_what_containers_lack_and_are_recorded() {
        let r = range(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "64Mi"}}]));
        let mut p = pod(json!({"requests": {"cpu": "200m"}}));
        p["spec"]["initContainers"] = json!([{"name": "init"}]);
        let set = default_containers(&r, &mut p);
        assert_eq!(
            set,
            [
                "memory request for container app",
                "cpu, memory limit for container app",
                "cpu, memory request for init container init",
                "cpu, memory limit for init container init",
            ]
        );
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "200m"
        );
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "128Mi"
        );
    }

    #[test]
    fn bounds_are_checked_with_upstreams_messages() {
        let container = |l: Value| {
            let mut limit = l;
            limit["type"] = json!("Container");
            range(json!([limit]))
        };
        let cases = [
            (
                json!({"min": {"cpu": "100m"}}),
                json!({"requests": {"cpu": "50m"}}),
                vec!["minimum cpu usage per Container is 100m, but request is 50m"],
            ),
            (
                json!({"min": {"cpu": "100m"}}),
                json!({}),
                vec!["minimum cpu usage per Container is 100m.  No request is specified"],
            ),
            (
                json!({"max": {"memory": "1Gi"}}),
                json!({"requests": {"memory": "512Mi"}, "limits": {"memory": "2Gi"}}),
                vec!["maximum memory usage per Container is 1Gi, but limit is 2Gi"],
            ),
            (
                json!({"max": {"memory": "1Gi"}}),
                json!({"requests": {"memory": "512Mi"}}),
                vec!["maximum memory usage per Container is 1Gi.  No limit is specified"],
            ),
            (
                json!({"maxLimitRequestRatio": {"cpu": "2"}}),
                json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}}),
                vec![
                    "cpu max limit to request ratio per Container is 2, but provided ratio is 5.000000",
                ],
            ),
            (
                json!({"min": {"cpu": "100m"}, "max": {"cpu": "1"}}),
                json!({"requests": {"cpu": "200m"}, "limits": {"cpu": "1"}}),
                vec![],
            ),
        ];
        for (limit, resources, want) in cases {
            assert_eq!(validate_pod(&container(limit), &pod(resources)), want);
        }
    }

    #[test]
    fn pod_limits_apply_to_the_sum_and_claims_to_their_request() {
        let r = range(json!([{"type": "Pod", "max": {"cpu": "1"}}]));
        let mut p = pod(json!({"requests": {"cpu": "600m"}, "limits": {"cpu": "600m"}}));
        let twin = p["spec"]["containers"][0].clone();
        p["spec"]["containers"].as_array_mut().unwrap().push(twin);
        assert_eq!(
            aggregate(&validate_pod(&r, &p)),
            "maximum cpu usage per Pod is 1, but limit is 1200m"
        );
        let r = range(
            json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]),
        );
        let pvc = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert_eq!(
            validate_claim(&r, &pvc("20Gi")),
            ["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]
        );
        assert_eq!(
            validate_claim(&r, &pvc("500Mi")),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert!(validate_claim(&r, &pvc("5Gi")).is_empty());
    }
}
