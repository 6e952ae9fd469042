//! Which controllers a pod change concerns, as upstream's addPod, updatePod
//! and deletePod handlers of every pod-owning controller (ReplicaSet, Job,
//! DaemonSet, StatefulSet): the pod's controller before and after the
//! change, or, for an orphan, every controller whose selector matches it,
//! to see whether one adopts it. Creations and deletions seen are recorded
//! as fulfilled expectations on the way.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::{Selector, SelectorExt};
use kube::runtime::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::expectations::Expectations;
use crate::{Change, Informed, Informer, ownerref, pods};

/// A controller of pods chosen by a label selector.
pub trait Selecting: Informed {
    fn selector(&self) -> Result<Selector, String>;
}

/// `namespace/name`, the key expectations are kept under.
pub fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Routes pod changes to the controllers of kind `K` in `owners`.
pub struct PodOwners<'a, K: Selecting> {
    pub owners: &'a Store<K>,
    pub expectations: &'a Expectations,
}

impl<K: Selecting> PodOwners<'_, K> {
    pub fn pod_changed(&self, change: Change<Pod>) -> Vec<ObjectRef<K>> {
        match change {
            Change::Applied { old: None, new } => {
                if new.metadata.deletion_timestamp.is_some() {
                    // Seen for the first time already terminating.
                    return self.pod_deleted(&new);
                }
                if let Some(r) = ownerref::controller_of(&new.metadata) {
                    return self
                        .resolve(&new, r)
                        .map(|owner| {
                            self.expectations.creation_observed(&key(owner.meta()));
                            vec![ObjectRef::from_obj(&*owner)]
                        })
                        .unwrap_or_default();
                }
                self.selecting(&new)
            }
            Change::Applied {
                old: Some(old),
                new,
            } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return Vec::new();
                }
                let labels_changed = old.metadata.labels != new.metadata.labels;
                if new.metadata.deletion_timestamp.is_some() {
                    let mut refs = self.pod_deleted(&new);
                    if labels_changed {
                        refs.extend(self.pod_deleted(&old));
                    }
                    return refs;
                }
                let old_ref = ownerref::controller_of(&old.metadata);
                let new_ref = ownerref::controller_of(&new.metadata);
                let mut refs = Vec::new();
                if old_ref != new_ref
                    && let Some(owner) = old_ref.and_then(|r| self.resolve(&old, r))
                {
                    refs.push(ObjectRef::from_obj(&*owner));
                }
                match new_ref {
                    Some(r) => refs.extend(self.resolve(&new, r).map(|o| ObjectRef::from_obj(&*o))),
                    None if labels_changed || old_ref != new_ref => {
                        refs.extend(self.selecting(&new))
                    }
                    None => {}
                }
                refs
            }
            Change::Deleted(pod) => self.pod_deleted(&pod),
        }
    }

    fn pod_deleted(&self, pod: &Pod) -> Vec<ObjectRef<K>> {
        let Some(owner) = ownerref::controller_of(&pod.metadata).and_then(|r| self.resolve(pod, r))
        else {
            return Vec::new();
        };
        self.expectations
            .deletion_observed(&key(owner.meta()), &key(&pod.metadata));
        vec![ObjectRef::from_obj(&*owner)]
    }

    /// The controller `r` (on `pod`) names, if it is still there.
    pub fn resolve(&self, pod: &Pod, r: &OwnerReference) -> Option<Arc<K>> {
        ownerref::resolve(self.owners, &pod.namespace().unwrap_or_default(), r)
    }

    fn selecting(&self, pod: &Pod) -> Vec<ObjectRef<K>> {
        let labels = pods::labels(&pod.metadata);
        self.owners
            .state()
            .into_iter()
            .filter(|o| o.meta().namespace == pod.metadata.namespace)
            .filter(|o| {
                o.selector()
                    .is_ok_and(|s| !labels.is_empty() && s.matches(labels))
            })
            .map(|o| ObjectRef::from_obj(&*o))
            .collect()
    }
}

/// The shared state of a pod-owning controller, as the wiring reads it.
pub trait OwnsPods: Send + Sync + 'static {
    type Owner: Selecting;

    fn owners(&self) -> &Store<Self::Owner>;

    fn expectations(&self) -> &Expectations;

    /// A deleted owner's expectations go, so one recreated under its name
    /// starts clean.
    fn owner_deleted(&self, owner: &Self::Owner) {
        self.expectations().forget(&key(owner.meta()));
    }

    /// The owners a pod change concerns.
    fn pod_changed(&self, change: Change<Pod>) -> Vec<ObjectRef<Self::Owner>> {
        PodOwners {
            owners: self.owners(),
            expectations: self.expectations(),
        }
        .pod_changed(change)
    }
}

/// The work queue of a pod-owning controller (upstream's informer event
/// handlers of ReplicaSet, Job, DaemonSet and StatefulSet): an owner is
/// reconciled when it changes and when one of its pods does, and its
/// expectations are dropped when it is deleted.
pub fn controller<S: OwnsPods>(
    shared: &Arc<S>,
    owners: &Informer<S::Owner>,
    pods: &Informer<Pod>,
) -> Controller<S::Owner> {
    let on_owner = shared.clone();
    let owner_changes = owners.changes().map(move |change| {
        if let Change::Deleted(gone) = &change {
            on_owner.owner_deleted(gone);
        }
        change.object().clone()
    });
    let on_pod = shared.clone();
    let pod_triggers = pods
        .changes()
        .flat_map(move |change| futures::stream::iter(on_pod.pod_changed(change)));
    Controller::for_shared_stream(owner_changes, owners.store()).reconcile_on(pod_triggers)
}
