//! The Deployment controller (upstream's deployment-controller): a
//! ReplicaSet per pod template, named by the template's hash, rolled out
//! by the Deployment's strategy, scaled proportionally when the Deployment
//! is resized mid-rollout, paused and resumed, with revisions and the
//! status and conditions `kubectl rollout status` reads.

mod rollout;
mod sync;
pub(crate) mod util;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{Selector, SelectorExt};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};

use crate::ownerref::{self, Claimer};
use crate::{Change, Context, Error, pods, runner};
use sync::Sync;

pub const COMPONENT: &str = "deployment-controller";

pub(crate) struct Shared {
    client: kube::Client,
    recorder: Recorder,
    deployments: Store<Deployment>,
    sets: Store<ReplicaSet>,
    pods: Store<Pod>,
}

pub async fn run(ctx: Arc<Context>) {
    let deployments = ctx.informers.get::<Deployment>();
    let sets = ctx.informers.get::<ReplicaSet>();
    let pod_informer = ctx.informers.get::<Pod>();
    deployments.synced().await;
    sets.synced().await;
    pod_informer.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        deployments: deployments.store(),
        sets: sets.store(),
        pods: pod_informer.store(),
    });
    let on_rs = shared.clone();
    let rs_triggers = sets
        .changes()
        .flat_map(move |c| futures::stream::iter(on_rs.replica_set_changed(c)));
    let on_pod = shared.clone();
    let pod_triggers = pod_informer
        .changes()
        .flat_map(move |c| futures::stream::iter(on_pod.pod_changed(c)));
    let controller = Controller::for_shared_stream(deployments.stream(), deployments.store())
        .reconcile_on(rs_triggers)
        .reconcile_on(pod_triggers);
    runner::run(COMPONENT, controller, reconcile, shared).await;
}

fn selector(d: &Deployment) -> Result<Selector, String> {
    let s = d.spec.selector.clone();
    Selector::try_from(s).map_err(|e| e.to_string())
}

impl Shared {
    /// The Deployments a ReplicaSet change concerns (upstream's
    /// add/update/deleteReplicaSet): its controller before and after, or,
    /// for an orphan, those whose selector matches it.
    fn replica_set_changed(&self, change: Change<ReplicaSet>) -> Vec<ObjectRef<Deployment>> {
        let controlling = |rs: &ReplicaSet| {
            ownerref::controller_of(&rs.metadata)
                .and_then(|r| self.resolve(rs, r))
                .map(|d| ObjectRef::from_obj(&*d))
        };
        match change {
            Change::Applied { old: None, new } => match controlling(&new) {
                Some(d) => vec![d],
                None if ownerref::controller_of(&new.metadata).is_none()
                    && new.metadata.deletion_timestamp.is_none() =>
                {
                    self.selecting(&new)
                }
                None => Vec::new(),
            },
            Change::Applied {
                old: Some(old),
                new,
            } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return Vec::new();
                }
                let old_ref = ownerref::controller_of(&old.metadata);
                let new_ref = ownerref::controller_of(&new.metadata);
                let mut refs = Vec::new();
                if old_ref != new_ref {
                    refs.extend(controlling(&old));
                }
                match new_ref {
                    Some(_) => refs.extend(controlling(&new)),
                    None if old_ref != new_ref || old.metadata.labels != new.metadata.labels => {
                        refs.extend(self.selecting(&new))
                    }
                    None => {}
                }
                refs
            }
            Change::Deleted(rs) => controlling(&rs).into_iter().collect(),
        }
    }

    /// A Recreate Deployment waits for its old pods to be gone.
    fn pod_changed(&self, change: Change<Pod>) -> Vec<ObjectRef<Deployment>> {
        let Change::Deleted(pod) = change else {
            return Vec::new();
        };
        let ns = pod.namespace().unwrap_or_default();
        let Some(rs_ref) =
            ownerref::controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")
        else {
            return Vec::new();
        };
        let Some(rs) = ownerref::resolve(&self.sets, &ns, rs_ref) else {
            return Vec::new();
        };
        ownerref::controller_of(&rs.metadata)
            .and_then(|r| self.resolve(&rs, r))
            .filter(|d| util::is_recreate(d))
            .map(|d| ObjectRef::from_obj(&*d))
            .into_iter()
            .collect()
    }

    fn resolve(
        &self,
        rs: &ReplicaSet,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Option<Arc<Deployment>> {
        ownerref::resolve(&self.deployments, &rs.namespace().unwrap_or_default(), r)
    }

    fn selecting(&self, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
        let labels = pods::labels(&rs.metadata);
        self.deployments
            .state()
            .into_iter()
            .filter(|d| d.metadata.namespace == rs.metadata.namespace)
            .filter(|d| selector(d).is_ok_and(|s| !s.selects_all() && s.matches(labels)))
            .map(|d| ObjectRef::from_obj(&*d))
            .collect()
    }
}

