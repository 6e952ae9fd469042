//! DeleteOptions and the garbage collector's finalizers: what a DELETE asks
//! for (`propagationPolicy`, the legacy `orphanDependents`, grace period,
//! preconditions), validated as upstream, and which of `orphan` and
//! `foregroundDeletion` the object must carry so the garbage collector
//! orphans or deletes its dependents first (upstream's registry store).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::registry::{GcPolicy, ResourceType};
use crate::status::{ApiError, ApiResult, FieldError};

pub const ORPHAN: &str = "orphan";
pub const FOREGROUND: &str = "foregroundDeletion";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

/// What a DELETE asks for.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub preconditions: Option<Value>,
    pub propagation: Option<Propagation>,
    pub orphan_dependents: Option<bool>,
    pub dry_run: bool,
    /// Who deletes, for admission; None for the server's own deletes.
    pub user: Option<crate::http::Identity>,
}

impl DeleteOptions {
    /// From the request's DeleteOptions body and query parameters (the body wins).
    pub fn parse(body: &Value, query: &HashMap<String, String>) -> ApiResult<Self> {
        let text = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| query.get(key).cloned())
        };
        let propagation = match text("propagationPolicy") {
            None => None,
            Some(p) => Some(match p.as_str() {
                "Orphan" => Propagation::Orphan,
                "Background" => Propagation::Background,
                "Foreground" => Propagation::Foreground,
                _ => {
                    return Err(invalid(FieldError::not_supported(
                        "propagationPolicy",
                        &json!(p),
                        &["Foreground", "Background", "Orphan", "nil"],
                    )));
                }
            }),
        };
        let orphan_dependents = body
            .get("orphanDependents")
            .and_then(Value::as_bool)
            .or_else(|| query.get("orphanDependents").and_then(|v| v.parse().ok()));
        if orphan_dependents.is_some() && propagation.is_some() {
            return Err(invalid(FieldError::invalid(
                "propagationPolicy",
                &json!(text("propagationPolicy")),
                "orphanDependents and deletionPropagation cannot be both set",
            )));
        }
        Ok(Self {
            grace_period: query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or(body["gracePeriodSeconds"].as_i64()),
            preconditions: body.get("preconditions").cloned(),
            propagation,
            orphan_dependents,
            dry_run: query.get("dryRun").is_some_and(|v| v == "All")
                || body["dryRun"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|v| v == "All")),
            user: None,
        })
    }
}

