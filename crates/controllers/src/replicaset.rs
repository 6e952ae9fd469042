//! The ReplicaSet and ReplicationController controllers (upstream's
//! replicaset-controller, which runs the ReplicationController one over the
//! same code): as many active pods as `replicas`, created in slow-start
//! batches and deleted in upstream's order of preference, orphans adopted
//! and mismatched pods released, and the status kubectl and the Deployment
//! controller read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};

use crate::expectations::Expectations;
use crate::ownerref::{self, Claimer};
use crate::podowners::{self, OwnsPods, Selecting, key};
use crate::{Context, Error, api_message, is_not_found, pods, runner};

/// At most this many pods are created or deleted in one sync.
const BURST: usize = 500;

/// The condition upstream reports when pods cannot be created or deleted.
const REPLICA_FAILURE: &str = "ReplicaFailure";

/// A condition of either kind's status.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

/// The status both kinds share, with upstream's JSON: zero counts
/// omitted, but `replicas` always there.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fully_labeled_replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_replicas: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A controller of identical pods: a ReplicaSet or a ReplicationController.
pub trait Replicated:
    Selecting + Resource<Scope = NamespaceResourceScope> + serde::Serialize
{
    /// The component its events come from.
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;

    /// Both kinds' statuses have one JSON form.
    fn status(&self) -> Status {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| serde_json::from_value(v["status"].clone()).ok())
            .unwrap_or_default()
    }

    fn with_status(&self, status: Status) -> Self {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["status"] = serde_json::to_value(status).unwrap_or_default();
        serde_json::from_value(v).unwrap_or_else(|_| self.clone())
    }
}

impl Selecting for ReplicaSet {
    fn selector(&self) -> Result<Selector, String> {
        Selector::try_from(self.spec.selector.clone()).map_err(|e| e.to_string())
    }
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";

    fn replicas(&self) -> i32 {
        self.spec.replicas.unwrap_or(1)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.template.as_ref()
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec.min_ready_seconds.unwrap_or(0)
    }
}

impl Selecting for ReplicationController {
    fn selector(&self) -> Result<Selector, String> {
        let labels = self
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        Ok(labels.into_iter().collect())
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
}

struct Shared<K: Replicated> {
    client: kube::Client,
    recorder: Recorder,
    expectations: Expectations,
    owners: Store<K>,
    pods: Store<Pod>,
}

pub async fn run_replicasets(ctx: Arc<Context>) {
    run::<ReplicaSet>(ctx).await;
}

pub async fn run_replication_controllers(ctx: Arc<Context>) {
    run::<ReplicationController>(ctx).await;
}

async fn run<K: Replicated>(ctx: Arc<Context>) {
    let owners = ctx.informers.get::<K>();
    let pod_informer = ctx.informers.get::<Pod>();
    owners.synced().await;
    pod_informer.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(K::COMPONENT),
        expectations: Expectations::default(),
        owners: owners.store(),
        pods: pod_informer.store(),
    });
    let controller = podowners::controller(&shared, &owners, &pod_informer);
    runner::run(K::COMPONENT, controller, reconcile::<K>, shared).await;
}

impl<K: Replicated> OwnsPods for Shared<K> {
    type Owner = K;

    fn owners(&self) -> &Store<K> {
        &self.owners
    }

    fn expectations(&self) -> &Expectations {
        &self.expectations
    }
}

impl<K: Replicated> Shared<K> {
    fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// The active pods of every controller owned by this one's owner (the
    /// other ReplicaSets of its Deployment), to spread deletions over nodes.
    fn related_pods(&self, owner: &K, namespace: &str) -> Vec<Arc<Pod>> {
        let Some(parent) = ownerref::controller_of(owner.meta()) else {
            return Vec::new();
        };
        let in_ns = self.pods_in(namespace);
        let mut seen = HashSet::new();
        let mut related = Vec::new();
        for sibling in self.owners.state() {
            if sibling.meta().namespace.as_deref() != Some(namespace)
                || ownerref::controller_of(sibling.meta()).map(|r| &r.uid) != Some(&parent.uid)
            {
                continue;
            }
            let Ok(selector) = sibling.selector() else {
                continue;
            };
            for p in &in_ns {
                if selector.matches(pods::labels(&p.metadata))
                    && seen.insert(p.metadata.uid.clone())
                {
                    related.push(p.clone());
                }
            }
        }
        related
    }

