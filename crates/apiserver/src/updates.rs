//! What an update may change once an object exists, per kind, as upstream's
//! Validate*Update functions rule it: a pod spec's few mutable fields,
//! controllers' selectors, a StatefulSet's spec, a Job's template, a claim's
//! size, immutable ConfigMaps and Secrets, a StorageClass's parameters.

use kubox_quota::Quantity;
use serde_json::{Value, json};

use crate::status::FieldError;

const IMMUTABLE: &str = "field is immutable";
const IMMUTABLE_WHEN_SET: &str = "field is immutable when `immutable` is set";

/// `v`, with what upstream's semantic equality does not tell apart from
/// absence removed: nulls, empty lists and empty maps.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    // Most updates (every status write) leave the compared part as it was:
    // equal values need no normalized copies.
    a == b || normalized(a) == normalized(b)
}

/// A list's items, none if it is absent.
fn items(list: &Value) -> &[Value] {
    list.as_array().map_or(&[], Vec::as_slice)
}

/// Sets `obj[key]` to `value`, or removes it when `value` is null.
fn set_or_remove(obj: &mut Value, key: &str, value: &Value) {
    if value.is_null() {
        if let Some(m) = obj.as_object_mut() {
            m.remove(key);
        }
    } else if obj.is_object() {
        obj[key] = value.clone();
    }
}

/// A `map[string]string` as Go's `%#v` prints it: keys sorted.
fn go_string_map(v: &Value) -> String {
    match v.as_object().filter(|m| !m.is_empty()) {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
                .collect();
            format!("map[string]string{{{}}}", pairs.join(", "))
        }
    }
}

/// A label selector as Go's `%#v` prints a `v1.LabelSelector`, the value
/// upstream's "field is immutable" errors show.
fn go_label_selector(sel: &Value) -> String {
    if sel.is_null() {
        return "null".into();
    }
    let requirements: Vec<String> = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let values = match r["values"].as_array().filter(|v| !v.is_empty()) {
                None => "[]string(nil)".to_owned(),
                Some(vs) => {
                    let quoted: Vec<String> = vs
                        .iter()
                        .map(|v| format!("{:?}", v.as_str().unwrap_or_default()))
                        .collect();
                    format!("[]string{{{}}}", quoted.join(", "))
                }
            };
            format!(
                "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                r["key"].as_str().unwrap_or_default(),
                r["operator"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let expressions = if requirements.is_empty() {
        "[]v1.LabelSelectorRequirement(nil)".to_owned()
    } else {
        format!(
            "[]v1.LabelSelectorRequirement{{{}}}",
            requirements.join(", ")
        )
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{expressions}}}",
        go_string_map(&sel["matchLabels"])
    )
}

