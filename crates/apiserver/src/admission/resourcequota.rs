//! ResourceQuota, as upstream's plugin: a create whose usage would take a
//! quota of its namespace past `status.hard` is refused with upstream's
//! message, and so is an update of a Service or PersistentVolumeClaim by
//! what it adds (a node port, a load balancer, more storage); an allowed
//! one is charged to each quota's `status.used` before it is stored, by
//! compare-and-swap on the quota, so concurrent writes never both take the
//! last of a quota. The quota controller recounts.

use std::collections::BTreeSet;

use async_trait::async_trait;
use kubox_quota::usage::{counted_resource, in_scope, list_of, pod_constraints};
use kubox_quota::{Quantity, ResourceList, pretty, usage};
use kubox_store::{Error as StoreError, RangeRequest};
use serde_json::{Value, json};

use super::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::status::{ApiError, ApiResult};

pub struct ResourceQuota;

/// How often charging is retried when another write changed a quota first.
const ATTEMPTS: usize = 16;

/// What one quota says of a create: nothing, a refusal, or its new usage.
#[derive(Debug, PartialEq)]
enum Verdict {
    Untouched,
    Refused(String),
    Charged(ResourceList),
}

/// Kinds whose usage an update can raise, as upstream's evaluators handle
/// updates (a pod's resources change only through its resize subresource).
const CHARGED_ON_UPDATE: [&str; 2] = ["services", "persistentvolumeclaims"];

