//! The resource quota controller, as upstream's: each ResourceQuota's
//! status says what it allows (`hard`, from its spec) and what the objects
//! of its namespace in its scopes use (`used`), counted with the same
//! evaluators admission charges with. Admission raises `used` as objects
//! come; this controller recounts when a quota's limits change, when
//! objects go or pods finish (replenishment), and every five minutes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use kubox_quota::usage::{counted_resource, in_scope, list_of};
use kubox_quota::{Quantity, ResourceList, usage};
use serde_json::{Value, json};

use crate::informer::{Change, Informer};
use crate::{Context, Error, Informed, discovery, runner};

const COMPONENT: &str = "resourcequota-controller";
/// Upstream's `--resource-quota-sync-period`.
const RESYNC: Duration = Duration::from_secs(300);

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    services: Store<Service>,
    claims: Store<PersistentVolumeClaim>,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    controllers: Store<ReplicationController>,
    quotas: Store<ResourceQuota>,
}

pub async fn run(ctx: Arc<Context>) {
    let quotas = ctx.informers.get::<ResourceQuota>();
    let pods = ctx.informers.get::<Pod>();
    let services = ctx.informers.get::<Service>();
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let config_maps = ctx.informers.get::<ConfigMap>();
    let secrets = ctx.informers.get::<Secret>();
    let controllers = ctx.informers.get::<ReplicationController>();
    let _ = tokio::join!(
        pods.synced(),
        services.synced(),
        claims.synced(),
        config_maps.synced(),
        secrets.synced(),
        controllers.synced(),
    );
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        services: services.store(),
        claims: claims.store(),
        config_maps: config_maps.store(),
        secrets: secrets.store(),
        controllers: controllers.store(),
        quotas: quotas.store(),
    });
    // A change of status alone is admission charging a quota: recounting
    // then, from caches that may not have the new object yet, would undo it.
    let changed_limits = quotas.changes().filter_map(|c| async move {
        match c {
            Change::Applied { old, new } if needs_sync(old.as_deref(), &new) => Some(new),
            _ => None,
        }
    });
    let released = futures::stream::select_all([
        released(&pods, pod_finished).boxed(),
        released(&services, never).boxed(),
        released(&claims, never).boxed(),
        released(&config_maps, never).boxed(),
        released(&secrets, never).boxed(),
        released(&controllers, never).boxed(),
    ]);
    let quota_store = quotas.store();
    let triggers = released.flat_map(move |ns| {
        let refs: Vec<ObjectRef<ResourceQuota>> = quota_store
            .state()
            .iter()
            .filter(|q| q.namespace().as_deref() == Some(ns.as_str()))
            .map(|q| ObjectRef::from_obj(&**q))
            .collect();
        futures::stream::iter(refs)
    });
    quotas.synced().await;
    let controller =
        Controller::for_shared_stream(changed_limits, quotas.store()).reconcile_on(triggers);
    runner::run(COMPONENT, controller, reconcile, state).await;
}

fn never<K>(_: &K, _: &K) -> bool {
    false
}

fn pod_finished(old: &Pod, new: &Pod) -> bool {
    let terminal = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
    };
    (!terminal(old) && terminal(new))
        || (old.metadata.deletion_timestamp.is_none() && new.metadata.deletion_timestamp.is_some())
}

/// The namespaces of objects that went, or (by `finished`) stopped using
/// what they used.
fn released<K: Informed>(
    informer: &Informer<K>,
    finished: fn(&K, &K) -> bool,
) -> impl Stream<Item = String> + Send + 'static {
    informer.changes().filter_map(move |c| async move {
        let gone = match &c {
            Change::Deleted(_) => true,
            Change::Applied {
                old: Some(old),
                new,
            } => finished(old, new),
            Change::Applied { old: None, .. } => false,
        };
        gone.then(|| c.object().namespace().unwrap_or_default())
    })
}

/// Whether a quota's status does not yet reflect its spec's limits.
fn needs_sync(old: Option<&ResourceQuota>, new: &ResourceQuota) -> bool {
    let spec_hard = |q: &ResourceQuota| q.spec.as_ref().and_then(|s| s.hard.clone());
    let status_hard = new.status.as_ref().and_then(|s| s.hard.clone());
    old.is_none_or(|o| spec_hard(o) != spec_hard(new))
        || status_hard.unwrap_or_default() != spec_hard(new).unwrap_or_default()
}

fn values<K: Informed + serde::Serialize>(store: &Store<K>, ns: &str) -> Vec<Value> {
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .filter_map(|o| serde_json::to_value(&**o).ok())
        .collect()
}

