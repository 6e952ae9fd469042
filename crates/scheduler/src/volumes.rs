//! VolumeBinding, as upstream's plugin: a pod's claims must be bound to
//! volumes its node can reach, or be bindable there: to an available volume
//! of their class, or by their class's provisioner once the pod's node is
//! chosen (`WaitForFirstConsumer`). Before the pod is bound, the claims it
//! needs bound on its node are (PreBind).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use kubox_client::{PodClaim, pod_claims};
use serde_json::json;

use crate::filters::{Rejection, term_matches};
use crate::node_info::NodeInfo;
use crate::queue::Queue;
use crate::resources::amount;

pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
/// The node a provisioner is to make a claim's volume for.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set by whoever completes a claim's binding: a claim with a volume name
/// but without it is still being bound.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
/// How long PreBind waits for the claims to be bound (upstream's
/// bindTimeoutSeconds default).
const BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// What the scheduler knows of claims, volumes and classes.
pub struct Volumes {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
    /// Volumes chosen for claims whose binding is under way: no other claim
    /// may take one meanwhile (upstream's assumed volumes).
    assumed: Mutex<HashSet<String>>,
}

/// What PreBind does for one claim on the chosen node.
#[derive(Debug)]
pub enum Binding {
    /// Bind the claim to this available volume.
    Volume(Arc<PersistentVolumeClaim>, Arc<PersistentVolume>),
    /// Let the claim's provisioner make its volume for the node.
    Provision(Arc<PersistentVolumeClaim>),
}

fn chosen(bindings: &[Binding]) -> impl Iterator<Item = String> + '_ {
    bindings.iter().filter_map(|b| match b {
        Binding::Volume(_, pv) => Some(pv.name_any()),
        Binding::Provision(_) => None,
    })
}

impl Binding {
    fn claim(&self) -> &PersistentVolumeClaim {
        match self {
            Self::Volume(claim, _) | Self::Provision(claim) => claim,
        }
    }
}

/// A claim that waits for its pod's node to be bound.
struct Unbound {
    claim: Arc<PersistentVolumeClaim>,
    /// The volumes it may take on some node, smallest first.
    candidates: Vec<Arc<PersistentVolume>>,
    /// Where its class provisions (its allowedTopologies as node selector
    /// terms; none: anywhere), or None when the class does not provision.
    provision: Option<Vec<NodeSelectorTerm>>,
}

/// The pod's claims as PreFilter found them.
pub struct State {
    /// The volume of each bound claim; None: it names a volume that does not exist.
    bound: Vec<Option<Arc<PersistentVolume>>>,
    unbound: Vec<Unbound>,
}

