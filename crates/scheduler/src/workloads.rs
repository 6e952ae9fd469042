//! The workloads a pod belongs to, as upstream's DefaultSelector finds
//! them: the Services selecting it and the ReplicationController,
//! ReplicaSet or StatefulSet controlling it. Their selectors, together,
//! say which pods the system default spread constraints spread it from.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

/// The scheduler's views of the workload kinds.
pub struct Workloads {
    pub services: Store<Service>,
    pub replication_controllers: Store<ReplicationController>,
    pub replica_sets: Store<ReplicaSet>,
    pub stateful_sets: Store<StatefulSet>,
}

/// Whether every label of `selector` is on the pod (an empty one selects
/// nothing here: a Service without a selector has no pods of its own).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Workloads {
    /// The pods `pod`'s workloads select, or `None` when it belongs to none.
    pub fn selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let ns = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        let mut match_labels = BTreeMap::new();
        for svc in self.services.state() {
            if svc.metadata.namespace.as_deref() != Some(ns.as_str()) {
                continue;
            }
            if let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref())
                && selects(selector, labels)
            {
                match_labels.extend(selector.clone());
            }
        }
        let mut match_expressions = Vec::new();
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        if let Some(owner) = owner {
            let controller_selector = match (owner.api_version.as_str(), owner.kind.as_str()) {
                ("v1", "ReplicationController") => self
                    .replication_controllers
                    .get(&ObjectRef::new(&owner.name).within(&ns))
                    .and_then(|rc| rc.spec.as_ref()?.selector.clone())
                    .map(|labels| LabelSelector {
                        match_labels: Some(labels),
                        match_expressions: None,
                    }),
                ("apps/v1", "ReplicaSet") => self
                    .replica_sets
                    .get(&ObjectRef::new(&owner.name).within(&ns))
                    .map(|rs| rs.spec.selector.clone()),
                ("apps/v1", "StatefulSet") => self
                    .stateful_sets
                    .get(&ObjectRef::new(&owner.name).within(&ns))
                    .map(|ss| ss.spec.selector.clone()),
                _ => None,
            };
            if let Some(s) = controller_selector {
                match_labels.extend(s.match_labels.unwrap_or_default());
                match_expressions.extend(s.match_expressions.unwrap_or_default());
            }
        }
        (!match_labels.is_empty() || !match_expressions.is_empty()).then_some(LabelSelector {
            match_labels: Some(match_labels),
            match_expressions: Some(match_expressions),
        })
    }
}
