//! Version conversion. A resource served in several versions is stored in
//! one of them (its storage version); every other served version has a
//! `Conversion` to and from the stored form, which the generic verbs apply
//! at their edges: request bodies are converted to the stored form after
//! decoding, every object handed back (GET, LIST, WATCH, writes' results) is
//! converted to the version asked for, patches apply to that version's view,
//! and field selectors name the stored form's fields through `field_labels`.
//! Upstream converts through an internal version; its internal types are
//! what kubox stores here (autoscaling/v2 for HPAs, core/v1 for Events), so
//! one step suffices.

use serde_json::{Map, Value, json};

pub struct Conversion {
    /// The served version's object in the stored form (apiVersion and kind
    /// are set by the caller).
    pub to_storage: fn(Value) -> Result<Value, String>,
    /// The stored object in the served version's form.
    pub from_storage: fn(Value) -> Value,
    /// Field selector labels of the served version and the stored form's
    /// field each selects on.
    pub field_labels: &'static [(&'static str, &'static str)],
}

/// Sets `key` to `v` unless `v` is null.
fn put(out: &mut Map<String, Value>, key: &str, v: &Value) {
    if !v.is_null() {
        out.insert(key.to_owned(), v.clone());
    }
}

/// A Go non-pointer Quantity: always present, "0" when unset.
fn quantity(v: &Value) -> Value {
    if v.is_null() { json!("0") } else { v.clone() }
}

/// autoscaling/v1 keeps what it has no field for in these annotations, as
/// upstream's conversion does (`pkg/apis/autoscaling/annotations.go`).
pub const HPA_METRIC_SPECS: &str = "autoscaling.alpha.kubernetes.io/metrics";
pub const HPA_METRIC_STATUSES: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
pub const HPA_CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
pub const HPA_BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const HPA_ANNOTATIONS: [&str; 4] = [
    HPA_METRIC_SPECS,
    HPA_METRIC_STATUSES,
    HPA_CONDITIONS,
    HPA_BEHAVIOR,
];

/// autoscaling/v2 HorizontalPodAutoscaler (stored) ↔ autoscaling/v1.
pub static HPA_V1: Conversion = Conversion {
    to_storage: hpa_v1_to_v2,
    from_storage: hpa_v2_to_v1,
    field_labels: &[],
};

/// The field of a MetricSpec or MetricStatus holding its details, by type.
fn source_field(m: &Value) -> Option<&'static str> {
    Some(match m["type"].as_str()? {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return None,
    })
}

/// A v2 MetricIdentifier.
fn metric_id(name: &Value, selector: &Value) -> Value {
    let mut id = Map::new();
    put(&mut id, "name", name);
    put(&mut id, "selector", selector);
    Value::Object(id)
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && !m["resource"]["target"]["averageUtilization"].is_null()
}

/// A v2 MetricSpec in v1's annotation form (v2beta1's shape).
fn metric_spec_to_v1(m: &Value) -> Value {
    let mut out = Map::new();
    put(&mut out, "type", &m["type"]);
    let Some(key) = source_field(m) else {
        return Value::Object(out);
    };
    let src = &m[key];
    let mut s = Map::new();
    match key {
        "resource" | "containerResource" => {
            put(&mut s, "name", &src["name"]);
            put(&mut s, "container", &src["container"]);
            put(
                &mut s,
                "targetAverageUtilization",
                &src["target"]["averageUtilization"],
            );
            put(&mut s, "targetAverageValue", &src["target"]["averageValue"]);
        }
        "pods" => {
            put(&mut s, "metricName", &src["metric"]["name"]);
            s.insert(
                "targetAverageValue".into(),
                quantity(&src["target"]["averageValue"]),
            );
            put(&mut s, "selector", &src["metric"]["selector"]);
        }
        "object" => {
            put(&mut s, "target", &src["describedObject"]);
            put(&mut s, "metricName", &src["metric"]["name"]);
            s.insert("targetValue".into(), quantity(&src["target"]["value"]));
            put(&mut s, "selector", &src["metric"]["selector"]);
            put(&mut s, "averageValue", &src["target"]["averageValue"]);
        }
        _ => {
            put(&mut s, "metricName", &src["metric"]["name"]);
            put(&mut s, "metricSelector", &src["metric"]["selector"]);
            put(&mut s, "targetValue", &src["target"]["value"]);
            put(&mut s, "targetAverageValue", &src["target"]["averageValue"]);
        }
    }
    out.insert(key.into(), Value::Object(s));
    Value::Object(out)
}

