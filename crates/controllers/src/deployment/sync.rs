//! One sync of one Deployment: finding or creating its new ReplicaSet,
//! scaling, cleaning up old revisions, and the status with its progress
//! conditions (upstream's sync.go and progress.go).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::Type;

use super::Shared;
use super::util::{self, POD_TEMPLATE_HASH};
use crate::ownerref;
use crate::{Error, is_not_found, is_reason, namespace_terminating};

pub(super) struct Sync<'a> {
    shared: &'a Shared,
    /// The Deployment as this sync changes it.
    pub d: Deployment,
    deployments: Api<Deployment>,
    sets: Api<ReplicaSet>,
    now: Time,
}

impl<'a> Sync<'a> {
    pub fn new(shared: &'a Shared, d: Deployment) -> Self {
        let ns = d.namespace().unwrap_or_default();
        Self {
            deployments: Api::namespaced(shared.client.clone(), &ns),
            sets: Api::namespaced(shared.client.clone(), &ns),
            shared,
            d,
            now: crate::now(),
        }
    }

    pub fn event(&self, type_: Type, reason: &str, message: String) {
        self.shared
            .recorder
            .record(self.d.object_ref(&()), type_, reason, message);
    }

    /// Writes the Deployment's status (and annotations, which the status
    /// subresource takes too), keeping the new resourceVersion for the
    /// next write of this sync.
    pub async fn update_status(&mut self) -> Result<(), Error> {
        let written = self
            .deployments
            .replace_status(&self.d.name_any(), &PostParams::default(), &self.d)
            .await?;
        self.d.metadata.resource_version = written.metadata.resource_version;
        Ok(())
    }

    pub async fn clear_rollback_to(&mut self) -> Result<(), Error> {
        if let Some(a) = self.d.metadata.annotations.as_mut() {
            a.remove(util::ROLLBACK_TO);
        }
        let written = self
            .deployments
            .replace(&self.d.name_any(), &PostParams::default(), &self.d)
            .await?;
        self.d.metadata.resource_version = written.metadata.resource_version;
        Ok(())
    }

    /// The new ReplicaSet (created if `create` and missing) and every old
    /// one, with the new one's revision brought up to date.
    pub async fn all_replica_sets(
        &mut self,
        rs_list: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let old = util::find_old(&self.d, rs_list);
        let new = self.new_replica_set(rs_list, &old, create).await?;
        Ok((new, old))
    }

