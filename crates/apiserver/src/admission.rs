//! Admission: a chain of plugins every write passes, after decoding and
//! defaulting and before storage, as upstream's admission chain. Mutating
//! phases run first, in order; then validating phases, in order, in
//! upstream's order of plugins. A plugin warns the client through
//! `crate::warning`.

use async_trait::async_trait;
use kubox_store::Store;
use serde_json::{Value, json};

mod limitranger;
pub mod noderestriction;
mod podsecurity;
mod resourcequota;
mod storageprotection;

use crate::http::Identity;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult, qualified};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// What a write is about.
pub struct Attributes<'a> {
    pub operation: Operation,
    pub resource: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub dry_run: bool,
    /// Who writes; None for the server's own writes.
    pub user: Option<&'a Identity>,
    /// The stored object an update changes.
    pub old: Option<&'a Value>,
}

#[async_trait]
pub trait AdmissionPlugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// May change the object (defaults from policy, injected fields).
    async fn mutate(
        &self,
        _attrs: &Attributes<'_>,
        _obj: &mut Value,
        _store: &dyn Store,
    ) -> ApiResult<()> {
        Ok(())
    }

    /// May refuse the write; sees the object as it will be stored (for a
    /// delete, the object being deleted).
    async fn validate(
        &self,
        _attrs: &Attributes<'_>,
        _obj: &Value,
        _store: &dyn Store,
    ) -> ApiResult<()> {
        Ok(())
    }
}

pub struct Chain(Vec<Box<dyn AdmissionPlugin>>);

impl Default for Chain {
    fn default() -> Self {
        Self(vec![
            Box::new(NamespaceLifecycle),
            Box::new(limitranger::LimitRanger),
            Box::new(crate::serviceaccount::admission::ServiceAccount),
            Box::new(noderestriction::NodeRestriction),
            Box::new(crate::priority::Priority),
            Box::new(DefaultTolerationSeconds),
            Box::new(storageprotection::StorageObjectInUseProtection),
            Box::new(podsecurity::PodSecurity),
            // Last, as upstream: only writes every other plugin allowed are charged.
            Box::new(resourcequota::ResourceQuota),
        ])
    }
}

impl Chain {
    pub async fn mutate(
        &self,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        store: &dyn Store,
    ) -> ApiResult<()> {
        for p in &self.0 {
            p.mutate(attrs, obj, store).await?;
        }
        Ok(())
    }

    pub async fn validate(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        store: &dyn Store,
    ) -> ApiResult<()> {
        for p in &self.0 {
            p.validate(attrs, obj, store).await?;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|p| p.name()).collect()
    }
}

/// Namespaces that exist from the start and can never be deleted.
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// No new objects in a missing or terminating namespace; the system
/// namespaces cannot be deleted.
pub struct NamespaceLifecycle;

#[async_trait]
impl AdmissionPlugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    async fn validate(
        &self,
        attrs: &Attributes<'_>,
        _obj: &Value,
        store: &dyn Store,
    ) -> ApiResult<()> {
        let rt = attrs.resource;
        if attrs.operation == Operation::Delete
            && rt.plural == "namespaces"
            && IMMORTAL_NAMESPACES.contains(&attrs.name)
        {
            return Err(ApiError::forbidden(format!(
                "namespaces {:?} is forbidden: this namespace may not be deleted",
                attrs.name
            )));
        }
        if attrs.operation != Operation::Create {
            return Ok(());
        }
        let Some(ns) = attrs.namespace.filter(|_| rt.namespaced) else {
            return Ok(());
        };
        let (kv, _) = store.get(&format!("/registry/namespaces/{ns}")).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
        let namespace: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if namespace["status"]["phase"] == "Terminating"
            || namespace["metadata"]["deletionTimestamp"].is_string()
        {
            // The cause tells controllers not to report the failure.
            return Err(ApiError::forbidden(format!(
                "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                qualified(rt.group, rt.plural),
                attrs.name,
            ))
            .with_causes(vec![json!({
                "reason": "NamespaceTerminating",
                "message": format!("namespace {ns} is being terminated"),
                "field": "metadata.namespace",
            })]));
        }
        Ok(())
    }
}

/// How long a pod stays on a node that is not ready or unreachable,
/// unless it says otherwise (upstream's --default-*-toleration-seconds).
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Gives every new pod tolerations of the `not-ready` and `unreachable`
/// NoExecute taints for five minutes, unless it tolerates them already, so
/// the node controller evicts its pods five minutes after a node is lost.
pub struct DefaultTolerationSeconds;

#[async_trait]
impl AdmissionPlugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    async fn mutate(
        &self,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        _store: &dyn Store,
    ) -> ApiResult<()> {
        if attrs.operation != Operation::Create
            || attrs.subresource.is_some()
            || !attrs.resource.group.is_empty()
            || attrs.resource.plural != "pods"
        {
            return Ok(());
        }
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        let Some(list) = tolerations.as_array_mut() else {
            return Ok(());
        };
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let tolerated = list.iter().any(|t| {
                let k = t["key"].as_str().unwrap_or_default();
                let e = t["effect"].as_str().unwrap_or_default();
                (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
            });
            if !tolerated {
                list.push(json!({
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
                }));
            }
        }
        Ok(())
    }
}