/// The class a claim asks for ("" when none).
pub fn class_of(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// The class a volume is of ("" when none).
pub fn volume_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// Whether the claim's binding is complete (upstream's fully bound claim).
pub fn is_bound(claim: &PersistentVolumeClaim) -> bool {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
        && claim.annotations().contains_key(BIND_COMPLETED)
}

fn storage(
    resources: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> i64 {
    resources
        .and_then(|r| r.get("storage"))
        .map(|q| amount("storage", q))
        .unwrap_or(0)
}

/// A volume's storage capacity in bytes.
pub fn capacity(pv: &PersistentVolume) -> i64 {
    storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

/// The storage a claim requests, in bytes.
pub fn request(claim: &PersistentVolumeClaim) -> i64 {
    storage(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

/// Whether the volume is reserved for the claim (its claimRef names it).
pub fn bound_to(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == claim.metadata.name
        && r.namespace == claim.metadata.namespace
        && r.uid
            .as_ref()
            .is_none_or(|uid| Some(uid) == claim.metadata.uid.as_ref())
}

/// Whether the volume may serve the claim on some node: upstream's
/// FindMatchingVolume but for node affinity, which `Unbound::volume_on` checks
/// (the PV binder, which binds without a node, shares it).
pub fn may_take(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let (Some(spec), Some(wanted)) = (pv.spec.as_ref(), claim.spec.as_ref()) else {
        return false;
    };
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_owned();
    if capacity(pv) < request(claim)
        || mode(spec.volume_mode.as_ref()) != mode(wanted.volume_mode.as_ref())
        || pv.metadata.deletion_timestamp.is_some()
    {
        return false;
    }
    if bound_to(pv, claim) {
        return true;
    }
    let available = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available");
    let selected = wanted
        .selector
        .clone()
        .map(Selector::try_from)
        .is_none_or(|s| s.is_ok_and(|s| s.matches(pv.labels())));
    let modes = spec.access_modes.as_deref().unwrap_or_default();
    available
        && spec.claim_ref.is_none()
        && selected
        && volume_class(pv) == class_of(claim)
        && wanted
            .access_modes
            .iter()
            .flatten()
            .all(|m| modes.contains(m))
}

/// Whether a volume may be used on the node by its node affinity.
fn reachable(pv: &PersistentVolume, info: &NodeInfo) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, info)))
}

/// Keeps a store of every `K`, slimmed, and tries unschedulable pods again
/// whenever one is added or changed: a claim, volume or class may be what
/// they waited for (upstream's VolumeBinding events).
pub fn follow<K: kubox_client::Followed>(
    client: kube::Client,
    slim: fn(&mut K),
    queue: Arc<Queue>,
) -> (Store<K>, tokio::task::JoinHandle<()>) {
    kubox_client::follow_slim(client, slim, move |event| {
        // After a relist: it may have missed changes.
        if matches!(event, watcher::Event::Apply(_) | watcher::Event::InitDone) {
            queue.move_all_to_active()
        }
    })
}

impl Volumes {
    pub fn new(
        claims: Store<PersistentVolumeClaim>,
        volumes: Store<PersistentVolume>,
        classes: Store<StorageClass>,
    ) -> Self {
        Self {
            claims,
            volumes,
            classes,
            assumed: Mutex::default(),
        }
    }

    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        (!name.is_empty())
            .then(|| self.classes.get(&ObjectRef::new(name)))
            .flatten()
    }

    /// Volumes chosen for a pod whose binding is under way.
    pub fn assume(&self, bindings: &[Binding]) {
        crate::lock(&self.assumed).extend(chosen(bindings));
    }

    /// The binding is over, done or failed: the store tells from now on.
    pub fn forget(&self, bindings: &[Binding]) {
        let mut assumed = crate::lock(&self.assumed);
        for name in chosen(bindings) {
            assumed.remove(&name);
        }
    }

    /// Writes what each claim needs to be bound on `node`, then waits until
    /// every one is (upstream's BindPodVolumes): errors in upstream's words.
    pub async fn bind(
        &self,
        client: &kube::Client,
        bindings: &[Binding],
        node: &str,
    ) -> Result<(), String> {
        let fail = |e: kube::Error| format!("binding volumes: {e}");
        for b in bindings {
            let claim = b.claim();
            let ns = claim.namespace().unwrap_or_default();
            match b {
                Binding::Volume(claim, pv) => {
                    let claim_ref = json!({"spec": {"claimRef": {
                        "kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns,
                        "name": claim.name_any(), "uid": claim.metadata.uid,
                    }}});
                    Api::<PersistentVolume>::all(client.clone())
                        .patch(
                            &pv.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(claim_ref),
                        )
                        .await
                        .map_err(fail)?;
                }
                Binding::Provision(claim) => {
                    let selected = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
                    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                        .patch(
                            &claim.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(selected),
                        )
                        .await
                        .map_err(fail)?;
                }
            }
        }
        let all_bound = async {
            for b in bindings {
                let claim = b.claim();
                let api = Api::<PersistentVolumeClaim>::namespaced(
                    client.clone(),
                    &claim.namespace().unwrap_or_default(),
                );
                let done = |c: Option<&PersistentVolumeClaim>| c.is_some_and(is_bound);
                kube::runtime::wait::await_condition(api, &claim.name_any(), done)
                    .await
                    .map_err(|e| format!("binding volumes: {e}"))?;
            }
            Ok(())
        };
        tokio::time::timeout(BIND_TIMEOUT, all_bound)
            .await
            .map_err(|_| "binding volumes: context deadline exceeded".to_owned())?
    }
}