async fn reconcile(d: Arc<Deployment>, shared: Arc<Shared>) -> Result<Action, Error> {
    let requeue = sync_deployment((*d).clone(), &shared).await?;
    Ok(match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Upstream's syncDeployment; returns when to look again, if a progress
/// deadline is pending.
async fn sync_deployment(d: Deployment, shared: &Shared) -> Result<Option<Duration>, Error> {
    let ns = d.namespace().unwrap_or_default();
    let selector = match selector(&d) {
        Ok(s) => s,
        Err(e) => {
            return Err(Error::Failed(format!(
                "deployment {ns}/{} has invalid label selector: {e}",
                d.name_any()
            )));
        }
    };
    let mut sync = Sync::new(shared, d);
    if selector.selects_all() {
        shared.recorder.record(
            sync.d.object_ref(&()),
            Type::Warning,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        );
        let generation = sync.d.metadata.generation.unwrap_or(0);
        let observed = sync
            .d
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or(0);
        if observed < generation {
            sync.d
                .status
                .get_or_insert_with(Default::default)
                .observed_generation = Some(generation);
            sync.update_status().await?;
        }
        return Ok(None);
    }
    let candidates: Vec<Arc<ReplicaSet>> = shared
        .sets
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let deployments: Api<Deployment> = Api::namespaced(shared.client.clone(), &ns);
    let rs_api: Api<ReplicaSet> = Api::namespaced(shared.client.clone(), &ns);
    let d_ref = sync.d.clone();
    let rs_list: Vec<ReplicaSet> = Claimer::new(&d_ref, &selector, deployments)
        .claim(candidates, &rs_api)
        .await?
        .into_iter()
        .map(|rs| (*rs).clone())
        .collect();
    if sync.d.metadata.deletion_timestamp.is_some() {
        return sync.status_only(&rs_list).await.map(|_| None);
    }
    sync.check_paused_conditions().await?;
    if util::paused(&sync.d) {
        return sync.sync(&rs_list).await.map(|_| None);
    }
    if rollback_to(&sync.d).is_some() {
        return rollback(&mut sync, &rs_list).await.map(|_| None);
    }
    if sync.is_scaling_event(&rs_list).await? {
        return sync.sync(&rs_list).await.map(|_| None);
    }
    if util::is_recreate(&sync.d) {
        let pod_map = pod_map(shared, &sync.d, &selector, &rs_list);
        return sync.rollout_recreate(&rs_list, &pod_map).await;
    }
    if util::is_rolling_update(&sync.d) {
        return sync.rollout_rolling(&rs_list).await;
    }
    Err(Error::Failed(format!(
        "unexpected deployment strategy type: {}",
        sync.d
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.clone())
            .unwrap_or_default()
    )))
}

/// The Deployment's pods, by the UID of the ReplicaSet controlling them.
fn pod_map(
    shared: &Shared,
    d: &Deployment,
    selector: &Selector,
    rs_list: &[ReplicaSet],
) -> Vec<(String, Vec<Arc<Pod>>)> {
    let ns = d.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = shared
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| selector.matches(pods::labels(&p.metadata)))
        .collect();
    rs_list
        .iter()
        .map(|rs| {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            let owned = pods
                .iter()
                .filter(|p| ownerref::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
                .cloned()
                .collect();
            (uid, owned)
        })
        .collect()
}

/// The revision the deprecated rollback annotation asks for.
fn rollback_to(d: &Deployment) -> Option<i64> {
    d.metadata
        .annotations
        .as_ref()?
        .get(util::ROLLBACK_TO)?
        .parse()
        .ok()
}

/// A rollback asked for through the deprecated annotation (old kubectl):
/// the template of that revision (0: the previous one) becomes the
/// Deployment's, and the annotation goes.
async fn rollback(sync: &mut Sync<'_>, rs_list: &[ReplicaSet]) -> Result<(), Error> {
    let (new, old) = sync.all_replica_sets(rs_list, true).await?;
    let mut all = old;
    all.extend(new);
    let mut revision = rollback_to(&sync.d).unwrap_or(0);
    if revision == 0 {
        revision = util::last_revision(&all);
        if revision == 0 {
            sync.event(
                Type::Warning,
                "DeploymentRollbackRevisionNotFound",
                "Unable to find last revision.".into(),
            );
            return sync.clear_rollback_to().await;
        }
    }
    let Some(target) = all.iter().find(|rs| util::revision(rs) == Some(revision)) else {
        sync.event(
            Type::Warning,
            "DeploymentRollbackRevisionNotFound",
            "Unable to find the revision to rollback to.".into(),
        );
        return sync.clear_rollback_to().await;
    };
    let target_template = util::rs_template(target);
    if util::equal_ignoring_hash(&util::template(&sync.d), &target_template) {
        let name = sync.d.name_any();
        sync.event(
            Type::Warning,
            "DeploymentRollbackTemplateUnchanged",
            format!(
                "The rollback revision contains the same template as current deployment {name:?}"
            ),
        );
        return sync.clear_rollback_to().await;
    }
    let mut template = target_template;
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(util::POD_TEMPLATE_HASH);
    }
    let annotations = util::annotations_after_rollback(&sync.d, target);
    sync.d.spec.template = template;
    sync.d.metadata.annotations = Some(annotations);
    sync.clear_rollback_to().await?;
    let name = sync.d.name_any();
    sync.event(
        Type::Normal,
        "DeploymentRollback",
        format!("Rolled back deployment {name:?} to revision {revision}"),
    );
    Ok(())
}