/// A MetricSpec of v1's annotation back in v2's form.
fn metric_spec_from_v1(m: &Value) -> Value {
    let mut out = Map::new();
    put(&mut out, "type", &m["type"]);
    let Some(key) = source_field(m) else {
        return Value::Object(out);
    };
    let src = &m[key];
    let mut s = Map::new();
    let mut target = Map::new();
    match key {
        "resource" | "containerResource" => {
            put(&mut s, "name", &src["name"]);
            put(&mut s, "container", &src["container"]);
            let utilization = &src["targetAverageUtilization"];
            target.insert(
                "type".into(),
                json!(if utilization.is_null() {
                    "AverageValue"
                } else {
                    "Utilization"
                }),
            );
            put(&mut target, "averageUtilization", utilization);
            put(&mut target, "averageValue", &src["targetAverageValue"]);
        }
        "pods" => {
            s.insert(
                "metric".into(),
                metric_id(&src["metricName"], &src["selector"]),
            );
            target.insert("type".into(), json!("AverageValue"));
            target.insert("averageValue".into(), quantity(&src["targetAverageValue"]));
        }
        "object" => {
            put(&mut s, "describedObject", &src["target"]);
            s.insert(
                "metric".into(),
                metric_id(&src["metricName"], &src["selector"]),
            );
            let average = &src["averageValue"];
            target.insert(
                "type".into(),
                json!(if average.is_null() {
                    "Value"
                } else {
                    "AverageValue"
                }),
            );
            target.insert("value".into(), quantity(&src["targetValue"]));
            put(&mut target, "averageValue", average);
        }
        _ => {
            s.insert(
                "metric".into(),
                metric_id(&src["metricName"], &src["metricSelector"]),
            );
            let value = &src["targetValue"];
            target.insert(
                "type".into(),
                json!(if value.is_null() {
                    "AverageValue"
                } else {
                    "Value"
                }),
            );
            put(&mut target, "value", value);
            put(&mut target, "averageValue", &src["targetAverageValue"]);
        }
    }
    s.insert("target".into(), Value::Object(target));
    out.insert(key.into(), Value::Object(s));
    Value::Object(out)
}

/// A v2 MetricStatus in v1's annotation form.
fn metric_status_to_v1(m: &Value) -> Value {
    let mut out = Map::new();
    put(&mut out, "type", &m["type"]);
    let Some(key) = source_field(m) else {
        return Value::Object(out);
    };
    let src = &m[key];
    let mut s = Map::new();
    match key {
        "resource" | "containerResource" => {
            put(&mut s, "name", &src["name"]);
            put(&mut s, "container", &src["container"]);
            put(
                &mut s,
                "currentAverageUtilization",
                &src["current"]["averageUtilization"],
            );
            s.insert(
                "currentAverageValue".into(),
                quantity(&src["current"]["averageValue"]),
            );
        }
        "pods" => {
            put(&mut s, "metricName", &src["metric"]["name"]);
            s.insert(
                "currentAverageValue".into(),
                quantity(&src["current"]["averageValue"]),
            );
            put(&mut s, "selector", &src["metric"]["selector"]);
        }
        "object" => {
            put(&mut s, "target", &src["describedObject"]);
            put(&mut s, "metricName", &src["metric"]["name"]);
            s.insert("currentValue".into(), quantity(&src["current"]["value"]));
            put(&mut s, "selector", &src["metric"]["selector"]);
            put(&mut s, "averageValue", &src["current"]["averageValue"]);
        }
        _ => {
            put(&mut s, "metricName", &src["metric"]["name"]);
            put(&mut s, "metricSelector", &src["metric"]["selector"]);
            s.insert("currentValue".into(), quantity(&src["current"]["value"]));
            put(
                &mut s,
                "currentAverageValue",
                &src["current"]["averageValue"],
            );
        }
    }
    out.insert(key.into(), Value::Object(s));
    Value::Object(out)
}

