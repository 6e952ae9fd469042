//! Admission: a chain of plugins every write passes, after decoding and
//! defaulting and before storage, as upstream's admission chain. Mutating
//! phases run first, in order; then validating phases, in order, in
//! upstream's order of plugins. A plugin warns the client through
//! `crate::warning`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use kubox_store::{RangeRequest, Store};
use serde_json::{Value, json};

mod limitranger;
pub mod noderestriction;
mod podsecurity;
mod resourcequota;
mod storageprotection;

use crate::cache::Cache;
use crate::http::Identity;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult, qualified};
use crate::written::OwnWrites;

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

/// What plugins read, as upstream's read their listers: objects from the
/// server's watch caches, once a cache holds every write of its resource
/// this server made; from the store while a cache is not loaded or does
/// not catch up, and for an object the cache lacks (upstream's live
/// lookup: one written through another server a moment ago). `store` is
/// for what must be exact: quota usage, compared and swapped.
pub struct Reads<'a> {
    pub store: &'a dyn Store,
    caches: &'a HashMap<&'static str, Arc<Cache>>,
    written: &'a OwnWrites,
}

impl<'a> Reads<'a> {
    pub fn new(
        store: &'a dyn Store,
        caches: &'a HashMap<&'static str, Arc<Cache>>,
        written: &'a OwnWrites,
    ) -> Self {
        Self {
            store,
            caches,
            written,
        }
    }

    /// The cache of `plural`, if it holds what this server wrote of it.
    async fn fresh(&self, plural: &str) -> Option<&Cache> {
        let cache = self.caches.get(plural)?;
        let revision = cache.revision();
        let wanted = self.written.under(cache.prefix());
        let fresh = revision >= 0 && (revision >= wanted || cache.wait_for(wanted).await.is_ok());
        fresh.then_some(&**cache)
    }

    /// The object of `plural` stored at `key`.
    pub async fn get(&self, plural: &str, key: &str) -> ApiResult<Option<Value>> {
        if let Some(cached) = self.fresh(plural).await.and_then(|c| c.get(key)) {
            return Ok(Some(cached.object()));
        }
        let (kv, _) = self.store.get(key).await?;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Whether any object of `plural` is under `prefix`; none is decoded.
    pub async fn any(&self, plural: &str, prefix: &str) -> ApiResult<bool> {
        if let Some(cache) = self.fresh(plural).await {
            return Ok(!cache.list(prefix, &|_| true).0.is_empty());
        }
        let counted = self
            .store
            .range(RangeRequest {
                count_only: true,
                ..RangeRequest::prefix(prefix.to_owned())
            })
            .await?;
        Ok(counted.count > 0)
    }

    /// The objects of `plural` under `prefix`, in key order.
    pub async fn list(&self, plural: &str, prefix: &str) -> ApiResult<Vec<Value>> {
        if let Some(cache) = self.fresh(plural).await {
            let (items, _) = cache.list(prefix, &|_| true);
            return Ok(items.iter().map(|o| o.object()).collect());
        }
        let listed = self
            .store
            .range(RangeRequest::prefix(prefix.to_owned()))
            .await?;
        Ok(listed
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }
}

#[async_trait]
pub trait AdmissionPlugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// May change the object (defaults from policy, injected fields).
    async fn mutate(
        &self,
        _attrs: &Attributes<'_>,
        _obj: &mut Value,
        _reads: &Reads<'_>,
    ) -> ApiResult<()> {
        Ok(())
    }

    /// May refuse the write; sees the object as it will be stored (for a
    /// delete, the object being deleted).
    async fn validate(
        &self,
        _attrs: &Attributes<'_>,
        _obj: &Value,
        _reads: &Reads<'_>,
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
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        for p in &self.0 {
            p.mutate(attrs, obj, reads).await?;
        }
        Ok(())
    }

    pub async fn validate(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        for p in &self.0 {
            p.validate(attrs, obj, reads).await?;
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
        reads: &Reads<'_>,
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
        let namespace = reads
            .get("namespaces", &format!("/registry/namespaces/{ns}"))
            .await?
            .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
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
        _reads: &Reads<'_>,
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