    /// Creates or deletes pods until `pods` (the active ones it controls)
    /// number `replicas` (upstream's manageReplicas).
    async fn manage(&self, owner: &K, pods: &[Arc<Pod>], namespace: &str) -> Result<(), Error> {
        let owner_key = key(owner.meta());
        let want = owner.replicas().max(0) as usize;
        if pods.len() < want {
            let n = (want - pods.len()).min(BURST);
            self.expectations.expect_creations(&owner_key, n);
            let (created, result) = pods::slow_start(n, || self.create_pod(owner, namespace)).await;
            // Pods never attempted will never be observed.
            for _ in created..n {
                self.expectations.creation_observed(&owner_key);
            }
            return result;
        }
        if pods.len() > want {
            let n = (pods.len() - want).min(BURST);
            let related = self.related_pods(owner, namespace);
            let doomed = pods::to_delete(pods.to_vec(), &related, n, Timestamp::now());
            self.expectations.expect_deletions(
                &owner_key,
                doomed.iter().map(|p| key(&p.metadata)).collect(),
            );
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let results = join_all(doomed.iter().map(|p| {
                let api = api.clone();
                async move {
                    let name = p.name_any();
                    let result = api.delete(&name, &DeleteParams::default()).await;
                    (p, name, result)
                }
            }))
            .await;
            let mut failure = None;
            for (p, name, result) in results {
                match result {
                    Ok(_) => self.recorder.record(
                        owner.object_ref(&()),
                        Type::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    ),
                    Err(e) => {
                        // The informer will never see this deletion.
                        self.expectations
                            .deletion_observed(&owner_key, &key(&p.metadata));
                        if !is_not_found(&e) {
                            self.recorder.record(
                                owner.object_ref(&()),
                                Type::Warning,
                                "FailedDelete",
                                format!("Error deleting: {}", api_message(&e)),
                            );
                            failure.get_or_insert(Error::Failed(format!(
                                "unable to delete pods: {}",
                                api_message(&e)
                            )));
                        }
                    }
                }
            }
            return failure.map_or(Ok(()), Err);
        }
        Ok(())
    }

    async fn create_pod(&self, owner: &K, namespace: &str) -> Result<(), Error> {
        let template = owner.template().cloned().unwrap_or_default();
        let pod = pods::from_template(
            &template,
            &owner.name_any(),
            ownerref::controller_ref(owner),
        );
        if pod.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
            return Err(Error::Failed("unable to create pods, no labels".into()));
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods::create(&api, &self.recorder, owner.object_ref(&()), &pod).await
    }
}

/// The status `pods` (the active ones the controller keeps) make, with the
/// ReplicaFailure condition set or cleared by how managing went.
pub fn calculate_status<K: Replicated>(
    owner: &K,
    pods: &[Arc<Pod>],
    failure: Option<&Error>,
    now: Timestamp,
) -> Status {
    let mut status = owner.status();
    let template_labels: Selector = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let min_ready = owner.min_ready_seconds();
    status.fully_labeled_replicas = pods
        .iter()
        .filter(|p| template_labels.matches(pods::labels(&p.metadata)))
        .count() as i32;
    status.ready_replicas = pods.iter().filter(|p| pods::is_ready(p)).count() as i32;
    status.available_replicas = pods
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count() as i32;
    let has_failure = status.conditions.iter().any(|c| c.type_ == REPLICA_FAILURE);
    match failure {
        Some(e) if !has_failure => {
            let diff = pods.len() as i64 - i64::from(owner.replicas());
            let reason = match diff.cmp(&0) {
                std::cmp::Ordering::Less => "FailedCreate",
                std::cmp::Ordering::Greater => "FailedDelete",
                std::cmp::Ordering::Equal => "",
            };
            status.conditions.push(Condition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(e.to_string()),
                last_transition_time: Some(Time(now)),
            });
        }
        None if has_failure => status.conditions.retain(|c| c.type_ != REPLICA_FAILURE),
        _ => {}
    }
    status.replicas = pods.len() as i32;
    status
}

