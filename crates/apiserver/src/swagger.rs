//! `/openapi/v2`: one Swagger 2.0 document of every served resource, made
//! from the OpenAPI v3 documents (the same paths, operations and
//! k8s-openapi schemas), with upstream's list extensions on array fields:
//! `x-kubernetes-patch-merge-key` / `-patch-strategy` and
//! `x-kubernetes-list-type` / `-list-map-keys`, from the merge keys
//! strategic merge patch and server-side apply use.
//!
//! Served as JSON only: client-go asks for protobuf and falls back when
//! refused, so anything else gets 406.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::openapi;
use crate::patch::{ListStrategy, list_strategy};
use crate::registry::Registry;

const V3_REFS: &str = "#/components/schemas/";
const V2_REFS: &str = "#/definitions/";

/// A v3 operation in v2 form: query parameters typed inline, the body a
/// `body` parameter, the response schema directly under its code.
fn operation(op: &Value) -> Value {
    let mut out = op.clone();
    let mut params: Vec<Value> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            json!({"name": p["name"], "in": p["in"], "description": p["description"],
                   "type": p["schema"]["type"], "uniqueItems": true})
        })
        .collect();
    let map = out.as_object_mut().expect("an operation is an object");
    if let Some(content) = op["requestBody"]["content"].as_object() {
        let schema = content.values().next().map(|c| c["schema"].clone());
        params.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
        map.insert("consumes".into(), json!(content.keys().collect::<Vec<_>>()));
        map.remove("requestBody");
    }
    map.insert("parameters".into(), json!(params));
    map.insert("produces".into(), json!(["application/json"]));
    map.insert(
        "responses".into(),
        json!({"200": {"description": "OK", "schema": op["responses"]["200"]["content"]["application/json"]["schema"]}}),
    );
    out
}

fn reference(schema: &Value) -> Option<&str> {
    schema["$ref"]
        .as_str()
        .or_else(|| schema["allOf"][0]["$ref"].as_str())
        .and_then(|r| r.strip_prefix(V2_REFS))
}

/// Marks the array fields reachable from definition `name` (at `path`, the
/// dotted field path from the object's root) with their list semantics.
/// Where two paths reach one definition, a merge key wins over atomic.
fn annotate(defs: &mut Map<String, Value>, name: &str, path: &str, depth: usize) {
    let Some(props) = defs
        .get(name)
        .and_then(|d| d["properties"].as_object())
        .cloned()
    else {
        return;
    };
    if depth > 12 {
        return;
    }
    for (field, prop) in &props {
        let child = if path.is_empty() {
            field.clone()
        } else {
            format!("{path}.{field}")
        };
        if prop["type"] == "array" {
            let ext = match list_strategy(path, field) {
                ListStrategy::MergeByKey(key) => {
                    let mut keys = vec![key];
                    if matches!(key, "containerPort" | "port") {
                        keys.push("protocol");
                    }
                    json!({"x-kubernetes-patch-merge-key": key, "x-kubernetes-patch-strategy": "merge",
                           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": keys})
                }
                ListStrategy::MergePrimitive => {
                    json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "set"})
                }
                ListStrategy::Replace => json!({"x-kubernetes-list-type": "atomic"}),
            };
            if let Some(target) = defs
                .get_mut(name)
                .and_then(|d| d["properties"][field].as_object_mut())
                && !target.contains_key("x-kubernetes-patch-merge-key")
            {
                for (k, v) in ext.as_object().expect("an object literal") {
                    target.insert(k.clone(), v.clone());
                }
            }
            if let Some(item) = reference(&prop["items"]) {
                annotate(defs, item, &child, depth + 1);
            }
        } else if let Some(r) = reference(prop) {
            annotate(defs, r, &child, depth + 1);
        }
    }
}

fn build(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut defs = Map::new();
    let mut roots = Vec::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let Some(doc) = openapi::document(registry, group, version) else {
                continue;
            };
            let doc: Value = serde_json::from_str(&doc.to_string().replace(V3_REFS, V2_REFS))
                .expect("a JSON document stays JSON");
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                let ops: Map<String, Value> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(verb, op)| (verb.clone(), operation(op)))
                    .collect();
                paths.insert(path.clone(), Value::Object(ops));
            }
            for (name, schema) in doc["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if schema.get("x-kubernetes-group-version-kind").is_some() {
                    roots.push(name.clone());
                }
                defs.insert(name.clone(), schema.clone());
            }
        }
    }
    for root in roots {
        annotate(&mut defs, &root, "", 0);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "definitions": defs,
    })
}

/// The document, serialised once: it only changes with the registry.
pub fn document(registry: &Registry) -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_vec(&build(registry)).expect("a JSON value serialises"))
}

/// Whether an Accept header admits the JSON document.
pub fn accepts_json(accept: &str) -> bool {
    accept.is_empty()
        || accept.split(',').any(|t| {
            matches!(
                t.split(';').next().unwrap_or_default().trim(),
                "application/json" | "application/*" | "*/*"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_document_has_kinds_and_list_extensions() {
        let doc = build(&Registry::builtin());
        assert_eq!(doc["swagger"], "2.0");
        let defs = &doc["definitions"];
        assert_eq!(
            defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let containers = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        let ports = &defs["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let args = &defs["io.k8s.api.core.v1.Container"]["properties"]["args"];
        assert_eq!(args["x-kubernetes-list-type"], "atomic");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-action"], "patch");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["in"] == "body")
        );
        assert!(!doc.to_string().contains(V3_REFS));
        assert!(accepts_json("application/json"));
        assert!(!accepts_json(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
    }
}
