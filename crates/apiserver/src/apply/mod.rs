//! Field ownership (`metadata.managedFields`) and server-side apply, as
//! upstream's field manager: every write records which manager set which
//! fields (an `Update` entry, or an `Apply` entry holding exactly the
//! fields of the manager's last applied configuration); an apply that
//! changes a field another manager owns is a conflict unless forced; a
//! field an applier stops applying goes when no other manager owns it.

mod fieldset;
mod merge;

use std::sync::LazyLock;

use serde_json::{Value, json};

use fieldset::FieldSet;

/// Upstream's limit on a field manager's name.
pub const MAX_MANAGER_LEN: usize = 128;

/// The manager a request writes as: `fieldManager`, else the user agent's
/// product name (`kubectl/v1.32.0 (linux/amd64)` → `kubectl`), as upstream.
pub fn manager_name(field_manager: Option<&str>, user_agent: &str) -> String {
    match field_manager.filter(|m| !m.is_empty()) {
        Some(m) => m.to_owned(),
        None => user_agent
            .split('/')
            .next()
            .unwrap_or_default()
            .chars()
            .take(MAX_MANAGER_LEN)
            .collect(),
    }
}

/// Who writes, and through which path of the object.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: String,
    pub subresource: Option<&'a str>,
    /// Whether the resource has a status subresource, so the main resource
    /// does not own status and the status subresource owns nothing else.
    pub status_split: bool,
    pub now: &'a str,
}

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn new(w: &Writer, operation: &str, fields: FieldSet) -> Self {
        Self {
            manager: w.manager.to_owned(),
            operation: operation.to_owned(),
            api_version: w.api_version.clone(),
            time: Some(w.now.to_owned()),
            subresource: w.subresource.map(str::to_owned),
            fields,
        }
    }

    /// Upstream's manager identity: appliers are one manager whatever
    /// version they apply; updaters are one per version.
    fn is(&self, w: &Writer, operation: &str) -> bool {
        self.manager == w.manager
            && self.operation == operation
            && self.subresource.as_deref() == w.subresource
            && (operation == APPLY || self.api_version == w.api_version)
    }

    /// How conflict messages name the manager.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn sort_key(&self) -> (String, String, String, String) {
        (
            self.manager.clone(),
            self.operation.clone(),
            self.api_version.clone(),
            self.subresource.clone().unwrap_or_default(),
        )
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: text(e, "manager").unwrap_or_default(),
            operation: text(e, "operation").unwrap_or_else(|| UPDATE.into()),
            api_version: text(e, "apiVersion").unwrap_or_default(),
            time: text(e, "time"),
            subresource: text(e, "subresource").filter(|s| !s.is_empty()),
            fields: FieldSet::from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Writes the entries back, without empty ones, in upstream's order:
/// appliers first, then by time, manager, version and subresource.
fn set_entries(obj: &mut Value, mut list: Vec<Entry>) {
    list.retain(|e| !e.fields.is_empty());
    list.sort_by(|a, b| {
        (&a.operation, &a.time, a.sort_key()).cmp(&(&b.operation, &b.time, b.sort_key()))
    });
    let encoded: Vec<Value> = list
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_fields_v1(),
            });
            if let Some(t) = &e.time {
                v["time"] = json!(t);
            }
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    let Some(meta) = obj["metadata"].as_object_mut() else {
        return;
    };
    if encoded.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(encoded));
    }
}

/// Fields nobody owns: identity, and metadata the server sets.
fn tracked(mut set: FieldSet) -> FieldSet {
    static UNTRACKED: LazyLock<FieldSet> = LazyLock::new(|| {
        FieldSet::from_fields_v1(&json!({
            "f:apiVersion": {},
            "f:kind": {},
            "f:metadata": {
                "f:name": {}, "f:namespace": {}, "f:uid": {}, "f:resourceVersion": {},
                "f:generation": {}, "f:creationTimestamp": {}, "f:selfLink": {},
                "f:managedFields": {}, "f:deletionTimestamp": {}, "f:deletionGracePeriodSeconds": {},
            },
        }))
    });
    set.subtract(&UNTRACKED);
    set
}

