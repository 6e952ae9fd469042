//! The resource registry: one table of every served resource, built from the
//! k8s-openapi types, that the generic handlers read. Adding a resource is one
//! line here; per-type behaviour lives in `strategy`.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authentication, authorization::v1 as authorization,
    autoscaling::v1 as autoscaling_v1, autoscaling::v2 as autoscaling, batch::v1 as batch,
    certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::conversion::{self, Conversion};
use crate::status::{ApiError, ApiResult};
use crate::strategy::{self, Strategy};

/// Decodes a JSON object as the resource's typed form and encodes it back:
/// checks every field's type, and drops fields the type does not know.
pub type Normalize = fn(&Value) -> Result<Value, serde_json::Error>;

/// Decodes from the borrowed value: the caller still compares the input
/// with the result (unknown fields), and a copy of it would cost as much as
/// the decoding.
fn normalize<K: Serialize + DeserializeOwned>(v: &Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(K::deserialize(v)?)
}

/// Adds the resource's schema (and those it refers to) to an OpenAPI
/// generator, returning a reference to it.
pub type SchemaOf = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

fn schema_of<K: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<K>()
}

/// What deleting an object does to its dependents unless the request
/// says (upstream's DefaultGarbageCollectionPolicy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcPolicy {
    /// Deleted by the garbage collector (in the background).
    DeleteDependents,
    /// Left, with the owner reference removed: the legacy default of
    /// ReplicationControllers in v1 and Jobs in batch/v1.
    OrphanDependents,
    /// No cascading at all (Events).
    Unsupported,
}

pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: String,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub status_subresource: bool,
    pub scale_subresource: bool,
    /// A review (SelfSubjectReview, access reviews): only `create`, answered
    /// from the caller's identity and the authorizer, never stored.
    pub review: bool,
    /// A resource metric (metrics.k8s.io): only `get` and `list`, answered
    /// from metrics-server's latest window in memory, never stored.
    pub metrics: bool,
    pub gc: GcPolicy,
    pub normalize: Normalize,
    pub schema: SchemaOf,
    pub strategy: &'static dyn Strategy,
    /// For a version that is not the one stored: how its objects convert to
    /// and from the stored form (see `conversion`). Objects inside the
    /// generic verbs are always in the stored form, so such a type shares
    /// the stored type's strategy, cache and storage keys.
    pub conversion: Option<&'static Conversion>,
}

impl ResourceType {
    /// An object of this version in the stored form.
    pub fn to_storage(&self, obj: Value, storage: &ResourceType) -> ApiResult<Value> {
        let Some(c) = self.conversion else {
            return Ok(obj);
        };
        let mut out = (c.to_storage)(obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                self.kind, self.version, self.kind
            ))
        })?;
        out["apiVersion"] = serde_json::json!(storage.api_version());
        out["kind"] = serde_json::json!(storage.kind);
        Ok(out)
    }

    /// A stored object in this version's form: the conversion's output
    /// decoded as this version's type, so it has what Go's encoding of it
    /// always has.
    pub fn from_storage(&self, obj: Value) -> Value {
        let Some(c) = self.conversion else {
            return obj;
        };
        let mut out = (c.from_storage)(obj);
        out["apiVersion"] = serde_json::json!(self.api_version());
        out["kind"] = serde_json::json!(self.kind);
        (self.normalize)(&out).unwrap_or(out)
    }

    /// A field selector label of this version as the stored form names it.
    pub fn storage_field_label<'a>(&self, label: &'a str) -> &'a str {
        self.conversion
            .and_then(|c| c.field_labels.iter().find(|(served, _)| *served == label))
            .map_or(label, |(_, stored)| stored)
    }

    /// Whether objects of this type live in the store (and its watch cache).
    pub fn stored(&self) -> bool {
        !self.review && !self.metrics
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key prefix of every object of this type.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.plural)
    }

    /// The storage key of one object; cluster-scoped ones have no namespace part.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/{name}", self.plural),
            _ => format!("/registry/{}/{name}", self.plural),
        }
    }

    /// The prefix under which a namespace's objects (or all, for `None`) live.
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.plural),
            _ => self.key_prefix(),
        }
    }
}

struct Options {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    scale: bool,
    review: bool,
    metrics: bool,
    gc: GcPolicy,
    strategy: &'static dyn Strategy,
    conversion: Option<&'static Conversion>,
}

const PLAIN: Options = Options {
    short_names: &[],
    categories: &[],
    status: false,
    scale: false,
    review: false,
    metrics: false,
    gc: GcPolicy::DeleteDependents,
    strategy: &strategy::Plain,
    conversion: None,
};

/// Create-only resources answered from the request, never stored.
const REVIEW: Options = Options {
    review: true,
    ..PLAIN
};

/// Read-only resource metrics, served from memory.
const METRICS: Options = Options {
    metrics: true,
    ..PLAIN
};

