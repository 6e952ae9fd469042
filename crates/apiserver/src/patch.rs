//! The three PATCH formats: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and Kubernetes' strategic merge patch, with upstream's patch
//! merge keys for the built-in types and its `$patch`, `$setElementOrder`,
//! `$retainKeys` and `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub const ACCEPTED: &'static [&'static str] = &[
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];

    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies a JSON or merge patch; strategic patches go to [`strategic_merge`].
pub fn apply(doc: &mut Value, patch_type: PatchType, patch: &[u8]) -> Result<(), String> {
    match patch_type {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| e.to_string())?;
            json_patch::patch(doc, &p).map_err(|e| e.to_string())
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| e.to_string())?;
            json_patch::merge(doc, &p);
            Ok(())
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(patch).map_err(|e| e.to_string())?;
            if !p.is_object() {
                return Err("strategic merge patch must be a JSON object".into());
            }
            strategic_merge(doc, &p, "");
            Ok(())
        }
        PatchType::Apply => Err("server-side apply is handled separately".into()),
    }
}

/// How a list field merges, by the field's name and where it sits.
pub(crate) enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeByKey(&'static str),
    /// A set of primitives: union.
    MergePrimitive,
    Replace,
}

pub(crate) fn list_strategy(path: &str, field: &str) -> ListStrategy {
    use ListStrategy::*;
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => MergeByKey("name"),
        "volumeMounts" => MergeByKey("mountPath"),
        "volumeDevices" => MergeByKey("devicePath"),
        "ports" if path.contains("containers") => MergeByKey("containerPort"),
        "ports" if path.ends_with("spec") => MergeByKey("port"),
        "hostAliases" => MergeByKey("ip"),
        "conditions" | "addresses" => MergeByKey("type"),
        "ownerReferences" => MergeByKey("uid"),
        "taints" => MergeByKey("key"),
        "topologySpreadConstraints" => MergeByKey("topologyKey"),
        "finalizers" => MergePrimitive,
        _ => Replace,
    }
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Merges a strategic patch into `doc`; `path` is the dotted location, used to
/// pick list strategies.
pub fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) {
    let Some(patch) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *doc = Value::Object(replaced);
            return;
        }
        Some("delete") => {
            *doc = Value::Null;
            return;
        }
        _ => {}
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("made an object above");
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()) || patch.contains_key(k));
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE)
                && let (Some(Value::Array(list)), Value::Array(gone)) =
                    (target.get_mut(field), value)
            {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Array(items) => {
                let order = patch
                    .get(&format!("{SET_ORDER}{key}"))
                    .and_then(Value::as_array);
                let merged = merge_list(
                    target.get(key),
                    items,
                    list_strategy(path, key),
                    order,
                    &child_path,
                );
                target.insert(key.clone(), merged);
            }
            Value::Object(_) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value, &child_path);
                if slot.is_null() {
                    target.remove(key);
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_list(
    current: Option<&Value>,
    patch: &[Value],
    strategy: ListStrategy,
    order: Option<&Vec<Value>>,
    path: &str,
) -> Value {
    let current: Vec<Value> = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match strategy {
        ListStrategy::Replace => Value::Array(
            patch
                .iter()
                .filter(|v| v.get("$patch").is_none())
                .cloned()
                .collect(),
        ),
        ListStrategy::MergePrimitive => {
            let mut out = current;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Value::Array(out)
        }
        ListStrategy::MergeByKey(key) => {
            // `$patch: replace` as an element replaces the whole list.
            if patch
                .iter()
                .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Value::Array(
                    patch
                        .iter()
                        .filter(|v| v.get("$patch").is_none())
                        .cloned()
                        .collect(),
                );
            }
            let mut out = current;
            for p in patch {
                let id = p.get(key);
                let pos = id.and_then(|id| out.iter().position(|c| c.get(key) == Some(id)));
                match (p.get("$patch").and_then(Value::as_str), pos) {
                    (Some("delete"), Some(i)) => {
                        out.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => strategic_merge(&mut out[i], p, path),
                    (_, None) => {
                        let mut item = Value::Null;
                        strategic_merge(&mut item, p, path);
                        out.push(item);
                    }
                }
            }
            if let Some(order) = order {
                // Listed elements in the given order; the rest keep their place after them.
                out.sort_by_key(|item| {
                    item.get(key)
                        .and_then(|id| order.iter().position(|o| o.get(key) == Some(id)))
                        .unwrap_or(usize::MAX)
                });
            }
            Value::Array(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
            "",
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
        strategic_merge(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
            "",
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "b", "image": "b:2"}])
        );
    }

    #[test]
    fn null_deletes_and_maps_merge() {
        let mut cm = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        strategic_merge(
            &mut cm,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": {"y": "2"}}),
            "",
        );
        assert_eq!(
            cm,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "data": {"x": "1", "y": "2"}})
        );
    }

    #[test]
    fn ports_merge_by_their_own_keys() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        strategic_merge(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 3000}, {"port": 443}]}}),
            "",
        );
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "targetPort": 3000}, {"port": 443}])
        );
        let mut c = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "http"}]}]}});
        strategic_merge(
            &mut c,
            &json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}),
            "",
        );
        assert_eq!(
            c["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}])
        );
    }

    #[test]
    fn directives() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}, "metadata": {"finalizers": ["x"]}});
        let patch = json!({
            "metadata": {"finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "i"}]}}}
        });
        strategic_merge(&mut d, &patch, "");
        assert_eq!(d["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b"}, {"name": "a", "image": "i"}])
        );
        strategic_merge(
            &mut d,
            &json!({"spec": {"$patch": "replace", "replicas": 2}}),
            "",
        );
        assert_eq!(d["spec"], json!({"replicas": 2}));
    }

    #[test]
    fn other_lists_are_replaced() {
        let mut p = json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "args": ["1", "2"]}]}});
        strategic_merge(
            &mut p,
            &json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "c", "args": ["3"]}]}}),
            "",
        );
        assert_eq!(p["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(p["spec"]["containers"][0]["args"], json!(["3"]));
    }
}