/// A Go struct field's name from its JSON name (`dnsPolicy` is `DNSPolicy`).
fn go_field(key: &str) -> String {
    for (json_prefix, go_prefix) in [("dns", "DNS"), ("os", "OS")] {
        if let Some(rest) = key.strip_prefix(json_prefix)
            && rest.chars().next().is_none_or(char::is_uppercase)
        {
            return format!("{go_prefix}{rest}");
        }
    }
    let mut chars = key.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The difference of two specs in the shape of the `cmp.Diff` upstream
/// appends to its errors, with JSON values where Go prints Go literals.
fn spec_diff(type_name: &str, old: &Value, new: &Value) -> String {
    let (old, new) = (normalized(old), normalized(new));
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut lines = vec![format!("  {type_name}{{")];
    let mut identical = 0;
    let flush = |lines: &mut Vec<String>, identical: &mut usize| {
        if *identical > 0 {
            lines.push(format!("  \t... // {identical} identical fields"));
            *identical = 0;
        }
    };
    for key in keys {
        let (before, after) = (o.get(key), n.get(key));
        if before == after {
            identical += 1;
            continue;
        }
        flush(&mut lines, &mut identical);
        let field = go_field(key);
        if let Some(v) = before {
            lines.push(format!("- \t{field}: {v},"));
        }
        if let Some(v) = after {
            lines.push(format!("+ \t{field}: {v},"));
        }
    }
    flush(&mut lines, &mut identical);
    lines.push("  }".into());
    lines.join("\n") + "\n"
}

const UPDATABLE_POD_FIELDS: [&str; 5] = [
    "`spec.containers[*].image`",
    "`spec.initContainers[*].image`",
    "`spec.activeDeadlineSeconds`",
    "`spec.tolerations` (only additions to existing tolerations)",
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
];

/// A pod update (upstream's ValidatePodUpdate): images, a shorter deadline,
/// more tolerations and fewer scheduling gates; while gated, additions to
/// the node selector and the required node affinity.
pub fn pod(old: &Value, new: &Value) -> Vec<FieldError> {
    let (old_spec, new_spec) = (&old["spec"], &new["spec"]);
    let mut errs = Vec::new();
    for list in ["containers", "initContainers"] {
        let (before, after) = (items(&old_spec[list]), items(&new_spec[list]));
        if before.len() != after.len() {
            errs.push(FieldError::forbidden(
                format!("spec.{list}"),
                "pod updates may not add or remove containers",
            ));
            return errs;
        }
        for (i, c) in after.iter().enumerate() {
            if let Some(image) = c["image"].as_str()
                && image.trim() != image
            {
                errs.push(FieldError::invalid(
                    format!("spec.{list}[{i}].image"),
                    &c["image"],
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }
    if let Some(err) = active_deadline(
        &old_spec["activeDeadlineSeconds"],
        &new_spec["activeDeadlineSeconds"],
    ) {
        errs.push(err);
        return errs;
    }
    errs.extend(only_added_tolerations(
        &old_spec["tolerations"],
        &new_spec["tolerations"],
    ));
    errs.extend(only_deleted_gates(
        &old_spec["schedulingGates"],
        &new_spec["schedulingGates"],
    ));
    if same(old_spec, new_spec) {
        return errs;
    }
    let mut munged = new_spec.clone();
    for list in ["containers", "initContainers"] {
        for (i, c) in munged[list]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            set_or_remove(c, "image", &old_spec[list][i]["image"]);
        }
    }
    for field in ["activeDeadlineSeconds", "schedulingGates", "tolerations"] {
        set_or_remove(&mut munged, field, &old_spec[field]);
    }
    let grace = "terminationGracePeriodSeconds";
    if old_spec[grace].as_i64().is_some_and(|g| g < 0) && munged[grace] == 1 {
        set_or_remove(&mut munged, grace, &old_spec[grace]);
    }
    let gated = old_spec["schedulingGates"]
        .as_array()
        .is_some_and(|g| !g.is_empty());
    if gated {
        errs.extend(gated_scheduling_changes(old_spec, &mut munged));
    }
    if !same(&munged, old_spec) {
        errs.push(FieldError::forbidden(
            "spec",
            format!(
                "pod updates may not change fields other than {}\n{}",
                UPDATABLE_POD_FIELDS.join(","),
                spec_diff("core.PodSpec", old_spec, &munged)
            ),
        ));
    }
    errs
}

/// A deadline may be set, or shortened, never removed or lengthened.
fn active_deadline(old: &Value, new: &Value) -> Option<FieldError> {
    let field = "spec.activeDeadlineSeconds";
    match (old.as_i64(), new.as_i64()) {
        (_, Some(n)) if !(0..=i64::from(i32::MAX)).contains(&n) => Some(FieldError::invalid(
            field,
            new,
            "must be between 0 and 2147483647, inclusive",
        )),
        (Some(o), Some(n)) if o < n => Some(FieldError::invalid(
            field,
            new,
            "must be less than or equal to previous value",
        )),
        (Some(_), None) => Some(FieldError::invalid(
            field,
            &Value::Null,
            "must not update from a positive integer to nil value",
        )),
        _ => None,
    }
}

/// Every existing toleration must stay, but for its tolerationSeconds.
fn only_added_tolerations(old: &Value, new: &Value) -> Option<FieldError> {
    let key = |t: &Value| {
        let mut t = normalized(t);
        if let Some(m) = t.as_object_mut() {
            m.remove("tolerationSeconds");
        }
        t
    };
    let kept: Vec<Value> = new.as_array().into_iter().flatten().map(key).collect();
    old.as_array()
        .into_iter()
        .flatten()
        .any(|t| !kept.contains(&key(t)))
        .then(|| {
            FieldError::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            )
        })
}

/// Gates may only be removed once a pod exists: whoever released a pod for
/// scheduling cannot take that back.
fn only_deleted_gates(old: &Value, new: &Value) -> Vec<FieldError> {
    let names = |gates: &Value| -> Vec<String> {
        gates
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str().map(str::to_owned))
            .collect()
    };
    let before = names(old);
    names(new)
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !before.contains(g))
        .map(|(i, g)| {
            FieldError::forbidden(
                format!("spec.schedulingGates[{i}].name"),
                format!("only deletion is allowed, but found new scheduling gate '{g}'"),
            )
        })
        .collect()
}

/// While a pod is gated its node selector and required node affinity may
/// gain terms, never lose or change them; the preferred affinity may change
/// freely. Takes what is allowed out of `munged`, for the spec comparison.
fn gated_scheduling_changes(old_spec: &Value, munged: &mut Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let (old_selector, new_selector) = (&old_spec["nodeSelector"], &munged["nodeSelector"]);
    if !same(old_selector, new_selector) {
        let removed = old_selector
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| new_selector.get(k) != Some(v));
        if removed {
            errs.push(FieldError::invalid_shown(
                "spec.nodeSelector",
                &go_string_map(new_selector),
                "only additions to spec.nodeSelector are allowed (no mutations or deletions)",
            ));
        }
        set_or_remove(munged, "nodeSelector", old_selector);
    }
    let old_affinity = &old_spec["affinity"]["nodeAffinity"];
    let new_affinity = munged["affinity"]["nodeAffinity"].clone();
    if !same(old_affinity, &new_affinity) {
        errs.extend(required_affinity_additions(old_affinity, &new_affinity));
        if !munged["affinity"].is_object() {
            munged["affinity"] = json!({});
        }
        set_or_remove(&mut munged["affinity"], "nodeAffinity", old_affinity);
    }
    errs
}