fn resource<K>(o: Options) -> ResourceType
where
    K: Resource + Serialize + DeserializeOwned + schemars::JsonSchema + 'static,
{
    ResourceType {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        plural: K::URL_PATH_SEGMENT,
        singular: K::KIND.to_ascii_lowercase(),
        short_names: o.short_names,
        categories: o.categories,
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        status_subresource: o.status,
        scale_subresource: o.scale,
        review: o.review,
        metrics: o.metrics,
        gc: o.gc,
        normalize: normalize::<K>,
        schema: schema_of::<K>,
        strategy: o.strategy,
        conversion: o.conversion,
    }
}

const ALL: &[&str] = &["all"];

const EVENT: Options = Options {
    short_names: &["ev"],
    gc: GcPolicy::Unsupported,
    ..PLAIN
};

const HPA: Options = Options {
    short_names: &["hpa"],
    categories: ALL,
    status: true,
    strategy: &strategy::Autoscaler,
    ..PLAIN
};

/// Every built-in resource kubox serves.
fn builtins() -> Vec<ResourceType> {
    vec![
        resource::<core::Namespace>(Options {
            short_names: &["ns"],
            status: true,
            strategy: &strategy::Namespace,
            ..PLAIN
        }),
        resource::<core::Pod>(Options {
            short_names: &["po"],
            categories: ALL,
            status: true,
            strategy: &strategy::Pod,
            ..PLAIN
        }),
        resource::<core::Service>(Options {
            short_names: &["svc"],
            categories: ALL,
            status: true,
            strategy: &strategy::Service,
            ..PLAIN
        }),
        resource::<core::Endpoints>(Options {
            short_names: &["ep"],
            ..PLAIN
        }),
        resource::<core::ConfigMap>(Options {
            short_names: &["cm"],
            strategy: &strategy::ConfigMap,
            ..PLAIN
        }),
        resource::<core::Secret>(Options {
            strategy: &strategy::Secret,
            ..PLAIN
        }),
        resource::<core::ServiceAccount>(Options {
            short_names: &["sa"],
            ..PLAIN
        }),
        resource::<core::Event>(EVENT),
        resource::<core::Node>(Options {
            short_names: &["no"],
            status: true,
            ..PLAIN
        }),
        resource::<core::LimitRange>(Options {
            short_names: &["limits"],
            ..PLAIN
        }),
        resource::<core::ResourceQuota>(Options {
            short_names: &["quota"],
            status: true,
            ..PLAIN
        }),
        resource::<core::PersistentVolume>(Options {
            short_names: &["pv"],
            status: true,
            strategy: &strategy::PersistentVolume,
            ..PLAIN
        }),
        resource::<core::PersistentVolumeClaim>(Options {
            short_names: &["pvc"],
            status: true,
            strategy: &strategy::PersistentVolumeClaim,
            ..PLAIN
        }),
        resource::<core::ReplicationController>(Options {
            short_names: &["rc"],
            categories: ALL,
            status: true,
            scale: true,
            gc: GcPolicy::OrphanDependents,
            strategy: &strategy::Workload,
            ..PLAIN
        }),
        resource::<core::PodTemplate>(PLAIN),
        resource::<apps::Deployment>(Options {
            short_names: &["deploy"],
            categories: ALL,
            status: true,
            scale: true,
            strategy: &strategy::Deployment,
            ..PLAIN
        }),
        resource::<apps::ReplicaSet>(Options {
            short_names: &["rs"],
            categories: ALL,
            status: true,
            scale: true,
            strategy: &strategy::Workload,
            ..PLAIN
        }),
        resource::<apps::StatefulSet>(Options {
            short_names: &["sts"],
            categories: ALL,
            status: true,
            scale: true,
            strategy: &strategy::Workload,
            ..PLAIN
        }),
        resource::<apps::DaemonSet>(Options {
            short_names: &["ds"],
            categories: ALL,
            status: true,
            strategy: &strategy::Workload,
            ..PLAIN
        }),
        resource::<apps::ControllerRevision>(PLAIN),
        resource::<batch::Job>(Options {
            categories: ALL,
            status: true,
            gc: GcPolicy::OrphanDependents,
            strategy: &strategy::Workload,
            ..PLAIN
        }),
        resource::<batch::CronJob>(Options {
            short_names: &["cj"],
            categories: ALL,
            status: true,
            strategy: &strategy::Workload,
            ..PLAIN
        }),
        resource::<networking::Ingress>(Options {
            short_names: &["ing"],
            status: true,
            ..PLAIN
        }),
        resource::<networking::IngressClass>(PLAIN),
        resource::<networking::NetworkPolicy>(Options {
            short_names: &["netpol"],
            ..PLAIN
        }),
        resource::<rbac::Role>(PLAIN),
        resource::<rbac::ClusterRole>(PLAIN),
        resource::<rbac::RoleBinding>(Options {
            strategy: &strategy::Binding,
            ..PLAIN
        }),
        resource::<rbac::ClusterRoleBinding>(Options {
            strategy: &strategy::Binding,
            ..PLAIN
        }),
        resource::<coordination::Lease>(PLAIN),
        resource::<certificates::CertificateSigningRequest>(Options {
            short_names: &["csr"],
            status: true,
            ..PLAIN
        }),
        resource::<policy::PodDisruptionBudget>(Options {
            short_names: &["pdb"],
            status: true,
            ..PLAIN
        }),
        resource::<autoscaling::HorizontalPodAutoscaler>(HPA),
        // Served second, so autoscaling/v2 is the group's preferred version.
        resource::<autoscaling_v1::HorizontalPodAutoscaler>(Options {
            conversion: Some(&conversion::HPA_V1),
            ..HPA
        }),
        resource::<discovery::EndpointSlice>(PLAIN),
        resource::<events::Event>(Options {
            conversion: Some(&conversion::EVENT_V1),
            ..EVENT
        }),
        resource::<scheduling::PriorityClass>(Options {
            short_names: &["pc"],
            ..PLAIN
        }),
        resource::<storage::StorageClass>(Options {
            short_names: &["sc"],
            strategy: &strategy::StorageClass,
            ..PLAIN
        }),
        resource::<authentication::SelfSubjectReview>(REVIEW),
        resource::<authorization::SelfSubjectAccessReview>(REVIEW),
        resource::<authorization::SubjectAccessReview>(REVIEW),
        resource::<authorization::LocalSubjectAccessReview>(REVIEW),
        resource::<authorization::SelfSubjectRulesReview>(REVIEW),
        resource::<crate::resource_metrics::NodeMetrics>(METRICS),
        resource::<crate::resource_metrics::PodMetrics>(METRICS),
    ]
}

