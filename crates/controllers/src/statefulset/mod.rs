//! The StatefulSet controller (upstream's statefulset-controller): pods
//! with stable identities `<set>-<ordinal>` (`identity`), created, scaled
//! down and updated in ordinal order or in parallel (`plan`), each with its
//! PersistentVolumeClaims from the volumeClaimTemplates made first; a
//! ControllerRevision per template (the pods' `controller-revision-hash`
//! names it), RollingUpdate with a partition or OnDelete; and the status
//! `kubectl rollout status sts` reads. The claims' retention policy is kept
//! through owner references the garbage collector acts on: owned by the set
//! when `whenDeleted: Delete`, by the pod being scaled away when
//! `whenScaled: Delete`.

mod identity;
mod plan;

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};
use serde_json::json;

use crate::deployment::util::compute_hash;
use crate::expectations::Expectations;
use crate::history::{self, REVISION_HASH};
use crate::ownerref::{self, Claimer};
use crate::podowners::{self, OwnsPods, Selecting, key};
use crate::{Context, Error, api_message, is_not_found, is_reason, runner};

use plan::Members;

pub const COMPONENT: &str = "statefulset-controller";

impl Selecting for StatefulSet {
    fn selector(&self) -> Result<Selector, String> {
        Selector::try_from(self.spec.selector.clone()).map_err(|e| e.to_string())
    }
}

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    expectations: Expectations,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    revisions: Store<ControllerRevision>,
}

impl OwnsPods for Shared {
    type Owner = StatefulSet;

    fn owners(&self) -> &Store<StatefulSet> {
        &self.sets
    }

    fn expectations(&self) -> &Expectations {
        &self.expectations
    }
}

pub async fn run(ctx: Arc<Context>) {
    let sets = ctx.informers.get::<StatefulSet>();
    let pod_informer = ctx.informers.get::<Pod>();
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let revisions = ctx.informers.get::<ControllerRevision>();
    sets.synced().await;
    pod_informer.synced().await;
    claims.synced().await;
    revisions.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        expectations: Expectations::default(),
        sets: sets.store(),
        pods: pod_informer.store(),
        claims: claims.store(),
        revisions: revisions.store(),
    });
    let controller = podowners::controller(&shared, &sets, &pod_informer);
    runner::run(COMPONENT, controller, reconcile, shared).await;
}

/// The pod template a revision holds.
fn template_of(revision: &ControllerRevision) -> Result<PodTemplateSpec, Error> {
    serde_json::from_value(revision.data.0["spec"]["template"].clone())
        .map_err(|e| Error::Failed(format!("controller revision {}: {e}", revision.name_any())))
}

/// The set's current and update revisions, making the update revision
/// (the template now) if it is new, and renumbering it if it was rolled back to.
async fn revisions(
    shared: &Shared,
    set: &StatefulSet,
    api: &Api<ControllerRevision>,
) -> Result<(ControllerRevision, ControllerRevision), Error> {
    let ns = set.namespace().unwrap_or_default();
    let template = &set.spec.template;
    let patch = history::template_patch(template);
    let owned = history::owned(
        &shared.revisions,
        &ns,
        set.metadata.uid.as_deref().unwrap_or_default(),
    );
    let next = history::next_number(&owned);
    let update = match owned.iter().rev().find(|r| history::holds(r, &patch)) {
        Some(r) if r.revision.unwrap_or(0) + 1 < next => history::renumber(api, r, next).await?,
        Some(r) => (**r).clone(),
        None => {
            let collisions = set.status.as_ref().and_then(|s| s.collision_count);
            let hash = compute_hash(template, collisions);
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.clone());
            let revision = history::new_revision(
                format!("{}-{hash}", set.name_any()),
                &ns,
                labels,
                ownerref::controller_ref(set),
                patch,
                next,
            );
            history::create(api, revision).await?
        }
    };
    let wanted = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref());
    let current = owned
        .iter()
        .find(|r| wanted == r.metadata.name.as_deref())
        .map_or_else(|| update.clone(), |r| (**r).clone());
    Ok((current, update))
}