/// The part of an applied configuration the request can own.
fn in_scope(mut set: FieldSet, w: &Writer) -> FieldSet {
    match w.subresource {
        Some("status") => {
            let mut kept = FieldSet::default();
            for el in ["f:status", "f:metadata"] {
                if let Some(s) = set.child(el) {
                    kept.insert_child(el.into(), s.clone());
                }
            }
            kept
        }
        None if w.status_split => {
            set.remove_child("f:status");
            set
        }
        _ => set,
    }
}

/// An object (in the writer's version) as another version of its resource
/// shows it; None where that version is not served. Each manager's fields
/// are paths of the version it wrote in, so what a write changed is
/// compared in that version, as upstream's field manager converts.
pub type Views<'a> = &'a dyn Fn(&str, &Value) -> Option<Value>;

/// The fields changed and removed from `before` to `after` in the paths of
/// `version`; `own` are those in the writer's version.
fn changes_in(
    version: &str,
    w: &Writer,
    (before, after): (&Value, &Value),
    views: Views,
    own: &(FieldSet, FieldSet),
) -> (FieldSet, FieldSet) {
    if version == w.api_version {
        return own.clone();
    }
    match (views(version, before), views(version, after)) {
        (Some(b), Some(a)) => {
            let c = merge::compare(&b, &a);
            (tracked(c.changed), tracked(c.removed))
        }
        _ => own.clone(),
    }
}

/// Records a create or update: the writer's Update entry gains every field
/// it changed, which other managers lose. `new`'s own managedFields, if the
/// client sent some, are the starting point; otherwise the stored ones.
pub fn track_update(old: Option<&Value>, new: &mut Value, w: &Writer, views: Views) {
    let mut list = if new["metadata"].get("managedFields").is_some() {
        entries(new)
    } else {
        old.map(entries).unwrap_or_default()
    };
    let empty = json!({});
    let before = old.unwrap_or(&empty);
    let c = merge::compare(before, new);
    let changed = tracked(c.changed);
    let own = (changed.clone(), tracked(c.removed));
    for e in &mut list {
        let (changed, removed) = changes_in(&e.api_version, w, (before, new), views, &own);
        e.fields.subtract(&removed);
        if !e.is(w, UPDATE) {
            e.fields.subtract(&changed);
        }
    }
    if !changed.is_empty() {
        match list.iter_mut().find(|e| e.is(w, UPDATE)) {
            Some(e) => {
                e.fields.union(&changed);
                e.time = Some(w.now.to_owned());
            }
            None => list.push(Entry::new(w, UPDATE, changed)),
        }
    }
    set_entries(new, list);
}

/// Records a write of the scale subresource as upstream's scale handler
/// maps it onto the workload: the writer's `subresource: scale` Update entry
/// owns `.spec.replicas` in the workload's apiVersion, which other managers
/// lose. Its time is the one the workload's entry for that manager already
/// had, none at first, as upstream takes entries' times from the parent.
pub fn track_scale(old: &Value, new: &mut Value, w: &Writer, views: Views) {
    let before = entries(old)
        .into_iter()
        .find(|e| e.is(w, UPDATE))
        .and_then(|e| e.time);
    track_update(Some(old), new, w, views);
    let mut list = entries(new);
    if let Some(e) = list.iter_mut().find(|e| e.is(w, UPDATE)) {
        e.time = before;
    }
    set_entries(new, list);
}

/// Apply conflicts: fields the configuration changes that other managers own.
#[derive(Debug)]
pub struct Conflicts(Vec<(Entry, String)>);

impl Conflicts {
    /// Upstream's message: `Apply failed with 1 conflict: conflict with
    /// "kubectl-client-side-apply" using apps/v1: .spec.replicas`.
    pub fn message(&self) -> String {
        if let [(e, path)] = self.0.as_slice() {
            return format!(
                "Apply failed with 1 conflict: conflict with {}: {path}",
                e.describe()
            );
        }
        let mut lines = Vec::new();
        let mut last = None;
        for (e, path) in &self.0 {
            if last != Some(e.sort_key()) {
                lines.push(format!("conflicts with {}:", e.describe()));
                last = Some(e.sort_key());
            }
            lines.push(format!("- {path}"));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            self.0.len(),
            lines.join("\n")
        )
    }