/// Looks resources up by group, version and plural name.
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
    by_path: HashMap<(String, String, String), Arc<ResourceType>>,
}

impl Registry {
    pub fn builtin() -> Self {
        let types: Vec<Arc<ResourceType>> = builtins().into_iter().map(Arc::new).collect();
        let by_path = types
            .iter()
            .map(|t| {
                (
                    (
                        t.group.to_owned(),
                        t.version.to_owned(),
                        t.plural.to_owned(),
                    ),
                    t.clone(),
                )
            })
            .collect();
        Self { types, by_path }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceType>> {
        self.by_path
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
    }

    pub fn types(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// The type whose form a resource is stored in: itself, or for a
    /// converted version the type of the same resource without conversion.
    pub fn storage_of<'a>(&'a self, rt: &'a ResourceType) -> &'a ResourceType {
        if rt.conversion.is_none() {
            return rt;
        }
        self.types
            .iter()
            .find(|t| t.plural == rt.plural && t.conversion.is_none() && t.stored())
            .map_or(rt, |t| &**t)
    }

    /// The resources one group-version serves.
    pub fn group_version(&self, group: &str, version: &str) -> Vec<&Arc<ResourceType>> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .collect()
    }

    /// Served groups in order of first appearance, each with its versions.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for t in &self.types {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version),
                Some(_) => {}
                None => groups.push((t.group, vec![t.version])),
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_k8s_openapi() {
        let r = Registry::builtin();
        let deploy = r.get("apps", "v1", "deployments").unwrap();
        assert_eq!((deploy.kind, deploy.namespaced), ("Deployment", true));
        let ns = r.get("", "v1", "namespaces").unwrap();
        assert!(!ns.namespaced);
        assert_eq!(ns.key(None, "default"), "/registry/namespaces/default");
        assert_eq!(deploy.key(Some("a"), "b"), "/registry/deployments/a/b");
    }

    #[test]
    fn normalize_rejects_wrong_types_and_drops_unknown_fields() {
        let r = Registry::builtin();
        let cm = r.get("", "v1", "configmaps").unwrap();
        let ok = (cm.normalize)(&serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}, "bogus": 1})).unwrap();
        assert!(ok.get("bogus").is_none());
        assert!(
            (cm.normalize)(&serde_json::json!({"metadata": {"name": "a"}, "data": {"k": 1}}))
                .is_err()
        );
    }

    #[test]
    fn converted_versions_are_stored_as_another() {
        let r = Registry::builtin();
        for (group, version, plural, stored) in [
            (
                "autoscaling",
                "v1",
                "horizontalpodautoscalers",
                "autoscaling/v2",
            ),
            ("events.k8s.io", "v1", "events", "v1"),
        ] {
            let rt = r.get(group, version, plural).unwrap();
            assert_eq!(r.storage_of(rt).api_version(), stored);
        }
    }

    #[test]
    fn every_stored_plural_is_unique() {
        let r = Registry::builtin();
        let stored: Vec<_> = r
            .types()
            .iter()
            .filter(|t| t.stored() && t.conversion.is_none())
            .collect();
        let mut plurals: Vec<_> = stored.iter().map(|t| t.plural).collect();
        plurals.sort();
        plurals.dedup();
        assert_eq!(plurals.len(), stored.len());
    }
}