fn invalid(cause: FieldError) -> ApiError {
    ApiError::invalid("meta.k8s.io", "DeleteOptions", "", vec![cause])
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// Whether dependents are to be orphaned: the options say so, else a
/// finalizer already there, else the resource's default.
fn should_orphan(rt: &ResourceType, existing: &[String], opts: &DeleteOptions) -> bool {
    if rt.gc == GcPolicy::Unsupported {
        return false;
    }
    if let Some(orphan) = opts.orphan_dependents {
        return orphan;
    }
    if let Some(p) = opts.propagation {
        return p == Propagation::Orphan;
    }
    for f in existing {
        match f.as_str() {
            ORPHAN => return true,
            FOREGROUND => return false,
            _ => {}
        }
    }
    rt.gc == GcPolicy::OrphanDependents
}

/// Whether dependents are to be deleted before the object.
fn should_delete_dependents(rt: &ResourceType, existing: &[String], opts: &DeleteOptions) -> bool {
    if rt.gc == GcPolicy::Unsupported || opts.orphan_dependents.is_some() {
        return false;
    }
    if let Some(p) = opts.propagation {
        return p == Propagation::Foreground;
    }
    for f in existing {
        match f.as_str() {
            FOREGROUND => return true,
            ORPHAN => return false,
            _ => {}
        }
    }
    false
}

/// The object's finalizers with the garbage collector's set as the
/// options ask, if that changes them.
pub fn gc_finalizers(rt: &ResourceType, obj: &Value, opts: &DeleteOptions) -> Option<Vec<String>> {
    let existing = finalizers(obj);
    let mut new: Vec<String> = existing
        .iter()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .cloned()
        .collect();
    if should_orphan(rt, &existing, opts) {
        new.push(ORPHAN.into());
    }
    if should_delete_dependents(rt, &existing, opts) {
        new.push(FOREGROUND.into());
    }
    let mut a = existing.clone();
    let mut b = new.clone();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    (a != b).then_some(new)
}

/// The GC finalizers a namespace carries after a first DELETE: the
/// options decide, else those already there stay.
pub fn namespace_gc_finalizers(obj: &Value, opts: &DeleteOptions) -> Vec<String> {
    let existing = finalizers(obj);
    let has = |f: &str| existing.iter().any(|e| e == f);
    let orphan = match (opts.orphan_dependents, opts.propagation) {
        (Some(o), _) => o,
        (None, Some(p)) => p == Propagation::Orphan,
        (None, None) => has(ORPHAN),
    };
    let foreground = match (opts.orphan_dependents, opts.propagation) {
        (Some(o), _) => !o,
        (None, Some(p)) => p == Propagation::Foreground,
        (None, None) => has(FOREGROUND),
    };
    let mut new: Vec<String> = existing
        .into_iter()
        .filter(|f| f != ORPHAN && f != FOREGROUND)
        .collect();
    if orphan {
        new.push(ORPHAN.into());
    }
    if foreground {
        new.push(FOREGROUND.into());
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn opts(body: Value) -> ApiResult<DeleteOptions> {
        DeleteOptions::parse(&body, &HashMap::new())
    }

    #[test]
    fn propagation_policies_set_the_garbage_collectors_finalizers() {
        let r = Registry::builtin();
        let deploy = r.get("apps", "v1", "deployments").unwrap();
        let obj = json!({"metadata": {"finalizers": ["example.com/keep"]}});
        let orphan = opts(json!({"propagationPolicy": "Orphan"})).unwrap();
        assert_eq!(
            gc_finalizers(deploy, &obj, &orphan),
            Some(vec!["example.com/keep".to_string(), ORPHAN.to_string()])
        );
        let foreground = opts(json!({"propagationPolicy": "Foreground"})).unwrap();
        assert_eq!(
            gc_finalizers(deploy, &json!({"metadata": {}}), &foreground),
            Some(vec![FOREGROUND.to_string()])
        );
        let background = opts(json!({"propagationPolicy": "Background"})).unwrap();
        assert_eq!(
            gc_finalizers(deploy, &json!({"metadata": {}}), &background),
            None
        );
        // Background removes an orphan finalizer set by an earlier request.
        let orphaning = json!({"metadata": {"finalizers": ["orphan"]}});
        assert_eq!(gc_finalizers(deploy, &orphaning, &background), Some(vec![]));
        let legacy = opts(json!({"orphanDependents": true})).unwrap();
        assert_eq!(
            gc_finalizers(deploy, &json!({"metadata": {}}), &legacy),
            Some(vec![ORPHAN.to_string()])
        );
    }

    #[test]
    fn defaults_per_resource_as_upstream() {
        let r = Registry::builtin();
        let none = DeleteOptions::default();
        let empty = json!({"metadata": {}});
        // ReplicationControllers in v1 and Jobs in batch/v1 orphan by default.
        let rc = r.get("", "v1", "replicationcontrollers").unwrap();
        assert_eq!(
            gc_finalizers(rc, &empty, &none),
            Some(vec![ORPHAN.to_string()])
        );
        let job = r.get("batch", "v1", "jobs").unwrap();
        assert_eq!(
            gc_finalizers(job, &empty, &none),
            Some(vec![ORPHAN.to_string()])
        );
        let rs = r.get("apps", "v1", "replicasets").unwrap();
        assert_eq!(gc_finalizers(rs, &empty, &none), None);
        // Events take no part in garbage collection.
        let events = r.get("", "v1", "events").unwrap();
        let foreground = opts(json!({"propagationPolicy": "Foreground"})).unwrap();
        assert_eq!(gc_finalizers(events, &empty, &foreground), None);
    }

    #[test]
    fn bad_options_are_invalid_as_upstream() {
        let e = opts(json!({"propagationPolicy": "Sideways"})).unwrap_err();
        assert_eq!(e.code, http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.message,
            "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"Sideways\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
        );
        let e = opts(json!({"propagationPolicy": "Orphan", "orphanDependents": true})).unwrap_err();
        assert!(
            e.message
                .ends_with("orphanDependents and deletionPropagation cannot be both set"),
            "{}",
            e.message
        );
        let q: HashMap<String, String> =
            [("propagationPolicy".to_string(), "Foreground".to_string())].into();
        let from_query = DeleteOptions::parse(&json!({}), &q).unwrap();
        assert_eq!(from_query.propagation, Some(Propagation::Foreground));
    }
}
