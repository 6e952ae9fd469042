//! Objects as field sets, and the structural merge of an applied
//! configuration, as upstream's structured-merge-diff does. How each list
//! merges comes from the same patch merge keys strategic merge patch uses
//! (`patch::list_strategy`): keyed lists are associative
//! (`x-kubernetes-list-type: map`), lists of primitives with a merge
//! strategy are sets, all other lists are atomic.

use serde_json::{Map, Value, json};

use super::fieldset::FieldSet;
use crate::patch::{ListStrategy, list_strategy};

enum ListKind {
    /// Items are identified by these keys, each with the value the schema
    /// defaults it to when an item leaves it out.
    Map(Vec<(&'static str, Option<&'static str>)>),
    Set,
    Atomic,
}

fn list_kind(parent: &str, field: &str) -> ListKind {
    match list_strategy(parent, field) {
        // Ports are keyed by number and protocol upstream (`TCP` unless set).
        ListStrategy::MergeByKey(key @ ("containerPort" | "port")) => {
            ListKind::Map(vec![(key, None), ("protocol", Some("TCP"))])
        }
        ListStrategy::MergeByKey(key) => ListKind::Map(vec![(key, None)]),
        ListStrategy::MergePrimitive => ListKind::Set,
        ListStrategy::Replace => ListKind::Atomic,
    }
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// An associative list item's element, `k:{"name":"a"}`, or None when the
/// item lacks a key (such items are treated as atomic).
fn key_element(item: &Value, keys: &[(&str, Option<&str>)]) -> Option<String> {
    let mut id = Map::new();
    for (key, default) in keys {
        match (item.get(*key), default) {
            (Some(v), _) => {
                id.insert((*key).to_owned(), v.clone());
            }
            (None, Some(d)) => {
                id.insert((*key).to_owned(), json!(d));
            }
            (None, None) => return None,
        }
    }
    Some(format!("k:{}", Value::Object(id)))
}

fn value_element(v: &Value) -> String {
    format!("v:{v}")
}

/// Whether the field `k` of the object at `path` is the object's own
/// managedFields, which nobody owns and which are never compared.
fn unowned(path: &str, k: &str) -> bool {
    path == "metadata" && k == "managedFields"
}

/// The fields an object sets: every scalar, null or empty object, each
/// associative list item and set value, and atomic lists whole.
pub fn object_set(obj: &Value, path: &str) -> FieldSet {
    let mut out = FieldSet::default();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map.iter().filter(|(k, _)| !unowned(path, k)) {
        out.insert_child(format!("f:{k}"), field_set(v, path, k));
    }
    out
}

/// The set of one field's value, rooted at the field.
fn field_set(v: &Value, parent: &str, field: &str) -> FieldSet {
    let path = join(parent, field);
    match v {
        Value::Object(m) if !m.is_empty() => object_set(v, &path),
        Value::Array(items) => match list_kind(parent, field) {
            ListKind::Atomic => FieldSet::leaf(),
            ListKind::Set => {
                let mut out = FieldSet::default();
                for item in items {
                    out.insert_child(value_element(item), FieldSet::leaf());
                }
                out
            }
            ListKind::Map(keys) => {
                let mut out = FieldSet::default();
                for item in items {
                    if let Some(el) = key_element(item, &keys) {
                        let mut set = object_set(item, &path);
                        set.set_member();
                        out.insert_child(el, set);
                    }
                }
                out
            }
        },
        _ => FieldSet::leaf(),
    }
}

/// What changed from `old` to `new`: the fields added or modified, and the
/// fields removed (each with everything under it).
#[derive(Debug, Default)]
pub struct Comparison {
    pub changed: FieldSet,
    pub removed: FieldSet,
}

/// What changed from `old` to `new`, leaving out their managedFields.
pub fn compare(old: &Value, new: &Value) -> Comparison {
    let mut c = Comparison::default();
    compare_objects(old, new, "", &mut c);
    c
}

fn gone(v: &Value, parent: &str, field: &str) -> FieldSet {
    let mut set = field_set(v, parent, field);
    set.set_member();
    set
}

fn compare_objects(old: &Value, new: &Value, path: &str, out: &mut Comparison) {
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    for (k, nv) in new.iter().filter(|(k, _)| !unowned(path, k)) {
        let el = format!("f:{k}");
        match old.get(k) {
            None => out.changed.insert_child(el, field_set(nv, path, k)),
            Some(ov) if ov == nv => {}
            Some(ov) => {
                let mut sub = Comparison::default();
                compare_values(ov, nv, path, k, &mut sub);
                out.changed.insert_child(el.clone(), sub.changed);
                out.removed.insert_child(el, sub.removed);
            }
        }
    }
    for (k, ov) in old.iter().filter(|(k, _)| !unowned(path, k)) {
        if !new.contains_key(k) {
            out.removed
                .insert_child(format!("f:{k}"), gone(ov, path, k));
        }
    }
}

/// Compares two different values of one field; the sets are rooted at it.
fn compare_values(old: &Value, new: &Value, parent: &str, field: &str, out: &mut Comparison) {
    let path = join(parent, field);
    match (old, new) {
        (Value::Object(o), Value::Object(n)) if !o.is_empty() && !n.is_empty() => {
            compare_objects(old, new, &path, out);
        }
        (Value::Array(o), Value::Array(n)) => match list_kind(parent, field) {
            ListKind::Atomic => out.changed.set_member(),
            ListKind::Set => {
                for v in n.iter().filter(|v| !o.contains(v)) {
                    out.changed.insert_child(value_element(v), FieldSet::leaf());
                }
                for v in o.iter().filter(|v| !n.contains(v)) {
                    out.removed.insert_child(value_element(v), FieldSet::leaf());
                }
            }
            ListKind::Map(keys) => {
                let index = |items: &[Value]| -> Vec<(String, Value)> {
                    items
                        .iter()
                        .filter_map(|i| key_element(i, &keys).map(|k| (k, i.clone())))
                        .collect()
                };
                let (o, n) = (index(o), index(n));
                for (el, nv) in &n {
                    match o.iter().find(|(k, _)| k == el) {
                        None => {
                            let mut set = object_set(nv, &path);
                            set.set_member();
                            out.changed.insert_child(el.clone(), set);
                        }
                        Some((_, ov)) if ov == nv => {}
                        Some((_, ov)) => {
                            let mut sub = Comparison::default();
                            compare_objects(ov, nv, &path, &mut sub);
                            out.changed.insert_child(el.clone(), sub.changed);
                            out.removed.insert_child(el.clone(), sub.removed);
                        }
                    }
                }
                for (el, ov) in &o {
                    if !n.iter().any(|(k, _)| k == el) {
                        let mut set = object_set(ov, &path);
                        set.set_member();
                        out.removed.insert_child(el.clone(), set);
                    }
                }
            }
        },
        _ => {
            // A changed scalar, or a change of type: what was under the old
            // value is gone.
            out.changed.union(&field_set(new, parent, field));
            out.changed.set_member();
            let mut was = field_set(old, parent, field);
            if was.is_member() {
                was = FieldSet::default();
            }
            out.removed.union(&was);
        }
    }
}

/// Merges an applied configuration into the live object: objects field by
/// field, associative lists item by item, sets by union, the rest replaced.
/// A null in the configuration removes the field.
pub fn merge(live: &mut Value, config: &Value, path: &str) {
    let Some(config) = config.as_object() else {
        *live = config.clone();
        return;
    };
    if !live.is_object() {
        *live = json!({});
    }
    let target = live.as_object_mut().expect("made an object above");
    for (k, cv) in config {
        let child_path = join(path, k);
        match (target.get_mut(k), cv) {
            (_, Value::Null) => {
                target.remove(k);
            }
            (Some(lv @ Value::Object(_)), Value::Object(_)) => merge(lv, cv, &child_path),
            (Some(Value::Array(lv)), Value::Array(items)) => match list_kind(path, k) {
                ListKind::Atomic => *lv = items.clone(),
                ListKind::Set => {
                    for item in items {
                        if !lv.contains(item) {
                            lv.push(item.clone());
                        }
                    }
                }
                ListKind::Map(keys) => {
                    for item in items {
                        let id = key_element(item, &keys);
                        let at = id.as_ref().and_then(|id| {
                            lv.iter()
                                .position(|l| key_element(l, &keys).as_ref() == Some(id))
                        });
                        match at {
                            Some(i) => merge(&mut lv[i], item, &child_path),
                            None => lv.push(item.clone()),
                        }
                    }
                }
            },
            _ => {
                target.insert(k.clone(), cv.clone());
            }
        }
    }
}

/// Removes the member paths of `set` from the object.
pub fn prune(obj: &mut Value, set: &FieldSet, path: &str) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    for (el, node) in set.children() {
        let Some(field) = el.strip_prefix("f:") else {
            continue;
        };
        if node.is_member() {
            map.remove(field);
            continue;
        }
        let child_path = join(path, field);
        match map.get_mut(field) {
            Some(v @ Value::Object(_)) => prune(v, node, &child_path),
            Some(Value::Array(items)) => {
                if let ListKind::Map(keys) = list_kind(path, field) {
                    for (item_el, item_node) in node.children() {
                        let at = items
                            .iter()
                            .position(|i| key_element(i, &keys).as_deref() == Some(item_el));
                        match at {
                            Some(i) if item_node.is_member() => {
                                items.remove(i);
                            }
                            Some(i) => prune(&mut items[i], item_node, &child_path),
                            None => {}
                        }
                    }
                } else {
                    items.retain(|v| node.child(&value_element(v)).is_none_or(|n| !n.is_member()));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "web", "image": image, "ports": [{"containerPort": 80}], "args": ["a", "b"]}
        ]}}}})
    }

    #[test]
    fn object_sets_follow_list_types() {
        let set = object_set(&deployment(1, "nginx"), "");
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}
            }}}}})
        );
        let finalizers = object_set(
            &json!({"metadata": {"finalizers": ["a"], "labels": {}}}),
            "",
        );
        assert_eq!(
            finalizers.to_fields_v1(),
            json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}, "f:labels": {}}})
        );
    }

    #[test]
    fn comparison_finds_changed_and_removed_fields() {
        let old = deployment(1, "nginx");
        let mut new = deployment(2, "nginx:2");
        new["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("ports");
        let c = compare(&old, &new);
        assert_eq!(
            c.changed.paths(),
            vec![
                ".spec.replicas",
                ".spec.template.spec.containers[name=\"web\"].image"
            ]
        );
        assert_eq!(
            c.removed.paths(),
            vec![
                ".spec.template.spec.containers[name=\"web\"].ports",
                ".spec.template.spec.containers[name=\"web\"].ports[containerPort=80,protocol=\"TCP\"]",
                ".spec.template.spec.containers[name=\"web\"].ports[containerPort=80,protocol=\"TCP\"].containerPort"
            ]
        );
        assert!(compare(&old, &old).changed.is_empty());
    }

    #[test]
    fn an_objects_own_managed_fields_are_not_compared() {
        let entry = |m: &str| json!([{"manager": m, "operation": "Update", "fieldsV1": {}}]);
        let old = json!({"metadata": {"name": "x", "managedFields": entry("a")}, "spec": {"a": 1}});
        let mut new = old.clone();
        new["metadata"]["managedFields"] = entry("b");
        assert!(compare(&old, &new).changed.is_empty());
        new["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        assert!(compare(&old, &new).removed.is_empty());
        let created = compare(&json!({}), &old);
        assert_eq!(created.changed.paths(), vec![".metadata.name", ".spec.a"]);
        // Elsewhere a field of that name is an object's like any other.
        let template = json!({"spec": {"metadata": {"managedFields": 1}}});
        assert_eq!(
            compare(&json!({}), &template).changed.paths(),
            vec![".spec.metadata.managedFields"]
        );
    }

    #[test]
    fn merge_keeps_live_items_and_replaces_atomic_lists() {
        let mut live = deployment(1, "nginx");
        live["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "s"}));
        let config = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "args": ["c"]}
        ]}}}});
        merge(&mut live, &config, "");
        let containers = &live["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(containers[0]["args"], json!(["c"]));
        assert_eq!(containers[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(containers[1]["name"], "sidecar");
        assert_eq!(live["spec"]["replicas"], 1);
    }

    #[test]
    fn prune_removes_members_only() {
        let mut obj = deployment(1, "nginx");
        obj["metadata"] = json!({"finalizers": ["a", "b"]});
        let set = FieldSet::from_fields_v1(&json!({
            "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"web\"}": {"f:args": {}}
            }}}},
            "f:metadata": {"f:finalizers": {"v:\"a\"": {}}}
        }));
        prune(&mut obj, &set, "");
        assert!(obj["spec"].get("replicas").is_none());
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert!(c.get("args").is_none());
        assert_eq!(c["image"], "nginx");
        assert_eq!(obj["metadata"]["finalizers"], json!(["b"]));
    }
}