/// A MetricStatus of v1's annotation back in v2's form.
fn metric_status_from_v1(m: &Value) -> Value {
    let mut out = Map::new();
    put(&mut out, "type", &m["type"]);
    let Some(key) = source_field(m) else {
        return Value::Object(out);
    };
    let src = &m[key];
    let mut s = Map::new();
    let mut current = Map::new();
    match key {
        "resource" | "containerResource" => {
            put(&mut s, "name", &src["name"]);
            put(&mut s, "container", &src["container"]);
            put(&mut current, "averageValue", &src["currentAverageValue"]);
            put(
                &mut current,
                "averageUtilization",
                &src["currentAverageUtilization"],
            );
        }
        "pods" => {
            s.insert(
                "metric".into(),
                metric_id(&src["metricName"], &src["selector"]),
            );
            put(&mut current, "averageValue", &src["currentAverageValue"]);
        }
        "object" => {
            put(&mut s, "describedObject", &src["target"]);
            s.insert(
                "metric".into(),
                metric_id(&src["metricName"], &src["selector"]),
            );
            put(&mut current, "value", &src["currentValue"]);
            put(&mut current, "averageValue", &src["averageValue"]);
        }
        _ => {
            s.insert(
                "metric".into(),
                metric_id(&src["metricName"], &src["metricSelector"]),
            );
            put(&mut current, "value", &src["currentValue"]);
            put(&mut current, "averageValue", &src["currentAverageValue"]);
        }
    }
    s.insert("current".into(), Value::Object(current));
    out.insert(key.into(), Value::Object(s));
    Value::Object(out)
}

/// Upstream encodes the behavior annotation from its internal Go type,
/// which has no JSON tags: field names are Go's (`ScaleUp`,
/// `StabilizationWindowSeconds`), and the values (`Max`, `Pods`) as they are.
fn go_field_names(v: &Value, to_go: bool) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let mut chars = k.chars();
                    let key = match chars.next() {
                        Some(c) if to_go => c.to_ascii_uppercase().to_string() + chars.as_str(),
                        Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
                        None => String::new(),
                    };
                    (key, go_field_names(v, to_go))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| go_field_names(x, to_go)).collect()),
        other => other.clone(),
    }
}

fn annotation_json(annotations: &Value, key: &str) -> Option<Value> {
    annotations[key]
        .as_str()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
}

fn hpa_v2_to_v1(mut v2: Value) -> Value {
    let spec = v2["spec"].take();
    let status = v2["status"].take();
    let mut metadata = v2["metadata"].take();
    let mut annotations = match metadata
        .as_object_mut()
        .and_then(|m| m.remove("annotations"))
    {
        Some(Value::Object(a)) => a,
        _ => Map::new(),
    };
    // Only what this conversion produces: stale copies a client sent go.
    for key in HPA_ANNOTATIONS {
        annotations.remove(key);
    }
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let mut v1_spec = Map::new();
    put(&mut v1_spec, "scaleTargetRef", &spec["scaleTargetRef"]);
    put(&mut v1_spec, "minReplicas", &spec["minReplicas"]);
    put(&mut v1_spec, "maxReplicas", &spec["maxReplicas"]);
    if let Some(cpu) = metrics
        .iter()
        .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
    {
        put(
            &mut v1_spec,
            "targetCPUUtilizationPercentage",
            &cpu["resource"]["target"]["averageUtilization"],
        );
    }
    let other: Vec<Value> = metrics
        .iter()
        .filter(|m| !is_cpu_utilization(m))
        .map(metric_spec_to_v1)
        .collect();
    if !other.is_empty() {
        annotations.insert(HPA_METRIC_SPECS.into(), json!(json!(other).to_string()));
    }
    let current = status["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !current.is_empty() {
        let v1: Vec<Value> = current.iter().map(metric_status_to_v1).collect();
        annotations.insert(HPA_METRIC_STATUSES.into(), json!(json!(v1).to_string()));
    }
    if let Some(conditions) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
        annotations.insert(HPA_CONDITIONS.into(), json!(json!(conditions).to_string()));
    }
    if spec["behavior"].is_object() {
        annotations.insert(
            HPA_BEHAVIOR.into(),
            json!(go_field_names(&spec["behavior"], true).to_string()),
        );
    }
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    let mut v1_status = Map::new();
    put(
        &mut v1_status,
        "observedGeneration",
        &status["observedGeneration"],
    );
    put(&mut v1_status, "lastScaleTime", &status["lastScaleTime"]);
    v1_status.insert(
        "currentReplicas".into(),
        json!(status["currentReplicas"].as_i64().unwrap_or(0)),
    );
    v1_status.insert(
        "desiredReplicas".into(),
        json!(status["desiredReplicas"].as_i64().unwrap_or(0)),
    );
    if let Some(u) = current
        .iter()
        .filter(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        .filter_map(|m| m["resource"]["current"]["averageUtilization"].as_i64())
        // The last one, as upstream's loop keeps overwriting it.
        .next_back()
    {
        v1_status.insert("currentCPUUtilizationPercentage".into(), json!(u));
    }
    json!({"metadata": metadata, "spec": v1_spec, "status": v1_status})
}