impl State {
    /// Upstream's PreFilter: None for a pod without claims (the plugin is
    /// skipped), else its claims' state, or why no node can take the pod.
    pub fn new(pod: &Pod, volumes: &Volumes) -> Result<Option<Self>, String> {
        let names: Vec<PodClaim> = pod_claims(pod).collect();
        if names.is_empty() {
            return Ok(None);
        }
        let ns = pod.namespace().unwrap_or_default();
        let mut claims = Vec::new();
        for PodClaim { name, ephemeral } in names {
            let Some(claim) = volumes.claims.get(&ObjectRef::new(&name).within(&ns)) else {
                return Err(if ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim {name:?}"
                    )
                } else {
                    format!("persistentvolumeclaim {name:?} not found")
                });
            };
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") {
                let volume = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
                return Err(format!(
                    "persistentvolumeclaim {name:?} bound to non-existent persistentvolume {:?}",
                    volume.unwrap_or_default()
                ));
            }
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            let owned = claim
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == pod.metadata.uid.as_ref());
            if ephemeral && !owned {
                return Err(format!(
                    "PVC {ns}/{name} was not created for pod {ns}/{} (pod is not owner)",
                    pod.name_any()
                ));
            }
            claims.push(claim);
        }
        let mut state = Self {
            bound: Vec::new(),
            unbound: Vec::new(),
        };
        let mut immediate = false;
        let assumed = crate::lock(&volumes.assumed).clone();
        for claim in claims {
            if is_bound(&claim) {
                let name = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
                state
                    .bound
                    .push(name.and_then(|n| volumes.volumes.get(&ObjectRef::new(&n))));
                continue;
            }
            let class = volumes.class(class_of(&claim));
            let delayed = class
                .as_ref()
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            if !delayed {
                immediate = true;
                continue;
            }
            let mut candidates: Vec<Arc<PersistentVolume>> = volumes
                .volumes
                .state()
                .into_iter()
                .filter(|pv| !assumed.contains(&pv.name_any()) && may_take(pv, &claim))
                .collect();
            candidates.sort_by_key(|pv| capacity(pv));
            let provision = class
                .filter(|c| c.provisioner != NO_PROVISIONER)
                .map(|c| topology_terms(&c));
            state.unbound.push(Unbound {
                claim,
                candidates,
                provision,
            });
        }
        if immediate {
            return Err(UNBOUND_IMMEDIATE.to_owned());
        }
        // Smallest claims choose first, as upstream's.
        state.unbound.sort_by_key(|u| request(&u.claim));
        Ok(Some(state))
    }

    /// The pod's claims on one node: why the node cannot take them, or
    /// what binds each unbound one there (upstream's FindPodVolumes).
    pub fn find(&self, info: &NodeInfo) -> Result<Vec<Binding>, Rejection> {
        for pv in &self.bound {
            match pv {
                None => return Err(Rejection::unresolvable(PV_NOT_EXIST)),
                Some(pv) if !reachable(pv, info) => {
                    return Err(Rejection::unresolvable(NODE_CONFLICT));
                }
                Some(_) => {}
            }
        }
        let mut bindings = Vec::new();
        let mut taken: Vec<&str> = Vec::new();
        for u in &self.unbound {
            let claim = &u.claim;
            if let Some(selected) = claim.annotations().get(SELECTED_NODE) {
                if selected != info.name() {
                    return Err(Rejection::unresolvable(BIND_CONFLICT));
                }
            } else if let Some(pv) = u.candidates.iter().find(|pv| {
                !taken.contains(&pv.metadata.name.as_deref().unwrap_or_default())
                    && reachable(pv, info)
            }) {
                taken.push(pv.metadata.name.as_deref().unwrap_or_default());
                bindings.push(Binding::Volume(claim.clone(), pv.clone()));
                continue;
            }
            let provisions_here = u.provision.as_ref().is_some_and(|terms| {
                terms.is_empty() || terms.iter().any(|t| term_matches(t, info))
            });
            if !provisions_here {
                return Err(Rejection::unresolvable(BIND_CONFLICT));
            }
            bindings.push(Binding::Provision(claim.clone()));
        }
        Ok(bindings)
    }

    pub fn filter(&self, info: &NodeInfo) -> Result<(), Rejection> {
        self.find(info).map(drop)
    }
}