    /// The `details.causes` of the 409.
    pub fn causes(&self) -> Vec<Value> {
        self.0
            .iter()
            .map(|(e, path)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {}", e.describe()),
                    "field": path,
                })
            })
            .collect()
    }
}

/// Applies a configuration to the live object (None: the object is being
/// created) and returns the object to write, managedFields included.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    w: &Writer,
    force: bool,
    views: Views,
) -> Result<Value, Conflicts> {
    let empty = json!({});
    let mut list = live.map(entries).unwrap_or_default();
    // Neither object's managedFields count as fields (compare and
    // object_set skip them), and the merged object's are written anew below.
    let live = live.unwrap_or(&empty);
    let config_set = in_scope(tracked(merge::object_set(config, "")), w);
    let mut merged = live.clone();
    merge::merge(&mut merged, config, "");
    // What this applier applied last time and applies no more goes, unless
    // another manager owns it too.
    if let Some(previous) = list.iter().find(|e| e.is(w, APPLY)) {
        let mut others = FieldSet::default();
        for e in list.iter().filter(|e| !e.is(w, APPLY)) {
            others.union(&e.fields);
        }
        let mut dropped = previous.fields.clone();
        dropped.subtract(&config_set);
        dropped.subtract(&others);
        merge::prune(&mut merged, &dropped, "");
    }
    let c = merge::compare(live, &merged);
    let changed = tracked(c.changed);
    let removed = tracked(c.removed);
    let own = (changed.clone(), removed.clone());
    let mut conflicts = Vec::new();
    for e in list.iter().filter(|e| !e.is(w, APPLY)) {
        let (changed, _) = changes_in(&e.api_version, w, (live, &merged), views, &own);
        for path in e.fields.intersection(&changed).paths() {
            conflicts.push((e.clone(), path));
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by_key(|(e, _)| e.sort_key());
        return Err(Conflicts(conflicts));
    }
    for e in &mut list {
        let (changed, removed) = changes_in(&e.api_version, w, (live, &merged), views, &own);
        e.fields.subtract(&removed);
        if !e.is(w, APPLY) {
            e.fields.subtract(&changed);
        }
    }
    let object_changed = !changed.is_empty() || !removed.is_empty();
    match list.iter_mut().find(|e| e.is(w, APPLY)) {
        Some(e) => {
            if object_changed || e.fields != config_set || e.api_version != w.api_version {
                e.time = Some(w.now.to_owned());
            }
            e.fields = config_set;
            e.api_version = w.api_version.clone();
        }
        None => list.push(Entry::new(w, APPLY, config_set)),
    }
    if !merged["metadata"].is_object() {
        merged["metadata"] = json!({});
    }
    set_entries(&mut merged, list);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_views(_: &str, _: &Value) -> Option<Value> {
        None
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1".into(),
            subresource: None,
            status_split: true,
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        entries(obj)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    fn config(replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "paused": false}})
    }

    #[test]
    fn updates_record_what_they_change() {
        let mut created = config(1);
        created["metadata"]["uid"] = json!("u");
        track_update(None, &mut created, &writer("kubectl-create"), &no_views);
        assert_eq!(
            created["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:paused": {}, "f:replicas": {}}})
        );
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        track_update(
            Some(&created),
            &mut scaled,
            &writer("kubectl-scale"),
            &no_views,
        );
        assert_eq!(
            managers(&scaled),
            vec![
                ("kubectl-create".into(), "Update".into()),
                ("kubectl-scale".into(), "Update".into())
            ]
        );
        let scale = &entries(&scaled)[1];
        assert_eq!(scale.fields.paths(), vec![".spec.replicas"]);
        assert!(
            !entries(&scaled)[0]
                .fields
                .paths()
                .contains(&".spec.replicas".to_owned())
        );
    }

    #[test]
    fn apply_conflicts_with_other_owners_unless_forced() {
        let mut live = config(1);
        track_update(
            None,
            &mut live,
            &writer("kubectl-client-side-apply"),
            &no_views,
        );
        // Same values: no conflict, shared ownership.
        let shared = apply(
            Some(&live),
            &config(1),
            &writer("kubectl"),
            false,
            &no_views,
        )
        .unwrap();
        assert_eq!(managers(&shared)[0], ("kubectl".into(), "Apply".into()));
        let err = apply(
            Some(&shared),
            &config(2),
            &writer("kubectl"),
            false,
            &no_views,
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas"#
        );
        assert_eq!(err.causes()[0]["field"], ".spec.replicas");
        let mut two = config(2);
        two["spec"]["paused"] = json!(true);
        let err = apply(Some(&shared), &two, &writer("kubectl"), false, &no_views).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n- .spec.paused\n- .spec.replicas"
        );
        let forced = apply(
            Some(&shared),
            &config(2),
            &writer("kubectl"),
            true,
            &no_views,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let csa = entries(&forced)
            .into_iter()
            .find(|e| e.manager == "kubectl-client-side-apply")
            .unwrap();
        assert!(!csa.fields.paths().contains(&".spec.replicas".to_owned()));
    }

    #[test]
    fn fields_no_longer_applied_go_unless_owned_elsewhere() {
        let first = apply(None, &config(1), &writer("a"), false, &no_views).unwrap();
        let both = apply(Some(&first), &config(1), &writer("b"), false, &no_views).unwrap();
        let mut smaller = config(1);
        smaller["spec"].as_object_mut().unwrap().remove("paused");
        smaller["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        // "b" still applies paused and the label: they stay.
        let kept = apply(Some(&both), &smaller, &writer("a"), false, &no_views).unwrap();
        assert_eq!(kept["spec"]["paused"], false);
        assert_eq!(kept["metadata"]["labels"]["app"], "web");
        // Once "b" stops too, they go.
        let gone = apply(Some(&kept), &smaller, &writer("b"), false, &no_views).unwrap();
        assert!(gone["spec"].get("paused").is_none());
        assert_eq!(gone["spec"]["replicas"], 1);
    }

    #[test]
    fn status_belongs_to_the_status_subresource() {
        let mut cfg = config(1);
        cfg["status"] = json!({"replicas": 1});
        let obj = apply(None, &cfg, &writer("a"), false, &no_views).unwrap();
        assert!(entries(&obj)[0].fields.child("f:status").is_none());
        let status_writer = Writer {
            subresource: Some("status"),
            ..writer("a")
        };
        let obj = apply(Some(&obj), &cfg, &status_writer, false, &no_views).unwrap();
        let status = entries(&obj)
            .into_iter()
            .find(|e| e.subresource.is_some())
            .unwrap();
        assert_eq!(
            status.fields.paths(),
            vec![".metadata.labels.app", ".status.replicas"]
        );
    }

    #[test]
    fn manager_from_user_agent() {
        assert_eq!(
            manager_name(None, "kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(manager_name(Some("helm"), "kubectl/v1"), "helm");
    }

    /// `apps/v2` here names `.spec.replicas` `.spec.size`.
    fn as_v2(version: &str, obj: &Value) -> Option<Value> {
        (version == "apps/v2").then(|| {
            let mut v = obj.clone();
            if let Some(n) = v["spec"].as_object_mut().and_then(|s| s.remove("replicas")) {
                v["spec"]["size"] = n;
            }
            v
        })
    }

    #[test]
    fn conflicts_are_found_in_the_version_each_manager_wrote() {
        let mut live = config(1);
        let v2 = Writer {
            api_version: "apps/v2".into(),
            ..writer("autoscaler")
        };
        let mut v2_view = as_v2("apps/v2", &live).unwrap();
        track_update(None, &mut v2_view, &v2, &as_v2);
        live["metadata"]["managedFields"] = v2_view["metadata"]["managedFields"].clone();
        let err = apply(Some(&live), &config(2), &writer("kubectl"), false, &as_v2).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"autoscaler\" using apps/v2: .spec.size"
        );
        let forced = apply(Some(&live), &config(2), &writer("kubectl"), true, &as_v2).unwrap();
        let autoscaler = entries(&forced)
            .into_iter()
            .find(|e| e.manager == "autoscaler")
            .unwrap();
        assert_eq!(autoscaler.api_version, "apps/v2");
        assert!(!autoscaler.fields.paths().contains(&".spec.size".to_owned()));
    }
}
