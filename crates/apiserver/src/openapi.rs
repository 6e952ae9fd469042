//! OpenAPI v3 documents: an index of group-versions and, per group-version,
//! the paths of every served resource with upstream's operation extensions
//! and query parameters. kubectl reads them to learn that the server
//! validates fields itself (`fieldValidation`), instead of downloading
//! schemas to validate client-side.
//!
//! The component schemas are k8s-openapi's (upstream's definitions, with
//! their descriptions), each kind marked with its group-version-kind, which
//! is what `kubectl explain` reads.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::discovery::KUBERNETES_MINOR;
use crate::registry::{Registry, ResourceType};

/// A group-version's path in the index: `api/v1` or `apis/apps/v1`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Upstream's definition name: `io.k8s.api.apps.v1.Deployment`.
pub fn definition_name(rt: &ResourceType) -> String {
    let short = if rt.group.is_empty() {
        "core"
    } else {
        rt.group.split('.').next().unwrap_or(rt.group)
    };
    format!("io.k8s.api.{short}.{}.{}", rt.version, rt.kind)
}

fn query_param(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_param(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict.",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean"),
        ("continue", "string"),
        ("fieldSelector", "string"),
        ("labelSelector", "string"),
        ("limit", "integer"),
        ("resourceVersion", "string"),
        ("resourceVersionMatch", "string"),
        ("sendInitialEvents", "boolean"),
        ("timeoutSeconds", "integer"),
        ("watch", "boolean"),
    ]
    .iter()
    .map(|(n, t)| query_param(n, t, ""))
    .collect()
}

fn operation(
    rt: &ResourceType,
    action: &str,
    verb: &str,
    params: Vec<Value>,
    body_types: &[&str],
    kind: &str,
) -> Value {
    let schema = json!({"$ref": format!("#/components/schemas/{}", definition_name(rt))});
    let mut op = json!({
        "operationId": format!("{verb}{}", rt.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": kind},
    });
    if !body_types.is_empty() {
        let content: serde_json::Map<String, Value> = body_types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": schema})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// Patch media types declared on PATCH operations. The server accepts
/// strategic merge patches too, but declaring them makes kubectl compute its
/// patches from these documents' field schemas, which lack upstream's patch
/// merge keys; undeclared, kubectl uses its compiled-in patch metadata for
/// built-in types (upstream's own merge keys).
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
];

fn paths(rt: &ResourceType) -> BTreeMap<String, Value> {
    let base = format!("/{}", gv_path(rt.group, rt.version));
    let scoped = if rt.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{base}/{}", rt.plural)
    };
    let mut params = write_params();
    params.push(query_param(
        "force",
        "boolean",
        "Force is going to \"force\" Apply requests.",
    ));
    let patch_params = params;
    let mut out = BTreeMap::new();
    if rt.review {
        out.insert(scoped, json!({"post": operation(rt, "post", "create", write_params(), &["application/json", "application/yaml"], rt.kind)}));
        return out;
    }
    if rt.metrics {
        out.insert(
            scoped.clone(),
            json!({"get": operation(rt, "list", "list", list_params(), &[], rt.kind)}),
        );
        out.insert(
            format!("{scoped}/{{name}}"),
            json!({"get": operation(rt, "get", "read", vec![], &[], rt.kind)}),
        );
        return out;
    }
    out.insert(
        scoped.clone(),
        json!({
            "get": operation(rt, "list", "list", list_params(), &[], rt.kind),
            "post": operation(rt, "post", "create", write_params(), &["application/json", "application/yaml"], rt.kind),
            "delete": operation(rt, "deletecollection", "deletecollection", list_params(), &[], rt.kind),
        }),
    );
    let item = json!({
        "get": operation(rt, "get", "read", vec![], &[], rt.kind),
        "put": operation(rt, "put", "replace", write_params(), &["application/json", "application/yaml"], rt.kind),
        "patch": operation(rt, "patch", "patch", patch_params.clone(), PATCH_TYPES, rt.kind),
        "delete": operation(rt, "delete", "delete", vec![query_param("gracePeriodSeconds", "integer", ""), query_param("propagationPolicy", "string", "")], &[], rt.kind),
    });
    out.insert(format!("{scoped}/{{name}}"), item);
    if rt.status_subresource {
        out.insert(
            format!("{scoped}/{{name}}/status"),
            json!({
                "get": operation(rt, "get", "read", vec![], &[], rt.kind),
                "put": operation(rt, "put", "replace", write_params(), &["application/json"], rt.kind),
                "patch": operation(rt, "patch", "patch", patch_params, PATCH_TYPES, rt.kind),
            }),
        );
    }
    if rt.namespaced {
        out.insert(
            format!("{base}/{}", rt.plural),
            json!({"get": operation(rt, "list", "list", list_params(), &[], rt.kind)}),
        );
    }
    out
}

/// The document for one group-version, or None if it is not served.
pub(crate) fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut all_paths = BTreeMap::new();
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    for t in &types {
        all_paths.extend(paths(t));
        (t.schema)(&mut generator);
    }
    let mut schemas = generator.take_definitions(true);
    for t in &types {
        if let Some(schema) = schemas.get_mut(&definition_name(t)) {
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{KUBERNETES_MINOR}.0")},
        "paths": all_paths,
        "components": {"schemas": schemas},
    }))
}