async fn reconcile(set: Arc<StatefulSet>, shared: Arc<Shared>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = set.namespace().unwrap_or_default();
    let set_key = key(&set.metadata);
    let selector = match set.selector() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(controller = COMPONENT, "{set_key}: {e}");
            return Ok(Action::await_change());
        }
    };
    let pod_api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let sets: Api<StatefulSet> = Api::namespaced(shared.client.clone(), &ns);
    let revision_api: Api<ControllerRevision> = Api::namespaced(shared.client.clone(), &ns);
    let satisfied = shared.expectations.satisfied(&set_key);
    let (current, update) = revisions(&shared, &set, &revision_api).await?;
    let current_name = current.name_any();
    let update_name = update.name_any();

    let candidates: Vec<Arc<Pod>> = shared
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let claimed = Claimer::new(&*set, &selector, sets.clone())
        .claim(candidates, &pod_api)
        .await?;
    let members = Members::sort(&set, &claimed);
    let now = Timestamp::now();
    if satisfied {
        let plan = plan::plan(&set, &members, &update_name, now);
        // Pods below the partition are made again at the current revision.
        let partition = identity::start(&set) + plan::partition(&set);
        let revision_for = |ordinal: i32| {
            if plan::rolling(&set) && ordinal < partition {
                &current
            } else {
                &update
            }
        };
        delete_pods(&shared, &set, &pod_api, &plan.delete).await?;
        create_pods(&shared, &set, &pod_api, &plan.create, revision_for).await?;
    }
    let status = plan::status(&set, &members, &current_name, &update_name, now);
    if set.status.as_ref() != Some(&status) {
        let mut updated = (*set).clone();
        updated.status = Some(status);
        sets.replace_status(&set.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    let live = |r: &ControllerRevision| {
        let name = r.metadata.name.as_deref();
        name == Some(current_name.as_str())
            || name == Some(update_name.as_str())
            || claimed.iter().any(|p| identity::revision(p) == name)
    };
    history::truncate(
        &revision_api,
        &history::owned(
            &shared.revisions,
            &ns,
            set.metadata.uid.as_deref().unwrap_or_default(),
        ),
        live,
        set.spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    Ok(Action::await_change())
}

fn record_pod(shared: &Shared, set: &StatefulSet, verb: &str, pod: &str, error: Option<&str>) {
    let (type_, reason, message) = match error {
        None => (
            Type::Normal,
            format!("Successful{verb}"),
            format!(
                "{} Pod {pod} in StatefulSet {} successful",
                verb.to_lowercase(),
                set.name_any()
            ),
        ),
        Some(e) => (
            Type::Warning,
            format!("Failed{verb}"),
            format!(
                "{} Pod {pod} in StatefulSet {} failed error: {e}",
                verb.to_lowercase(),
                set.name_any()
            ),
        ),
    };
    shared
        .recorder
        .record(set.object_ref(&()), type_, &reason, message);
}

fn retention<'a>(set: &'a StatefulSet, when: &str) -> &'a str {
    let policy = set.spec.persistent_volume_claim_retention_policy.as_ref();
    let value = match when {
        "deleted" => policy.and_then(|p| p.when_deleted.as_deref()),
        _ => policy.and_then(|p| p.when_scaled.as_deref()),
    };
    value.unwrap_or("Retain")
}

/// An owner reference that makes the garbage collector delete a claim
/// with its owner without making the owner its controller.
fn claim_owner<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        controller: None,
        block_owner_deletion: None,
        ..ownerref::controller_ref(owner)
    }
}