/// What a write adds: all of a created object's usage, or what an update
/// uses beyond the stored object (never negative: shrinking frees nothing
/// before the quota controller recounts); None if the write is not charged.
fn added(attrs: &Attributes<'_>, obj: &Value) -> Option<ResourceList> {
    let rt = attrs.resource;
    let new = usage(rt.group, rt.plural, obj);
    match (attrs.operation, attrs.old) {
        (Operation::Create, _) => Some(new),
        (Operation::Update, Some(old))
            if rt.group.is_empty() && CHARGED_ON_UPDATE.contains(&rt.plural) =>
        {
            let before = usage(rt.group, rt.plural, old);
            Some(
                new.into_iter()
                    .map(|(k, v)| {
                        let more = match before.get(&k) {
                            Some(b) if *b >= v => Quantity::default(),
                            Some(b) => v.sub(b),
                            None => v,
                        };
                        (k, more)
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Upstream's checkRequest for one quota.
fn evaluate(
    quota: &Value,
    group: &str,
    plural: &str,
    obj: &Value,
    delta: &ResourceList,
) -> Verdict {
    let name = quota["metadata"]["name"].as_str().unwrap_or_default();
    let hard = list_of(&quota["status"]["hard"]);
    let resource = (group.to_owned(), plural.to_owned());
    let interesting: BTreeSet<String> = hard
        .keys()
        .filter(|k| counted_resource(k) == resource)
        .cloned()
        .collect();
    if interesting.is_empty() || !in_scope(quota, group, plural, obj) {
        return Verdict::Untouched;
    }
    if group.is_empty()
        && plural == "pods"
        && let Err(e) = pod_constraints(&interesting, obj)
    {
        return Verdict::Refused(format!("failed quota: {name}: {e}"));
    }
    let mut used = list_of(&quota["status"]["used"]);
    let unknown: Vec<&str> = interesting
        .iter()
        .filter(|k| !used.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Verdict::Refused(format!(
            "status unknown for quota: {name}, resources: {}",
            unknown.join(",")
        ));
    }
    let requested: ResourceList = delta
        .iter()
        .filter(|(k, _)| interesting.contains(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if requested.values().all(Quantity::is_zero) {
        return Verdict::Untouched;
    }
    let exceeded: Vec<&String> = requested
        .iter()
        .filter(|(k, v)| used[*k].add(v) > hard[*k])
        .map(|(k, _)| k)
        .collect();
    if !exceeded.is_empty() {
        let mask = |list: &ResourceList| -> ResourceList {
            exceeded
                .iter()
                .map(|k| ((*k).clone(), list.get(*k).copied().unwrap_or_default()))
                .collect()
        };
        return Verdict::Refused(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&mask(&requested)),
            pretty(&mask(&used)),
            pretty(&mask(&hard)),
        ));
    }
    for (k, v) in &requested {
        let sum = used[k].add(v);
        used.insert(k.clone(), sum);
    }
    Verdict::Charged(used)
}

#[async_trait]
impl AdmissionPlugin for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    async fn validate(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        let rt = attrs.resource;
        if attrs.subresource.is_some() || !rt.namespaced {
            return Ok(());
        }
        let Some(ns) = attrs.namespace else {
            return Ok(());
        };
        let Some(delta) = added(attrs, obj) else {
            return Ok(());
        };
        let forbidden = |msg: String| ApiError::forbidden_on(rt.group, rt.plural, attrs.name, &msg);
        // Quotas already charged: a retry after a conflict on another
        // quota must not charge them twice.
        let mut charged: BTreeSet<String> = BTreeSet::new();
        let prefix = format!("/registry/resourcequotas/{ns}/");
        // Most namespaces have no quota: the cache tells, and only where
        // there is one is its exact usage read from the store.
        if !reads.any("resourcequotas", &prefix).await? {
            return Ok(());
        }
        'attempt: for _ in 0..ATTEMPTS {
            let quotas = reads
                .store
                .range(RangeRequest::prefix(prefix.clone()))
                .await?;
            let mut writes = Vec::new();
            for kv in &quotas.kvs {
                let Ok(mut quota) = serde_json::from_slice::<Value>(&kv.value) else {
                    continue;
                };
                let name = quota["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if charged.contains(&name) {
                    continue;
                }
                match evaluate(&quota, rt.group, rt.plural, obj, &delta) {
                    Verdict::Untouched => {}
                    Verdict::Refused(msg) => return Err(forbidden(msg)),
                    Verdict::Charged(used) => {
                        quota["status"]["used"] = json!(
                            used.iter()
                                .map(|(k, v)| (k.clone(), json!(v.to_string())))
                                .collect::<serde_json::Map<_, _>>()
                        );
                        writes.push((kv.key.clone(), name, kv.mod_revision, quota));
                    }
                }
            }
            if attrs.dry_run {
                return Ok(());
            }
            for (key, name, revision, quota) in writes {
                let value = serde_json::to_vec(&quota).unwrap_or_default();
                match reads.store.update(&key, value.into(), revision, 0).await {
                    Ok(_) => {
                        charged.insert(name);
                    }
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue 'attempt,
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        Err(ApiError::modified("", "resourcequotas", ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": "compute"}, "status": {"hard": hard, "used": used}})
    }

    fn pod(requests: Value, limits: Value) -> Value {
        json!({"spec": {"containers": [{"name": "app", "resources": {"requests": requests, "limits": limits}}]}})
    }

    fn check(q: &Value, p: &Value) -> Verdict {
        evaluate(q, "", "pods", p, &usage("", "pods", p))
    }

    #[test]
    fn over_quota_creates_are_refused_with_upstreams_message() {
        let q = quota(
            json!({"requests.cpu": "1", "pods": "10"}),
            json!({"requests.cpu": "1", "pods": "2"}),
        );
        assert_eq!(
            check(&q, &pod(json!({"cpu": "500m"}), json!({}))),
            Verdict::Refused(
                "exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=1, limited: requests.cpu=1".into()
            )
        );
        let q = quota(json!({"pods": "2"}), json!({"pods": "1"}));
        assert_eq!(
            check(&q, &pod(json!({}), json!({}))),
            Verdict::Charged(ResourceList::from([(
                "pods".into(),
                Quantity::from_units(2)
            )]))
        );
    }

    #[test]
    fn a_quota_on_compute_needs_containers_to_state_it() {
        let q = quota(json!({"limits.cpu": "2"}), json!({"limits.cpu": "0"}));
        assert_eq!(
            check(&q, &pod(json!({"cpu": "1"}), json!({}))),
            Verdict::Refused("failed quota: compute: must specify limits.cpu for: app".into())
        );
    }

    #[test]
    fn quotas_without_usage_or_on_other_resources() {
        let q = quota(json!({"pods": "2"}), json!({}));
        assert_eq!(
            check(&q, &pod(json!({}), json!({}))),
            Verdict::Refused("status unknown for quota: compute, resources: pods".into())
        );
        let q = quota(json!({"services": "1"}), json!({"services": "1"}));
        assert_eq!(check(&q, &pod(json!({}), json!({}))), Verdict::Untouched);
        let q = quota(
            json!({"services.nodeports": "1"}),
            json!({"services.nodeports": "0"}),
        );
        let svc = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        assert_eq!(
            evaluate(&q, "", "services", &svc, &usage("", "services", &svc)),
            Verdict::Untouched
        );
        let q = quota(
            json!({"count/deployments.apps": "1"}),
            json!({"count/deployments.apps": "1"}),
        );
        assert_eq!(
            evaluate(&q, "apps", "deployments", &json!({}), &usage("apps", "deployments", &json!({}))),
            Verdict::Refused("exceeded quota: compute, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1".into())
        );
    }
}