    async fn new_replica_set(
        &mut self,
        rs_list: &[ReplicaSet],
        old: &[ReplicaSet],
        create: bool,
    ) -> Result<Option<ReplicaSet>, Error> {
        let new_revision = util::max_revision(old) + 1;
        if let Some(existing) = util::find_new(&self.d, rs_list) {
            let mut rs = existing.clone();
            let annotations_updated = util::set_new_rs_annotations(
                &self.d,
                &mut rs,
                new_revision,
                true,
                util::MAX_REVISION_HISTORY_CHARS,
            );
            let min_ready = util::min_ready_seconds(&self.d);
            if annotations_updated || rs.spec.min_ready_seconds != min_ready {
                rs.spec.min_ready_seconds = min_ready;
                let written = self
                    .sets
                    .replace(&rs.name_any(), &PostParams::default(), &rs)
                    .await?;
                return Ok(Some(written));
            }
            let revision = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(util::REVISION))
                .cloned()
                .unwrap_or_default();
            let mut needs_update = self.set_revision(&revision);
            let has_progressing = self
                .d
                .status
                .as_ref()
                .and_then(|s| util::get_condition(s, util::PROGRESSING))
                .is_some();
            if util::progress_deadline(&self.d).is_some() && !has_progressing {
                self.set_progressing(
                    "True",
                    util::FOUND_NEW_RS,
                    format!("Found new replica set {:?}", rs.name_any()),
                );
                needs_update = true;
            }
            if needs_update {
                self.update_status().await?;
            }
            return Ok(Some(rs));
        }
        if !create {
            return Ok(None);
        }

        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let mut template = util::template(&self.d);
        let hash = util::compute_hash(&template, collision_count);
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector = self.d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{hash}", self.d.name_any());
        let mut new_rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                owner_references: Some(vec![ownerref::controller_ref(&self.d)]),
                labels,
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: util::min_ready_seconds(&self.d),
                selector,
                template: Some(template),
            },
            status: None,
        };
        let mut all = old.to_vec();
        all.push(new_rs.clone());
        let count = util::new_rs_new_replicas(&self.d, &all, &new_rs);
        util::set_rs_replicas(&mut new_rs, count);
        util::set_new_rs_annotations(
            &self.d,
            &mut new_rs,
            new_revision,
            false,
            util::MAX_REVISION_HISTORY_CHARS,
        );
        let mut already_existed = false;
        let created = match self.sets.create(&PostParams::default(), &new_rs).await {
            Ok(rs) => rs,
            Err(e) if is_reason(&e, "AlreadyExists") => {
                let existing = self.shared.sets.get(
                    &kube::runtime::reflector::ObjectRef::new(&name)
                        .within(&self.d.namespace().unwrap_or_default()),
                );
                let ours = existing.as_ref().filter(|rs| {
                    ownerref::controller_of(&rs.metadata).map(|r| &r.uid)
                        == self.d.metadata.uid.as_ref()
                        && util::equal_ignoring_hash(
                            &util::template(&self.d),
                            &util::rs_template(rs),
                        )
                });
                match ours {
                    Some(rs) => {
                        already_existed = true;
                        (**rs).clone()
                    }
                    None => {
                        // Another object holds the name: the next hash differs.
                        let status = self.d.status.get_or_insert_with(Default::default);
                        status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                        self.update_status().await?;
                        return Err(e.into());
                    }
                }
            }
            Err(e) if namespace_terminating(&e) => return Err(e.into()),
            Err(e) => {
                let msg = format!(
                    "Failed to create new replica set {name:?}: {}",
                    crate::api_message(&e)
                );
                if util::progress_deadline(&self.d).is_some() {
                    self.set_progressing("False", util::FAILED_RS_CREATE, msg.clone());
                    let _ = self.update_status().await;
                }
                self.event(Type::Warning, util::FAILED_RS_CREATE, msg);
                return Err(e.into());
            }
        };
        if !already_existed && count > 0 {
            self.event(
                Type::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled up replica set {} from 0 to {count}",
                    created.name_any()
                ),
            );
        }
        let mut needs_update = self.set_revision(&new_revision.to_string());
        if !already_existed && util::progress_deadline(&self.d).is_some() {
            self.set_progressing(
                "True",
                util::NEW_RS_CREATED,
                format!("Created new replica set {:?}", created.name_any()),
            );
            needs_update = true;
        }
        if needs_update {
            self.update_status().await?;
        }
        Ok(Some(created))
    }

    /// Sets the Progressing condition of the status being written.
    fn set_progressing(&mut self, status: &str, reason: &str, message: String) {
        let c = util::new_condition(util::PROGRESSING, status, reason, message, &self.now);
        util::set_condition(self.d.status.get_or_insert_with(Default::default), c);
    }

    /// Sets the Deployment's revision annotation; whether it changed.
    fn set_revision(&mut self, revision: &str) -> bool {
        let annotations = self
            .d
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        if annotations.get(util::REVISION).map(String::as_str) == Some(revision) {
            return false;
        }
        annotations.insert(util::REVISION.into(), revision.to_owned());
        true
    }

    /// Only the status, for a Deployment being deleted.
    pub async fn status_only(&mut self, rs_list: &[ReplicaSet]) -> Result<(), Error> {
        let (new, old) = self.all_replica_sets(rs_list, false).await?;
        let mut all = old;
        all.extend(new.clone());
        self.sync_status(&all, new.as_ref()).await
    }

    /// Scaling events and paused Deployments: sizes change, templates do not.
    pub async fn sync(&mut self, rs_list: &[ReplicaSet]) -> Result<(), Error> {
        let (new, old) = self.all_replica_sets(rs_list, false).await?;
        self.scale(new.as_ref(), &old).await?;
        if util::paused(&self.d) && super::rollback_to(&self.d).is_none() {
            self.cleanup(&old).await?;
        }
        let mut all = old;
        all.extend(new.clone());
        self.sync_status(&all, new.as_ref()).await
    }

    /// The Progressing condition says paused or resumed, so time spent
    /// paused never counts against the progress deadline.
    pub async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        if util::progress_deadline(&self.d).is_none() {
            return Ok(());
        }
        let status = self.d.status.clone().unwrap_or_default();
        let reason = util::get_condition(&status, util::PROGRESSING).and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(util::TIMED_OUT) {
            return Ok(());
        }
        let paused_condition = reason.as_deref() == Some(util::PAUSED);
        match (util::paused(&self.d), paused_condition) {
            (true, false) => {
                self.set_progressing("Unknown", util::PAUSED, "Deployment is paused".into())
            }
            (false, true) => {
                self.set_progressing("Unknown", util::RESUMED, "Deployment is resumed".into())
            }
            _ => return Ok(()),
        }
        self.update_status().await
    }

    /// Whether an active ReplicaSet was sized for another replica count.
    pub async fn is_scaling_event(&mut self, rs_list: &[ReplicaSet]) -> Result<bool, Error> {
        let (new, old) = self.all_replica_sets(rs_list, false).await?;
        let mut all = old;
        all.extend(new);
        let want = util::replicas(&self.d);
        Ok(util::active(&all)
            .iter()
            .filter_map(util::desired_replicas_annotation)
            .any(|desired| desired != want))
    }

    /// Brings the ReplicaSets to the Deployment's size: the only active one
    /// directly, the old ones to 0 once the new is saturated, or all in
    /// proportion mid-rollout (upstream's scale).
    pub async fn scale(
        &mut self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let want = util::replicas(&self.d);
        if let Some(only) = util::find_active_or_latest(new, old) {
            if util::rs_replicas(&only) == want {
                return Ok(());
            }
            self.scale_and_record(&only, want).await?;
            return Ok(());
        }
        if util::is_saturated(&self.d, new) {
            for rs in util::active(old) {
                self.scale_and_record(&rs, 0).await?;
            }
            return Ok(());
        }
        if util::is_rolling_update(&self.d) {
            let mut all = old.to_vec();
            all.extend(new.cloned());
            let mut active = util::active(&all);
            let (sizes, operation) = util::proportional_sizes(&self.d, &mut active);
            for (rs, size) in active.iter().zip(sizes) {
                self.scale_replica_set(rs, size, operation).await?;
            }
        }
        Ok(())
    }

    /// Scales `rs` to `size` unless it has it; whether it was scaled, and
    /// the ReplicaSet as written.
    pub async fn scale_and_record(
        &mut self,
        rs: &ReplicaSet,
        size: i32,
    ) -> Result<(bool, ReplicaSet), Error> {
        let current = util::rs_replicas(rs);
        if current == size {
            return Ok((false, rs.clone()));
        }
        let operation = if current < size { "up" } else { "down" };
        self.scale_replica_set(rs, size, operation).await
    }

    async fn scale_replica_set(
        &mut self,
        rs: &ReplicaSet,
        size: i32,
        operation: &str,
    ) -> Result<(bool, ReplicaSet), Error> {
        let want = util::replicas(&self.d);
        let max = want + util::max_surge(&self.d);
        let current = util::rs_replicas(rs);
        let resize = current != size;
        if !resize && !util::replicas_annotations_need_update(rs, want, max) {
            return Ok((false, rs.clone()));
        }
        let mut copy = rs.clone();
        util::set_rs_replicas(&mut copy, size);
        util::set_replicas_annotations(&mut copy, want, max);
        let written = self
            .sets
            .replace(&copy.name_any(), &PostParams::default(), &copy)
            .await?;
        if resize {
            self.event(
                Type::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {operation} replica set {} from {current} to {size}",
                    written.name_any()
                ),
            );
        }
        Ok((resize, written))
    }

    /// Deletes the oldest of the empty old ReplicaSets beyond revisionHistoryLimit.
    pub async fn cleanup(&mut self, old: &[ReplicaSet]) -> Result<(), Error> {
        let Some(limit) = util::revision_history_limit(&self.d) else {
            return Ok(());
        };
        let mut cleanable: Vec<ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        // Oldest revision first (unreadable ones as 0), then creation.
        cleanable.sort_by(|a, b| {
            let r = |rs: &ReplicaSet| util::revision(rs).unwrap_or(0);
            r(a).cmp(&r(b)).then_with(|| util::by_creation(a, b))
        });
        for rs in cleanable.iter().take(excess as usize) {
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas != 0
                || util::rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0)
                || rs.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            match self
                .sets
                .delete(&rs.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes the status the ReplicaSets make, if it changed.
    pub async fn sync_status(
        &mut self,
        all: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<(), Error> {
        let status = util::calculate_status(all, new, &self.d, &self.now);
        if self.d.status.clone().unwrap_or_default() == status {
            return Ok(());
        }
        self.d.status = Some(status);
        self.update_status().await
    }

    /// The status with the Progressing condition brought up to date
    /// (upstream's syncRolloutStatus); returns when to check the progress
    /// deadline again.
    pub async fn sync_rollout_status(
        &mut self,
        all: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<Option<Duration>, Error> {
        let d = &self.d;
        let mut status = util::calculate_status(all, new, d, &self.now);
        let deadline = util::progress_deadline(d);
        if deadline.is_none() {
            util::remove_condition(&mut status, util::PROGRESSING);
        }
        let current = d
            .status
            .as_ref()
            .and_then(|s| util::get_condition(s, util::PROGRESSING))
            .cloned();
        let complete_already = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(util::NEW_RS_AVAILABLE);
        if deadline.is_some() && !complete_already {
            let subject = |what: &str| match new {
                Some(rs) => format!("ReplicaSet {:?} {what}.", rs.name_any()),
                None => format!("Deployment {:?} {what}.", d.name_any()),
            };
            if util::complete(d, &status) {
                let c = util::new_condition(
                    util::PROGRESSING,
                    "True",
                    util::NEW_RS_AVAILABLE,
                    subject("has successfully progressed"),
                    &self.now,
                );
                util::set_condition(&mut status, c);
            } else if util::progressing(d, &status) {
                let mut c = util::new_condition(
                    util::PROGRESSING,
                    "True",
                    util::RS_UPDATED,
                    subject("is progressing"),
                    &self.now,
                );
                if let Some(current) = &current {
                    if current.status.as_deref() == Some("True") {
                        c.last_transition_time = current.last_transition_time.clone();
                    }
                    util::remove_condition(&mut status, util::PROGRESSING);
                }
                util::set_condition(&mut status, c);
            } else if util::timed_out(d, &status, self.now.0) {
                let c = util::new_condition(
                    util::PROGRESSING,
                    "False",
                    util::TIMED_OUT,
                    subject("has timed out progressing"),
                    &self.now,
                );
                util::set_condition(&mut status, c);
            }
        }
        match replica_failure(all, new) {
            Some(c) => util::set_condition(&mut status, c),
            None => util::remove_condition(&mut status, util::REPLICA_FAILURE),
        }
        if d.status.clone().unwrap_or_default() == status {
            return Ok(self.requeue_stuck(&status));
        }
        self.d.status = Some(status);
        self.update_status().await?;
        Ok(None)
    }

    /// When to look again to catch the progress deadline passing.
    fn requeue_stuck(
        &self,
        status: &k8s_openapi::api::apps::v1::DeploymentStatus,
    ) -> Option<Duration> {
        let deadline = util::progress_deadline(&self.d)?;
        let current = util::get_condition(self.d.status.as_ref()?, util::PROGRESSING)?;
        if util::complete(&self.d, status) || current.reason.as_deref() == Some(util::TIMED_OUT) {
            return None;
        }
        let from = current.last_update_time.as_ref()?.0;
        let at = from
            .checked_add(SignedDuration::from_secs(i64::from(deadline)))
            .ok()?;
        let after = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
        Some(after + Duration::from_secs(1))
    }
}

/// The new ReplicaSet's ReplicaFailure condition, else any old one's, as
/// a Deployment condition.
fn replica_failure(
    all: &[ReplicaSet],
    new: Option<&ReplicaSet>,
) -> Option<k8s_openapi::api::apps::v1::DeploymentCondition> {
    let failure = |rs: &ReplicaSet| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_.as_deref() == Some(util::REPLICA_FAILURE))
            .cloned()
    };
    new.and_then(failure)
        .or_else(|| all.iter().find_map(failure))
        .map(|c| k8s_openapi::api::apps::v1::DeploymentCondition {
            type_: c.type_,
            status: c.status,
            reason: c.reason,
            message: c.message,
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time,
        })
}