/// Makes the claims of `ordinal`'s pod that do not exist yet.
async fn create_claims(shared: &Shared, set: &StatefulSet, ordinal: i32) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
    let pod = identity::pod_name(set, ordinal);
    for mut claim in identity::claims(set, ordinal) {
        let name = claim.name_any();
        if shared
            .claims
            .get(&ObjectRef::new(&name).within(&ns))
            .is_some()
        {
            continue;
        }
        if retention(set, "deleted") == "Delete" {
            claim.metadata.owner_references = Some(vec![claim_owner(set)]);
        }
        let (type_, reason, message) = match api.create(&PostParams::default(), &claim).await {
            Ok(_) => (
                Type::Normal,
                "SuccessfulCreate",
                format!(
                    "create Claim {name} Pod {pod} in StatefulSet {} success",
                    set.name_any()
                ),
            ),
            Err(e) if is_reason(&e, "AlreadyExists") => continue,
            Err(e) => {
                let message = format!(
                    "create Claim {name} for Pod {pod} in StatefulSet {} failed error: {}",
                    set.name_any(),
                    api_message(&e)
                );
                shared
                    .recorder
                    .record(set.object_ref(&()), Type::Warning, "FailedCreate", message);
                return Err(e.into());
            }
        };
        shared
            .recorder
            .record(set.object_ref(&()), type_, reason, message);
    }
    Ok(())
}

async fn create_pods<'a>(
    shared: &Shared,
    set: &StatefulSet,
    api: &Api<Pod>,
    ordinals: &[i32],
    revision_for: impl Fn(i32) -> &'a ControllerRevision,
) -> Result<(), Error> {
    if ordinals.is_empty() {
        return Ok(());
    }
    let set_key = &key(&set.metadata);
    shared
        .expectations
        .expect_creations(set_key, ordinals.len());
    let results = join_all(ordinals.iter().map(|&ordinal| {
        let revision = revision_for(ordinal);
        async move {
            let result = async {
                create_claims(shared, set, ordinal).await?;
                let pod =
                    identity::pod_for(set, &template_of(revision)?, &revision.name_any(), ordinal);
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        record_pod(shared, set, "Create", &pod.name_any(), None);
                        Ok(true)
                    }
                    // Made by an earlier sync the cache has not shown yet.
                    Err(e) if is_reason(&e, "AlreadyExists") => Ok(false),
                    Err(e) => {
                        record_pod(
                            shared,
                            set,
                            "Create",
                            &pod.name_any(),
                            Some(&api_message(&e)),
                        );
                        Err(Error::from(e))
                    }
                }
            }
            .await;
            if !matches!(result, Ok(true)) {
                shared.expectations.creation_observed(set_key);
            }
            result
        }
    }))
    .await;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

async fn delete_pods(
    shared: &Shared,
    set: &StatefulSet,
    api: &Api<Pod>,
    pods: &[(Arc<Pod>, bool)],
) -> Result<(), Error> {
    if pods.is_empty() {
        return Ok(());
    }
    let set_key = &key(&set.metadata);
    shared.expectations.expect_deletions(
        set_key,
        pods.iter().map(|(p, _)| key(&p.metadata)).collect(),
    );
    let results = join_all(pods.iter().map(|(pod, condemned)| async move {
        let result = async {
            if *condemned && retention(set, "scaled") == "Delete" {
                own_claims_by(shared, set, pod).await?;
            }
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    record_pod(shared, set, "Delete", &pod.name_any(), None);
                    Ok(())
                }
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => {
                    record_pod(
                        shared,
                        set,
                        "Delete",
                        &pod.name_any(),
                        Some(&api_message(&e)),
                    );
                    Err(Error::from(e))
                }
            }
        }
        .await;
        if result.is_err() {
            shared
                .expectations
                .deletion_observed(set_key, &key(&pod.metadata));
        }
        result
    }))
    .await;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

/// Hands the claims of a pod being scaled away to the pod, so they go with it.
async fn own_claims_by(shared: &Shared, set: &StatefulSet, pod: &Pod) -> Result<(), Error> {
    let Some(ordinal) = identity::ordinal(set, pod) else {
        return Ok(());
    };
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &ns);
    let owner = claim_owner(pod);
    for claim in identity::claims(set, ordinal) {
        let Some(existing) = shared
            .claims
            .get(&ObjectRef::new(&claim.name_any()).within(&ns))
        else {
            continue;
        };
        let mut refs = existing
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        if refs.iter().any(|r| r.uid == owner.uid) {
            continue;
        }
        refs.push(owner.clone());
        let patch = json!({"metadata": {"ownerReferences": refs}});
        match api
            .patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