/// Every group-version's document, serialised once.
pub struct Documents {
    by_path: BTreeMap<String, (String, Vec<u8>)>,
}

impl Documents {
    fn build(registry: &Registry) -> Self {
        let mut by_path = BTreeMap::new();
        for (group, versions) in registry.groups() {
            for version in versions {
                if let Some(doc) = document(registry, group, version) {
                    let bytes = serde_json::to_vec(&doc).expect("a JSON value serialises");
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut hasher);
                    by_path.insert(
                        gv_path(group, version),
                        (format!("{:016X}", hasher.finish()), bytes),
                    );
                }
            }
        }
        Self { by_path }
    }

    /// Built on first use: the documents only change with the registry.
    pub fn get(registry: &Registry) -> &'static Documents {
        static DOCS: OnceLock<Documents> = OnceLock::new();
        DOCS.get_or_init(|| Self::build(registry))
    }

    /// `/openapi/v3`: where each group-version's document is.
    pub fn index(&self) -> Value {
        let paths: serde_json::Map<String, Value> = self
            .by_path
            .iter()
            .map(|(p, (hash, _))| {
                (
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// `/openapi/v3/{group-version path}`.
    pub fn document(&self, path: &str) -> Option<&[u8]> {
        self.by_path.get(path).map(|(_, bytes)| bytes.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_patch_declares_field_validation() {
        let registry = Registry::builtin();
        let docs = Documents::build(&registry);
        for rt in registry.types().iter().filter(|t| t.stored()) {
            let doc: Value =
                serde_json::from_slice(docs.document(&gv_path(rt.group, rt.version)).unwrap())
                    .unwrap();
            let found = doc["paths"].as_object().unwrap().values().any(|p| {
                p["patch"]["x-kubernetes-group-version-kind"]["kind"] == rt.kind
                    && p["patch"]["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|q| q["name"] == "fieldValidation")
            });
            assert!(found, "{} has no PATCH with fieldValidation", rt.plural);
            let schema = &doc["components"]["schemas"][definition_name(rt)];
            assert_eq!(
                schema["x-kubernetes-group-version-kind"][0]["kind"], rt.kind,
                "{}",
                rt.plural
            );
        }
        let index = docs.index();
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        assert_eq!(
            definition_name(
                registry
                    .get("rbac.authorization.k8s.io", "v1", "roles")
                    .unwrap()
            ),
            "io.k8s.api.rbac.v1.Role"
        );
    }
}