/// The CPU utilization an HPA of autoscaling/v1 aims at when it names none.
const DEFAULT_CPU_UTILIZATION: i64 = 80;

fn hpa_v1_to_v2(mut v1: Value) -> Result<Value, String> {
    let spec = v1["spec"].take();
    let status = v1["status"].take();
    let mut metadata = v1["metadata"].take();
    let mut annotations = match metadata
        .as_object_mut()
        .and_then(|m| m.remove("annotations"))
    {
        Some(Value::Object(a)) => Value::Object(a),
        _ => json!({}),
    };
    let mut v2_spec = Map::new();
    put(&mut v2_spec, "scaleTargetRef", &spec["scaleTargetRef"]);
    put(&mut v2_spec, "minReplicas", &spec["minReplicas"]);
    put(&mut v2_spec, "maxReplicas", &spec["maxReplicas"]);
    let cpu = |utilization: &Value| json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": utilization}}});
    let mut metrics: Vec<Value> = match annotations.get(HPA_METRIC_SPECS) {
        Some(_) => annotation_json(&annotations, HPA_METRIC_SPECS)
            .and_then(|v| v.as_array().cloned())
            .ok_or_else(|| format!("{HPA_METRIC_SPECS}: not a JSON list of metrics"))?
            .iter()
            .map(metric_spec_from_v1)
            .collect(),
        None => Vec::new(),
    };
    if !spec["targetCPUUtilizationPercentage"].is_null() {
        metrics.push(cpu(&spec["targetCPUUtilizationPercentage"]));
    }
    if metrics.is_empty() {
        metrics.push(cpu(&json!(DEFAULT_CPU_UTILIZATION)));
    }
    v2_spec.insert("metrics".into(), json!(metrics));
    // A malformed behavior annotation is ignored, as upstream moves only
    // well-formed data from annotations to fields.
    if let Some(behavior) = annotation_json(&annotations, HPA_BEHAVIOR)
        .filter(|b| b.as_object().is_some_and(|m| !m.is_empty()))
    {
        v2_spec.insert("behavior".into(), go_field_names(&behavior, false));
    }
    let mut v2_status = Map::new();
    put(
        &mut v2_status,
        "observedGeneration",
        &status["observedGeneration"],
    );
    put(&mut v2_status, "lastScaleTime", &status["lastScaleTime"]);
    put(
        &mut v2_status,
        "currentReplicas",
        &status["currentReplicas"],
    );
    put(
        &mut v2_status,
        "desiredReplicas",
        &status["desiredReplicas"],
    );
    if annotations.get(HPA_METRIC_STATUSES).is_some() {
        let current: Vec<Value> = annotation_json(&annotations, HPA_METRIC_STATUSES)
            .and_then(|v| v.as_array().cloned())
            .ok_or_else(|| format!("{HPA_METRIC_STATUSES}: not a JSON list of metric statuses"))?
            .iter()
            .map(metric_status_from_v1)
            .collect();
        v2_status.insert("currentMetrics".into(), json!(current));
    } else if !status["currentCPUUtilizationPercentage"].is_null() {
        v2_status.insert(
            "currentMetrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": status["currentCPUUtilizationPercentage"]}}}]),
        );
    }
    if annotations.get(HPA_CONDITIONS).is_some() {
        let conditions = annotation_json(&annotations, HPA_CONDITIONS)
            .filter(Value::is_array)
            .ok_or_else(|| format!("{HPA_CONDITIONS}: not a JSON list of conditions"))?;
        v2_status.insert("conditions".into(), conditions);
    }
    if let Some(a) = annotations.as_object_mut() {
        for key in HPA_ANNOTATIONS {
            a.remove(key);
        }
        if !a.is_empty() {
            metadata["annotations"] = annotations;
        }
    }
    let mut out = json!({"metadata": metadata, "spec": v2_spec});
    if !v2_status.is_empty() {
        out["status"] = Value::Object(v2_status);
    }
    Ok(out)
}