fn required_affinity_additions(old: &Value, new: &Value) -> Vec<FieldError> {
    let path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
    let terms = |a: &Value| {
        a["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (terms(old), terms(new));
    if before.is_empty() {
        return Vec::new();
    }
    if before.len() != after.len() {
        return vec![FieldError::invalid(
            path,
            &json!(after),
            "no additions/deletions to non-empty NodeSelectorTerms list are allowed",
        )];
    }
    let only_additions = |o: &Value, n: &Value| {
        ["matchExpressions", "matchFields"].iter().all(|k| {
            let (o, n) = (
                o[k].as_array().cloned().unwrap_or_default(),
                n[k].as_array().cloned().unwrap_or_default(),
            );
            o.len() <= n.len() && same(&json!(o), &json!(n[..o.len()]))
        })
    };
    before
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (o, n))| !only_additions(o, n))
        .map(|(i, (_, n))| {
            FieldError::invalid(
                format!("{path}[{i}]"),
                n,
                "only additions are allowed (no mutations or deletions)",
            )
        })
        .collect()
}

/// apps/v1 controllers' selectors never change (upstream's strategies).
pub fn selector(old: &Value, new: &Value) -> Vec<FieldError> {
    let selector = &new["spec"]["selector"];
    if same(&old["spec"]["selector"], selector) {
        return Vec::new();
    }
    vec![FieldError::invalid_shown(
        "spec.selector",
        &go_label_selector(selector),
        IMMUTABLE,
    )]
}

const MUTABLE_STATEFULSET_FIELDS: [&str; 7] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