impl State {
    /// The objects of a resource in a namespace: from the caches for the
    /// ones quota names commonly, listed through discovery for the rest.
    async fn objects(&self, group: &str, plural: &str, ns: &str) -> Result<Vec<Value>, Error> {
        if group.is_empty() {
            match plural {
                "pods" => return Ok(values(&self.pods, ns)),
                "services" => return Ok(values(&self.services, ns)),
                "persistentvolumeclaims" => return Ok(values(&self.claims, ns)),
                "configmaps" => return Ok(values(&self.config_maps, ns)),
                "secrets" => return Ok(values(&self.secrets, ns)),
                "replicationcontrollers" => return Ok(values(&self.controllers, ns)),
                "resourcequotas" => return Ok(values(&self.quotas, ns)),
                _ => {}
            }
        }
        let served = discovery::served(&self.client).await?;
        let Some(resource) = served
            .into_iter()
            .find(|s| s.namespaced && s.group() == group && s.resource.plural == plural)
        else {
            return Ok(Vec::new());
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &resource.resource);
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect())
    }
}

/// What the objects of a namespace use of `hard`, in the quota's scopes.
fn used_by<'a>(
    quota: &Value,
    hard: &ResourceList,
    objects: impl IntoIterator<Item = (&'a (String, String), &'a Vec<Value>)>,
) -> ResourceList {
    let mut used: ResourceList = hard.keys().map(|k| (k.clone(), Quantity::ZERO)).collect();
    for ((group, plural), objs) in objects {
        for obj in objs.iter().filter(|o| in_scope(quota, group, plural, o)) {
            for (k, v) in usage(group, plural, obj) {
                if let Some(sum) = used.get_mut(&k) {
                    *sum = sum.add(&v);
                }
            }
        }
    }
    used
}

async fn reconcile(quota: Arc<ResourceQuota>, state: Arc<State>) -> Result<Action, Error> {
    let ns = quota.namespace().unwrap_or_default();
    let value = serde_json::to_value(&*quota).map_err(|e| Error::Failed(e.to_string()))?;
    let hard = list_of(&value["spec"]["hard"]);
    let resources: BTreeSet<(String, String)> = hard.keys().map(|k| counted_resource(k)).collect();
    let mut objects = BTreeMap::new();
    for (group, plural) in resources {
        let objs = state.objects(&group, &plural, &ns).await?;
        objects.insert((group, plural), objs);
    }
    let used = used_by(&value, &hard, &objects);
    let strings = |list: &ResourceList| -> serde_json::Map<String, Value> {
        list.iter()
            .map(|(k, v)| (k.clone(), json!(v.to_string())))
            .collect()
    };
    let status = json!({
        "hard": value["spec"]["hard"].as_object().cloned().unwrap_or_default(),
        "used": strings(&used),
    });
    let same_used = list_of(&value["status"]["used"]) == used
        && value["status"]["used"].as_object().map(|m| m.len()) == Some(used.len());
    if same_used && value["status"]["hard"] == status["hard"] {
        return Ok(Action::requeue(RESYNC));
    }
    let mut updated = value;
    updated["status"] = status;
    // The resourceVersion read is kept: if admission charged the quota
    // meanwhile, this write conflicts and the recount starts over.
    let api: Api<ResourceQuota> = Api::namespaced(state.client.clone(), &ns);
    let updated: ResourceQuota =
        serde_json::from_value(updated).map_err(|e| Error::Failed(e.to_string()))?;
    api.replace_status(&quota.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_summed_over_objects_in_scope_for_each_hard_name() {
        let quota = json!({"spec": {"scopes": ["NotTerminating"]}});
        let hard = list_of(&json!({"pods": "5", "requests.cpu": "2", "limits.memory": "1Gi"}));
        let pod = |cpu: &str, deadline: Option<i64>| {
            json!({"spec": {"activeDeadlineSeconds": deadline, "containers": [
                {"name": "a", "resources": {"requests": {"cpu": cpu}}}]}})
        };
        let pods = vec![pod("250m", None), pod("500m", None), pod("1", Some(60))];
        let key = (String::new(), "pods".to_owned());
        let used = used_by(&quota, &hard, [(&key, &pods)]);
        assert_eq!(
            kubox_quota::pretty(&used),
            "limits.memory=0,pods=2,requests.cpu=750m"
        );
    }

    #[test]
    fn only_limit_changes_need_a_recount() {
        let q = |spec: Value, status: Value| -> ResourceQuota {
            serde_json::from_value(
                json!({"metadata": {"name": "q"}, "spec": {"hard": spec}, "status": status}),
            )
            .unwrap()
        };
        let synced = q(
            json!({"pods": "2"}),
            json!({"hard": {"pods": "2"}, "used": {"pods": "1"}}),
        );
        let charged = q(
            json!({"pods": "2"}),
            json!({"hard": {"pods": "2"}, "used": {"pods": "2"}}),
        );
        assert!(!needs_sync(Some(&synced), &charged));
        assert!(needs_sync(None, &q(json!({"pods": "2"}), json!({}))));
        let raised = q(
            json!({"pods": "3"}),
            json!({"hard": {"pods": "2"}, "used": {"pods": "2"}}),
        );
        assert!(needs_sync(Some(&charged), &raised));
    }
}