/// core/v1 Event (stored) ↔ events.k8s.io/v1 Event: the same fields, some
/// renamed, the legacy ones as `deprecated*`.
pub static EVENT_V1: Conversion = Conversion {
    to_storage: event_to_core,
    from_storage: event_from_core,
    field_labels: &[
        ("regarding.kind", "involvedObject.kind"),
        ("regarding.namespace", "involvedObject.namespace"),
        ("regarding.name", "involvedObject.name"),
        ("regarding.uid", "involvedObject.uid"),
        ("regarding.apiVersion", "involvedObject.apiVersion"),
        (
            "regarding.resourceVersion",
            "involvedObject.resourceVersion",
        ),
        ("regarding.fieldPath", "involvedObject.fieldPath"),
        ("reportingController", "reportingComponent"),
        ("reason", "reason"),
        ("source", "source"),
        ("type", "type"),
    ],
};

/// (events.k8s.io/v1 name, core/v1 name) of every Event field.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("metadata", "metadata"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("action", "action"),
    ("reason", "reason"),
    ("regarding", "involvedObject"),
    ("related", "related"),
    ("note", "message"),
    ("type", "type"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// An Event with its fields renamed: to core/v1's names, or back.
fn rename(v: &Value, to_core: bool) -> Value {
    let mut out = Map::new();
    for &(events, core) in EVENT_FIELDS {
        let (src, dst) = if to_core {
            (events, core)
        } else {
            (core, events)
        };
        put(&mut out, dst, &v[src]);
    }
    Value::Object(out)
}

fn event_to_core(v: Value) -> Result<Value, String> {
    Ok(rename(&v, true))
}

fn event_from_core(v: Value) -> Value {
    rename(&v, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_v1_round_trips_through_v2_with_annotations() {
        let v2 = json!({
            "metadata": {"name": "web", "annotations": {"a": "b"}},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                "minReplicas": 1, "maxReplicas": 10,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12, "averageValue": "12m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
            },
        });
        let v1 = hpa_v2_to_v1(v2.clone());
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 12);
        let a = &v1["metadata"]["annotations"];
        assert_eq!(
            a[HPA_METRIC_SPECS],
            r#"[{"resource":{"name":"memory","targetAverageValue":"100Mi"},"type":"Resource"}]"#
        );
        assert!(
            a[HPA_BEHAVIOR]
                .as_str()
                .unwrap()
                .contains(r#""StabilizationWindowSeconds":60"#)
        );
        let back = hpa_v1_to_v2(v1).unwrap();
        // The CPU target comes last, after the annotation's metrics, as upstream orders them.
        assert_eq!(back["spec"]["metrics"][0], v2["spec"]["metrics"][1]);
        assert_eq!(back["spec"]["metrics"][1], v2["spec"]["metrics"][0]);
        assert_eq!(back["spec"]["behavior"], v2["spec"]["behavior"]);
        assert_eq!(back["status"], v2["status"]);
        assert_eq!(back["metadata"], v2["metadata"]);
    }

    #[test]
    fn hpa_v1_without_a_target_aims_at_80_percent_cpu() {
        let v2 =
            hpa_v1_to_v2(json!({"metadata": {"name": "a"}, "spec": {"maxReplicas": 3}})).unwrap();
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}])
        );
        assert!(
            hpa_v1_to_v2(
                json!({"metadata": {"annotations": {HPA_METRIC_SPECS: "nope"}}, "spec": {}})
            )
            .is_err()
        );
    }

    #[test]
    fn events_rename_both_ways() {
        let core = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}, "message": "hi", "reportingComponent": "kubelet", "count": 3, "series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:00.000000Z"}});
        let ev = event_from_core(core.clone());
        assert_eq!(ev["regarding"]["kind"], "Pod");
        assert_eq!(ev["note"], "hi");
        assert_eq!(ev["reportingController"], "kubelet");
        assert_eq!(ev["deprecatedCount"], 3);
        assert_eq!(event_to_core(ev).unwrap(), core);
    }
}