pub fn statefulset(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut munged = new["spec"].clone();
    for field in MUTABLE_STATEFULSET_FIELDS {
        set_or_remove(&mut munged, field, &old["spec"][field]);
    }
    if same(&munged, &old["spec"]) {
        return Vec::new();
    }
    vec![FieldError::forbidden(
        "spec",
        "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
    )]
}

/// A Job's selector, template and completion rules are fixed; a suspended
/// Job that never started may still change where its pods run.
pub fn job(old: &Value, new: &Value) -> Vec<FieldError> {
    let (o, n) = (&old["spec"], &new["spec"]);
    let mut errs = Vec::new();
    if n["completionMode"] != "Indexed" && !same(&o["completions"], &n["completions"]) {
        errs.push(FieldError::invalid(
            "spec.completions",
            &n["completions"],
            IMMUTABLE,
        ));
    }
    errs.extend(selector(old, new));
    let mut template = o["template"].clone();
    if o["suspend"] == true && old["status"]["startTime"].is_null() {
        let from = &n["template"];
        for (part, field) in [
            ("metadata", "labels"),
            ("metadata", "annotations"),
            ("spec", "nodeSelector"),
            ("spec", "tolerations"),
            ("spec", "schedulingGates"),
        ] {
            if !template[part].is_object() {
                template[part] = json!({});
            }
            set_or_remove(&mut template[part], field, &from[part][field]);
        }
        if !template["spec"]["affinity"].is_object() {
            template["spec"]["affinity"] = json!({});
        }
        set_or_remove(
            &mut template["spec"]["affinity"],
            "nodeAffinity",
            &from["spec"]["affinity"]["nodeAffinity"],
        );
    }
    if !same(&template, &n["template"]) {
        errs.push(FieldError::invalid(
            "spec.template",
            &n["template"],
            IMMUTABLE,
        ));
    }
    for field in [
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
        "successPolicy",
    ] {
        if !same(&o[field], &n[field]) {
            errs.push(FieldError::invalid(
                format!("spec.{field}"),
                &n[field],
                IMMUTABLE,
            ));
        }
    }
    errs
}

const STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// A claim's spec is fixed but for its volume (set once), a class name set
/// where there was none, and, once bound, a larger size and another
/// attributes class (upstream's ValidatePersistentVolumeClaimUpdate).
pub fn claim(old: &Value, new: &Value) -> Vec<FieldError> {
    let (mut o, mut n) = (old["spec"].clone(), new["spec"].clone());
    if o["volumeName"].as_str().is_none_or(str::is_empty) {
        set_or_remove(&mut o, "volumeName", &n["volumeName"]);
    }
    let annotated = old["metadata"]["annotations"][STORAGE_CLASS_ANNOTATION].is_string();
    if o["storageClassName"].is_null() && !annotated {
        set_or_remove(&mut n, "storageClassName", &Value::Null);
    }
    if new["status"]["phase"] == "Bound" {
        if n["resources"]["requests"].is_object() {
            set_or_remove(
                &mut n["resources"]["requests"],
                "storage",
                &o["resources"]["requests"]["storage"],
            );
        }
        if !n["volumeAttributesClassName"].is_null() {
            set_or_remove(
                &mut n,
                "volumeAttributesClassName",
                &o["volumeAttributesClassName"],
            );
        }
    }
    let mut errs = Vec::new();
    if !same(&n, &o) {
        errs.push(FieldError::forbidden(
            "spec",
            format!(
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n{}",
                spec_diff("core.PersistentVolumeClaimSpec", &o, &n)
            ),
        ));
    }
    let size = |v: &Value| v.as_str().and_then(Quantity::parse).unwrap_or_default();
    let before = size(&old["spec"]["resources"]["requests"]["storage"]);
    let after = size(&new["spec"]["resources"]["requests"]["storage"]);
    let capacity = size(&old["status"]["capacity"]["storage"]);
    // Shrinking back towards the capacity recovers from a failed expansion.
    if after < before && after <= capacity {
        errs.push(FieldError::forbidden(
            "spec.resources.requests.storage",
            "field can not be less than status.capacity",
        ));
    }
    errs
}