/// When the next ready pod becomes available, if one is waiting out
/// `minReadySeconds`: the status must be counted again then.
fn next_available(pods: &[Arc<Pod>], min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    pods.iter()
        .filter(|p| pods::is_ready(p) && !pods::is_available(p, min_ready_seconds, now))
        .filter_map(|p| {
            let since = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .last_transition_time
                .as_ref()?
                .0;
            let at = since
                .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
                .ok()?;
            Some(Duration::try_from(at.duration_since(now)).unwrap_or_default())
        })
        .min()
        // A second more, so the clocks' rounding cannot make it early.
        .map(|d| d + Duration::from_secs(1))
}

async fn reconcile<K: Replicated>(owner: Arc<K>, shared: Arc<Shared<K>>) -> Result<Action, Error> {
    let owner_key = key(owner.meta());
    let namespace = owner.namespace().unwrap_or_default();
    let needs_sync = shared.expectations.satisfied(&owner_key);
    let selector = match owner.selector() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                controller = K::COMPONENT,
                "{owner_key}: invalid selector: {e}"
            );
            return Ok(Action::await_change());
        }
    };
    let active: Vec<Arc<Pod>> = shared
        .pods_in(&namespace)
        .into_iter()
        .filter(|p| pods::is_active(p))
        .collect();
    let owners: Api<K> = Api::namespaced(shared.client.clone(), &namespace);
    let pod_api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let claimed = Claimer::new(&*owner, &selector, owners.clone())
        .claim(active, &pod_api)
        .await?;
    let failure = if needs_sync && owner.meta().deletion_timestamp.is_none() {
        shared.manage(&owner, &claimed, &namespace).await.err()
    } else {
        None
    };
    let now = Timestamp::now();
    let mut status = calculate_status(&*owner, &claimed, failure.as_ref(), now);
    let generation = owner.meta().generation.unwrap_or(0);
    let old = owner.status();
    if status != old || old.observed_generation != generation {
        status.observed_generation = generation;
        update_status(&owners, &owner, status).await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(
        match next_available(&claimed, owner.min_ready_seconds(), now) {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        },
    )
}

/// Writes the status, reading the object again once if it changed meanwhile.
async fn update_status<K: Replicated>(
    api: &Api<K>,
    owner: &K,
    status: Status,
) -> Result<(), Error> {
    let name = owner.name_any();
    let mut current = owner.clone();
    for attempt in 0..2 {
        match api
            .replace_status(
                &name,
                &PostParams::default(),
                &current.with_status(status.clone()),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if attempt == 0 && crate::is_reason(&e, "Conflict") => {
                current = api.get(&name).await?
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_create_sets_replica_failure_and_success_clears_it() {
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}}}
        }))
        .unwrap();
        let failure = Error::Failed("pods \"web-\" is forbidden: exceeded quota: q".into());
        let status = calculate_status(&rs, &[], Some(&failure), Timestamp::now());
        assert_eq!(status.conditions.len(), 1);
        let c = &status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("ReplicaFailure", "True")
        );
        assert_eq!(c.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(
            c.message.as_deref(),
            Some("pods \"web-\" is forbidden: exceeded quota: q")
        );
        let failed = rs.with_status(status);
        assert!(
            calculate_status(&failed, &[], None, Timestamp::now())
                .conditions
                .is_empty()
        );
    }
}