/// A class's allowedTopologies as node selector terms, so that one matcher
/// judges them and volumes' node affinity.
fn topology_terms(class: &StorageClass) -> Vec<NodeSelectorTerm> {
    class
        .allowed_topologies
        .iter()
        .flatten()
        .map(|t| NodeSelectorTerm {
            match_expressions: Some(
                t.match_label_expressions
                    .iter()
                    .flatten()
                    .map(|e| NodeSelectorRequirement {
                        key: e.key.clone(),
                        operator: "In".into(),
                        values: Some(e.values.clone()),
                    })
                    .collect(),
            ),
            match_fields: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::watcher::Event;
    use serde_json::Value;

    fn store<K>(objects: Vec<Value>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + k8s_openapi::serde::de::DeserializeOwned,
    {
        let (store, mut writer) = kube::runtime::reflector::store::<K>();
        for o in objects {
            writer.apply_watcher_event(&Event::Apply(serde_json::from_value(o).unwrap()));
        }
        store
    }

    fn cluster(claims: Vec<Value>, pvs: Vec<Value>) -> Volumes {
        let classes = vec![
            json!({"metadata": {"name": "later"}, "provisioner": NO_PROVISIONER,
                   "volumeBindingMode": "WaitForFirstConsumer"}),
            json!({"metadata": {"name": "zoned"}, "provisioner": "example.com/disk",
                   "volumeBindingMode": "WaitForFirstConsumer",
                   "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}]}),
            json!({"metadata": {"name": "now"}, "provisioner": "example.com/disk",
                   "volumeBindingMode": "Immediate"}),
        ];
        Volumes::new(store(claims), store(pvs), store(classes))
    }

    fn claim(name: &str, extra: Value) -> Value {
        let mut c = json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                           "spec": {"accessModes": ["ReadWriteOnce"],
                                    "resources": {"requests": {"storage": "1Gi"}}}});
        json_patch::merge(&mut c, &extra);
        c
    }

    fn bound(name: &str, volume: &str) -> Value {
        claim(
            name,
            json!({"metadata": {"annotations": {BIND_COMPLETED: "yes"}}, "spec": {"volumeName": volume}}),
        )
    }

    fn pv(name: &str, node: &str, extra: Value) -> Value {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}});
        json_patch::merge(&mut v, &extra);
        v
    }

    fn pod(claims: &[&str]) -> Pod {
        let volumes: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "pod-uid"},
            "spec": {"containers": [{"name": "c"}], "volumes": volumes}}),
        )
        .unwrap()
    }

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value::<Node>(json!({"metadata": {"name": name,
                "labels": {"kubernetes.io/hostname": name, "zone": zone}}}))
            .unwrap(),
        ))
    }

    fn reasons(r: Result<Vec<Binding>, Rejection>) -> Vec<String> {
        let r = r.unwrap_err();
        assert!(!r.resolvable);
        r.reasons.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn pods_without_claims_skip_the_plugin() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "e", "emptyDir": {}}]}}))
        .unwrap();
        assert!(
            State::new(&pod, &cluster(vec![], vec![]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn prefilter_refuses_missing_deleted_and_unbound_immediate_claims() {
        let volumes = cluster(
            vec![
                claim(
                    "gone",
                    json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
                ),
                claim("classless", json!({})),
                claim("now", json!({"spec": {"storageClassName": "now"}})),
                claim(
                    "unknown-class",
                    json!({"spec": {"storageClassName": "nope"}}),
                ),
                claim(
                    "half-bound",
                    json!({"spec": {"volumeName": "v", "storageClassName": "later"}}),
                ),
            ],
            vec![],
        );
        let refused = |c: &str| State::new(&pod(&[c]), &volumes).err().unwrap();
        assert_eq!(refused("data"), r#"persistentvolumeclaim "data" not found"#);
        assert_eq!(
            refused("gone"),
            r#"persistentvolumeclaim "gone" is being deleted"#
        );
        for immediate in ["classless", "now", "unknown-class"] {
            assert_eq!(refused(immediate), UNBOUND_IMMEDIATE, "{immediate}");
        }
        // A volume name without the binding's completion is not bound yet.
        assert!(
            State::new(&pod(&["half-bound"]), &volumes)
                .unwrap()
                .is_some()
        );
        let ephemeral: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "scratch", "ephemeral": {}}]}}))
        .unwrap();
        assert_eq!(
            State::new(&ephemeral, &volumes).err().unwrap(),
            r#"waiting for ephemeral volume controller to create the persistentvolumeclaim "p-scratch""#
        );
    }

    #[test]
    fn bound_claims_need_their_volume_on_the_node() {
        let volumes = cluster(
            vec![bound("data", "pv-b"), bound("lost", "pv-none")],
            vec![pv("pv-b", "b", json!({}))],
        );
        let state = State::new(&pod(&["data"]), &volumes).unwrap().unwrap();
        assert_eq!(reasons(state.find(&node("a", "a"))), [NODE_CONFLICT]);
        assert!(state.find(&node("b", "a")).unwrap().is_empty());
        let state = State::new(&pod(&["data", "lost"]), &volumes)
            .unwrap()
            .unwrap();
        assert_eq!(reasons(state.find(&node("b", "a"))), [PV_NOT_EXIST]);
    }

    #[test]
    fn waiting_claims_take_a_fitting_volume_or_are_provisioned_where_the_class_allows() {
        let available =
            json!({"spec": {"storageClassName": "later"}, "status": {"phase": "Available"}});
        let volumes = cluster(
            vec![
                claim("static", json!({"spec": {"storageClassName": "later"}})),
                claim(
                    "big",
                    json!({"spec": {"storageClassName": "later",
                    "resources": {"requests": {"storage": "5Gi"}}}}),
                ),
                claim("dynamic", json!({"spec": {"storageClassName": "zoned"}})),
                claim(
                    "placed",
                    json!({"metadata": {"annotations": {SELECTED_NODE: "b"}},
                    "spec": {"storageClassName": "zoned"}}),
                ),
            ],
            vec![
                pv("pv-b", "b", available.clone()),
                pv(
                    "pv-c-taken",
                    "c",
                    json!({"spec": {"storageClassName": "later",
                    "claimRef": {"namespace": "ns", "name": "other"}}, "status": {"phase": "Available"}}),
                ),
            ],
        );
        let state = State::new(&pod(&["static"]), &volumes).unwrap().unwrap();
        assert_eq!(reasons(state.find(&node("a", "a"))), [BIND_CONFLICT]);
        assert_eq!(reasons(state.find(&node("c", "a"))), [BIND_CONFLICT]);
        match state.find(&node("b", "a")).unwrap().as_slice() {
            [Binding::Volume(c, v)] => {
                assert_eq!(
                    (c.name_any(), v.name_any()),
                    ("static".into(), "pv-b".into())
                )
            }
            other => panic!("{other:?}"),
        }
        // Too small a volume is no match, and its class does not provision.
        let state = State::new(&pod(&["big"]), &volumes).unwrap().unwrap();
        assert_eq!(reasons(state.find(&node("b", "a"))), [BIND_CONFLICT]);

        let state = State::new(&pod(&["dynamic"]), &volumes).unwrap().unwrap();
        assert!(matches!(
            state.find(&node("a", "a")).unwrap().as_slice(),
            [Binding::Provision(_)]
        ));
        assert_eq!(reasons(state.find(&node("b", "b"))), [BIND_CONFLICT]);
        // A claim whose node was chosen before binds there only.
        let state = State::new(&pod(&["placed"]), &volumes).unwrap().unwrap();
        assert_eq!(reasons(state.find(&node("a", "a"))), [BIND_CONFLICT]);

        // A volume chosen for a pod whose binding is under way is no one else's.
        let chosen = State::new(&pod(&["static"]), &volumes)
            .unwrap()
            .unwrap()
            .find(&node("b", "a"))
            .unwrap();
        volumes.assume(&chosen);
        let state = State::new(&pod(&["static"]), &volumes).unwrap().unwrap();
        assert_eq!(reasons(state.find(&node("b", "a"))), [BIND_CONFLICT]);
        volumes.forget(&chosen);
        let state = State::new(&pod(&["static"]), &volumes).unwrap().unwrap();
        assert!(state.find(&node("b", "a")).is_ok());
    }
}