/// An immutable ConfigMap's or Secret's data stays, and so does its
/// `immutable`.
fn immutable_data(old: &Value, new: &Value, fields: &[&str]) -> Vec<FieldError> {
    if old["immutable"] != true {
        return Vec::new();
    }
    let mut errs = Vec::new();
    if new["immutable"] != true {
        errs.push(FieldError::forbidden("immutable", IMMUTABLE_WHEN_SET));
    }
    for field in fields {
        if !same(&old[*field], &new[*field]) {
            errs.push(FieldError::forbidden(*field, IMMUTABLE_WHEN_SET));
        }
    }
    errs
}

pub fn config_map(old: &Value, new: &Value) -> Vec<FieldError> {
    immutable_data(old, new, &["data", "binaryData"])
}

pub fn secret(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old["type"] != new["type"] {
        errs.push(FieldError::invalid("type", &new["type"], IMMUTABLE));
    }
    errs.extend(immutable_data(old, new, &["data"]));
    errs
}

pub fn storage_class(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for field in ["parameters", "provisioner", "reclaimPolicy"] {
        if !same(&old[field], &new[field]) {
            errs.push(FieldError::forbidden(
                field,
                format!("updates to {field} are forbidden."),
            ));
        }
    }
    if old["volumeBindingMode"] != new["volumeBindingMode"] {
        errs.push(FieldError::invalid(
            "volumeBindingMode",
            &new["volumeBindingMode"],
            IMMUTABLE,
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(spec: Value) -> Value {
        json!({"spec": spec})
    }

    fn base() -> Value {
        json!({"containers": [{"name": "c", "image": "busybox:1", "ports": [{"containerPort": 80}]}],
               "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
               "terminationGracePeriodSeconds": 30})
    }

    #[test]
    fn pod_images_deadlines_and_tolerations_may_change() {
        let old = pod_with(base());
        let mut spec = base();
        spec["containers"][0]["image"] = json!("busybox:2");
        spec["activeDeadlineSeconds"] = json!(60);
        spec["tolerations"][0]["tolerationSeconds"] = json!(10);
        spec["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "x", "operator": "Exists"}));
        assert_eq!(pod(&old, &pod_with(spec)), vec![]);
    }

    #[test]
    fn other_pod_changes_are_forbidden_with_upstreams_message_and_a_diff() {
        let old = pod_with(base());
        let mut spec = base();
        spec["containers"][0]["ports"][0]["containerPort"] = json!(81);
        spec["nodeName"] = json!("n1");
        let errs = pod(&old, &pod_with(spec));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec");
        let (head, diff) = errs[0].message.split_once('\n').unwrap();
        assert_eq!(
            head,
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
        );
        assert!(diff.starts_with("  core.PodSpec{\n"), "{diff}");
        assert!(diff.contains("+ \tNodeName: \"n1\","), "{diff}");
        assert!(diff.contains("\t... // 2 identical fields"), "{diff}");
    }

    #[test]
    fn pod_containers_deadlines_and_tolerations_have_their_own_errors() {
        let old = pod_with(
            json!({"containers": [{"name": "c", "image": "i"}], "activeDeadlineSeconds": 30,
            "tolerations": [{"key": "k", "operator": "Exists"}]}),
        );
        let added = pod_with(
            json!({"containers": [{"name": "c", "image": "i"}, {"name": "d", "image": "i"}]}),
        );
        let errs = pod(&old, &added);
        assert_eq!(
            errs[0].message,
            "Forbidden: pod updates may not add or remove containers"
        );
        let longer = pod_with(
            json!({"containers": [{"name": "c", "image": "i"}], "activeDeadlineSeconds": 60,
            "tolerations": [{"key": "k", "operator": "Exists"}]}),
        );
        assert_eq!(
            pod(&old, &longer)[0].message,
            "Invalid value: 60: must be less than or equal to previous value"
        );
        let removed = pod_with(
            json!({"containers": [{"name": "c", "image": "i"}], "activeDeadlineSeconds": 30}),
        );
        assert_eq!(
            pod(&old, &removed)[0].message,
            "Forbidden: existing toleration can not be modified except its tolerationSeconds"
        );
    }

    #[test]
    fn a_negative_grace_period_may_become_one() {
        let mut spec = base();
        spec["terminationGracePeriodSeconds"] = json!(-1);
        let old = pod_with(spec.clone());
        spec["terminationGracePeriodSeconds"] = json!(1);
        assert_eq!(pod(&old, &pod_with(spec.clone())), vec![]);
        spec["terminationGracePeriodSeconds"] = json!(2);
        assert_eq!(pod(&old, &pod_with(spec))[0].field, "spec");
    }

    #[test]
    fn a_gated_pod_may_gain_node_selectors_and_affinity_terms() {
        let mut spec = base();
        spec["schedulingGates"] = json!([{"name": "g"}]);
        spec["nodeSelector"] = json!({"a": "1"});
        let old = pod_with(spec.clone());
        spec["schedulingGates"] = json!([]);
        spec["nodeSelector"] = json!({"a": "1", "b": "2"});
        spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Exists"}]}]}}});
        assert_eq!(pod(&old, &pod_with(spec.clone())), vec![]);
        spec["nodeSelector"] = json!({"a": "2"});
        let errs = pod(&old, &pod_with(spec));
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].message,
            "Invalid value: map[string]string{\"a\":\"2\"}: only additions to spec.nodeSelector are allowed (no mutations or deletions)"
        );
        let mut ungated = base();
        ungated["nodeSelector"] = json!({"a": "1"});
        let old = pod_with(base());
        assert_eq!(pod(&old, &pod_with(ungated))[0].field, "spec");
    }

    #[test]
    fn new_scheduling_gates_are_forbidden() {
        let old = pod_with(base());
        let mut spec = base();
        spec["schedulingGates"] = json!([{"name": "g"}]);
        let errs = pod(&old, &pod_with(spec));
        assert_eq!(errs[0].field, "spec.schedulingGates[0].name");
    }

    #[test]
    fn selectors_print_as_go_label_selectors() {
        let sel = json!({"matchLabels": {"b": "2", "a": "1"}});
        assert_eq!(
            go_label_selector(&sel),
            "v1.LabelSelector{MatchLabels:map[string]string{\"a\":\"1\", \"b\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
        );
        let sel =
            json!({"matchExpressions": [{"key": "k", "operator": "In", "values": ["x", "y"]}]});
        assert_eq!(
            go_label_selector(&sel),
            "v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:\"k\", Operator:\"In\", Values:[]string{\"x\", \"y\"}}}}"
        );
    }

    #[test]
    fn suspended_jobs_that_never_ran_may_move_their_pods() {
        let template = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let old = json!({"spec": {"suspend": true, "template": template.clone()}, "status": {}});
        let mut moved = old.clone();
        moved["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "b"});
        moved["spec"]["template"]["metadata"]["labels"]["b"] = json!("2");
        assert_eq!(job(&old, &moved), vec![]);
        let mut started = old.clone();
        started["status"]["startTime"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(job(&started, &moved)[0].field, "spec.template");
        let mut image = old.clone();
        image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
        assert_eq!(job(&old, &image)[0].field, "spec.template");
    }

    #[test]
    fn bound_claims_may_only_grow() {
        let old = json!({"spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv1",
            "resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}});
        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(claim(&old, &grown), vec![]);
        let mut shrunk = old.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        assert_eq!(
            claim(&old, &shrunk)[0].message,
            "Forbidden: field can not be less than status.capacity"
        );
        let mut modes = old.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert!(claim(&old, &modes)[0].message.starts_with(
            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n"
        ));
    }

    #[test]
    fn immutable_config_maps_keep_their_data() {
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let new = json!({"immutable": false, "data": {"a": "2"}});
        let fields: Vec<String> = config_map(&old, &new)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["immutable", "data"]);
        assert_eq!(config_map(&json!({"data": {"a": "1"}}), &new), vec![]);
    }
}
