//! Sets of field paths in upstream's FieldsV1 form. Each node is one path
//! element as FieldsV1 spells it (`f:name`, `k:{"name":"a"}`, `v:"x"`,
//! `i:0`); a node is a member when the path ending there is in the set
//! (FieldsV1's `.` key, or an empty object for a leaf).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    /// Never holds an empty set, so emptiness is structural.
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn leaf() -> Self {
        Self {
            member: true,
            children: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub fn is_member(&self) -> bool {
        self.member
    }

    pub fn set_member(&mut self) {
        self.member = true;
    }

    pub fn children(&self) -> impl Iterator<Item = (&String, &FieldSet)> {
        self.children.iter()
    }

    pub fn child(&self, element: &str) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// Adds `set` under `element`, merged with what is there.
    pub fn insert_child(&mut self, element: String, set: FieldSet) {
        if set.is_empty() {
            return;
        }
        match self.children.get_mut(&element) {
            Some(existing) => existing.union(&set),
            None => {
                self.children.insert(element, set);
            }
        }
    }

    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, v) in &other.children {
            self.insert_child(k.clone(), v.clone());
        }
    }

    /// Leaves out the paths of `other`, in place: only `other` is walked,
    /// so taking a few fields from a large set costs only those fields.
    pub fn subtract(&mut self, other: &FieldSet) {
        self.member &= !other.member;
        for (k, o) in &other.children {
            if let Some(child) = self.children.get_mut(k) {
                child.subtract(o);
                if child.is_empty() {
                    self.children.remove(k);
                }
            }
        }
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            if let Some(o) = other.children.get(k) {
                out.insert_child(k.clone(), v.intersection(o));
            }
        }
        out
    }

    /// Removes an element and everything under it.
    pub fn remove_child(&mut self, element: &str) {
        self.children.remove(element);
    }

    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut out = FieldSet::default();
        let Some(map) = v.as_object() else {
            return out;
        };
        if map.is_empty() {
            out.member = true;
        }
        for (k, child) in map {
            if k == "." {
                out.member = true;
            } else {
                out.insert_child(k.clone(), FieldSet::from_fields_v1(child));
            }
        }
        out
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (k, v) in &self.children {
            map.insert(k.clone(), v.to_fields_v1());
        }
        Value::Object(map)
    }

    /// The member paths in upstream's notation: `.spec.containers[name="a"].image`.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(String::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: String, out: &mut Vec<String>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, v) in &self.children {
            v.collect_paths(format!("{prefix}{}", display_element(k)), out);
        }
    }
}

/// One FieldsV1 element as upstream prints paths.
fn display_element(element: &str) -> String {
    let (kind, rest) = element.split_at(element.find(':').map_or(0, |i| i + 1));
    match kind {
        "f:" => format!(".{rest}"),
        "v:" => format!("[={rest}]"),
        "i:" => format!("[{rest}]"),
        "k:" => {
            let keys: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
            let shown: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("[{}]", shown.join(","))
        }
        _ => element.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}}}
        });
        let set = FieldSet::from_fields_v1(&v);
        assert_eq!(set.to_fields_v1(), v);
        assert_eq!(
            set.paths(),
            vec![
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.containers[name=\"a\"]",
                ".spec.containers[name=\"a\"].image"
            ]
        );
    }

    #[test]
    fn set_algebra() {
        let a = FieldSet::from_fields_v1(&json!({"f:spec": {"f:replicas": {}, "f:paused": {}}}));
        let b = FieldSet::from_fields_v1(&json!({"f:spec": {"f:replicas": {}}, "f:data": {}}));
        assert_eq!(
            a.intersection(&b).to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        let mut rest = a.clone();
        rest.subtract(&b);
        assert_eq!(rest.to_fields_v1(), json!({"f:spec": {"f:paused": {}}}));
        let mut none = b.clone();
        none.subtract(&b);
        assert!(none.is_empty());
        let mut member = FieldSet::from_fields_v1(&json!({"f:spec": {".": {}, "f:a": {}}}));
        member.subtract(&FieldSet::from_fields_v1(&json!({"f:spec": {"f:a": {}}})));
        assert_eq!(member.to_fields_v1(), json!({"f:spec": {}}));
        let mut u = a.clone();
        u.union(&b);
        assert_eq!(u.paths(), vec![".data", ".spec.paused", ".spec.replicas"]);
    }
}
