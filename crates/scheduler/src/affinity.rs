//! InterPodAffinity, as upstream's plugin: counts of matching pods per
//! topology domain are computed once per pod (upstream's PreFilter and
//! PreScore), then each node is judged by its domain's counts.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Namespace, Pod, PodAffinityTerm};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::cache::Cache;
use crate::filters::Rejection;
use crate::node_info::NodeInfo;

pub const AFFINITY_NOT_MATCH: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY_NOT_MATCH: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY_NOT_MATCH: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// Upstream's hardPodAffinityWeight: what an existing pod's required
/// affinity to the incoming one counts for in scoring.
const HARD_AFFINITY_WEIGHT: i64 = 1;

/// The namespaces' labels, for terms with a namespaceSelector.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

pub fn namespace_labels(namespaces: &[std::sync::Arc<Namespace>]) -> NamespaceLabels {
    namespaces
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect()
}

/// A pod affinity term made ready to match pods.
struct Term {
    namespaces: HashSet<String>,
    namespace_selector: Option<Selector>,
    /// None: the term's nil labelSelector matches no pod.
    selector: Option<Selector>,
    key: String,
    weight: i64,
}

impl Term {
    fn new(term: &PodAffinityTerm, owner: &Pod, weight: i64) -> Self {
        let mut namespaces: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let namespace_selector = term
            .namespace_selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok());
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.insert(owner.namespace().unwrap_or_default());
        }
        Self {
            namespaces,
            namespace_selector,
            selector: term
                .label_selector
                .clone()
                .and_then(|s| Selector::try_from(s).ok()),
            key: term.topology_key.clone(),
            weight,
        }
    }

    fn matches(&self, pod: &Pod, ns_labels: &NamespaceLabels) -> bool {
        let ns = pod.namespace().unwrap_or_default();
        let in_namespace = self.namespaces.contains(&ns)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| ns_labels.get(&ns).is_some_and(|labels| s.matches(labels)));
        in_namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(pod.labels()))
    }
}

/// A pod's terms of each kind.
#[derive(Default)]
struct Terms {
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    preferred_affinity: Vec<Term>,
    preferred_anti: Vec<Term>,
}

impl Terms {
    fn of(pod: &Pod) -> Self {
        let Some(a) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return Self::default();
        };
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            terms
                .into_iter()
                .flatten()
                .map(|t| Term::new(t, pod, 0))
                .collect()
        };
        let preferred =
            |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                terms
                    .into_iter()
                    .flatten()
                    .filter(|w| w.weight != 0)
                    .map(|w| Term::new(&w.pod_affinity_term, pod, i64::from(w.weight)))
                    .collect::<Vec<_>>()
            };
        let aff = a.pod_affinity.as_ref();
        let anti = a.pod_anti_affinity.as_ref();
        Self {
            required_affinity: required(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: required(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(aff.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        }
    }

    fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

pub fn has_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

type Pair = (String, String);

/// What the filter and score need of the cluster for one incoming pod.
pub struct State {
    terms: Terms,
    /// Domains holding pods that match all the pod's required affinity terms.
    affinity_counts: HashMap<Pair, i64>,
    /// Domains holding pods that match one of its required anti-affinity terms.
    anti_counts: HashMap<Pair, i64>,
    /// Domains where an existing pod's required anti-affinity forbids this pod.
    existing_anti: HashMap<Pair, i64>,
    /// Whether the pod matches all its own required affinity terms (the first of a group).
    matches_itself: bool,
    /// Preference per domain, for scoring.
    preferred: HashMap<Pair, i64>,
}

fn pair(info: &NodeInfo, key: &str) -> Option<Pair> {
    info.labels().get(key).map(|v| (key.to_owned(), v.clone()))
}

impl State {
    /// Whether the pod has terms of its own, or some existing pod has
    /// terms that could concern it (upstream skips the plugin otherwise).
    pub fn needed(pod: &Pod, cache: &Cache) -> bool {
        has_affinity(pod) || cache.pods_with_affinity() > 0
    }

    pub fn new(pod: &Pod, cache: &Cache, ns_labels: &NamespaceLabels) -> Self {
        let terms = Terms::of(pod);
        let mut state = Self {
            matches_itself: !terms.required_affinity.is_empty()
                && terms
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(pod, ns_labels)),
            terms,
            affinity_counts: HashMap::new(),
            anti_counts: HashMap::new(),
            existing_anti: HashMap::new(),
            preferred: HashMap::new(),
        };
        if !state.terms.is_empty() {
            for info in cache.nodes() {
                for existing in info.pods.values() {
                    state.count_for_incoming(existing, info, ns_labels);
                }
            }
        }
        for (info, existing) in cache.affinity_pods() {
            state.count_for_existing(pod, existing, info, ns_labels);
        }
        state
    }

    /// The incoming pod's own terms, against an existing pod.
    fn count_for_incoming(&mut self, existing: &Pod, info: &NodeInfo, ns: &NamespaceLabels) {
        let t = &self.terms;
        if !t.required_affinity.is_empty()
            && t.required_affinity.iter().all(|t| t.matches(existing, ns))
        {
            for term in &t.required_affinity {
                if let Some(p) = pair(info, &term.key) {
                    *self.affinity_counts.entry(p).or_default() += 1;
                }
            }
        }
        for term in &t.required_anti {
            if term.matches(existing, ns)
                && let Some(p) = pair(info, &term.key)
            {
                *self.anti_counts.entry(p).or_default() += 1;
            }
        }
        for (terms, sign) in [(&t.preferred_affinity, 1), (&t.preferred_anti, -1)] {
            for term in terms {
                if term.matches(existing, ns)
                    && let Some(p) = pair(info, &term.key)
                {
                    *self.preferred.entry(p).or_default() += sign * term.weight;
                }
            }
        }
    }

    /// An existing pod's terms, against the incoming pod (symmetry).
    fn count_for_existing(
        &mut self,
        incoming: &Pod,
        existing: &Pod,
        info: &NodeInfo,
        ns: &NamespaceLabels,
    ) {
        let t = Terms::of(existing);
        for term in &t.required_anti {
            if term.matches(incoming, ns)
                && let Some(p) = pair(info, &term.key)
            {
                *self.existing_anti.entry(p).or_default() += 1;
            }
        }
        let weighted = t
            .required_affinity
            .iter()
            .map(|term| (term, HARD_AFFINITY_WEIGHT))
            .chain(t.preferred_affinity.iter().map(|term| (term, term.weight)))
            .chain(t.preferred_anti.iter().map(|term| (term, -term.weight)));
        for (term, weight) in weighted {
            if term.matches(incoming, ns)
                && let Some(p) = pair(info, &term.key)
            {
                *self.preferred.entry(p).or_default() += weight;
            }
        }
    }

    pub fn filter(&self, info: &NodeInfo) -> Result<(), Rejection> {
        let labels = info.labels();
        let mut pods_exist = true;
        for term in &self.terms.required_affinity {
            let Some(p) = pair(info, &term.key) else {
                return Err(Rejection::unresolvable(AFFINITY_NOT_MATCH));
            };
            if self.affinity_counts.get(&p).copied().unwrap_or(0) <= 0 {
                pods_exist = false;
            }
        }
        // The first pod of a group with affinity to itself goes anywhere.
        let first_of_group = self.affinity_counts.is_empty() && self.matches_itself;
        if !(pods_exist || first_of_group) {
            return Err(Rejection::unresolvable(AFFINITY_NOT_MATCH));
        }
        let forbidden = |counts: &HashMap<Pair, i64>, p: Option<Pair>| {
            p.is_some_and(|p| counts.get(&p).copied().unwrap_or(0) > 0)
        };
        if self
            .terms
            .required_anti
            .iter()
            .any(|t| forbidden(&self.anti_counts, pair(info, &t.key)))
        {
            return Err(Rejection::resolvable(ANTI_AFFINITY_NOT_MATCH));
        }
        if !self.existing_anti.is_empty()
            && labels
                .iter()
                .any(|(k, v)| forbidden(&self.existing_anti, Some((k.clone(), v.clone()))))
        {
            return Err(Rejection::resolvable(EXISTING_ANTI_AFFINITY_NOT_MATCH));
        }
        Ok(())
    }

    /// The node's raw preference: the sum over its domains.
    pub fn score(&self, info: &NodeInfo) -> i64 {
        if self.preferred.is_empty() {
            return 0;
        }
        info.labels()
            .iter()
            .filter_map(|(k, v)| self.preferred.get(&(k.clone(), v.clone())))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> Arc<Pod> {
        let mut base = json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
                              "spec": {"containers": [{"name": "c"}]}});
        json_patch::merge(&mut base, &json!({"spec": spec}));
        Arc::new(serde_json::from_value(base).unwrap())
    }

    fn cluster() -> Cache {
        let mut cache = Cache::default();
        for (name, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            cache.set_node(Arc::new(
                serde_json::from_value::<Node>(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name, "zone": zone}}}))
                .unwrap(),
            ));
        }
        cache.assume(
            "default/db".into(),
            "a".into(),
            pod("db", json!({"app": "db"}), json!({})),
        );
        cache
    }

    fn verdicts(cache: &Cache, incoming: &Pod) -> Vec<Result<(), Rejection>> {
        let state = State::new(incoming, cache, &NamespaceLabels::new());
        cache.nodes().map(|n| state.filter(n)).collect()
    }

    #[test]
    fn required_affinity_and_anti_affinity_follow_the_topology_key() {
        let cache = cluster();
        let near_db = pod(
            "web",
            json!({}),
            json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}),
        );
        let v = verdicts(&cache, &near_db);
        assert!(v[0].is_ok() && v[1].is_ok(), "{v:?}");
        assert_eq!(v[2].as_ref().unwrap_err().reasons, [AFFINITY_NOT_MATCH]);
        let away = pod(
            "web",
            json!({}),
            json!({"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        );
        let v = verdicts(&cache, &away);
        assert_eq!(
            v[0].as_ref().unwrap_err().reasons,
            [ANTI_AFFINITY_NOT_MATCH]
        );
        assert!(v[1].is_ok() && v[2].is_ok());
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut cache = cluster();
        cache.assume(
            "default/loner".into(),
            "c".into(),
            pod(
                "loner",
                json!({}),
                json!({"affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}),
            ),
        );
        let v = verdicts(&cache, &pod("web", json!({"app": "web"}), json!({})));
        assert!(v[0].is_ok());
        assert_eq!(
            v[2].as_ref().unwrap_err().reasons,
            [EXISTING_ANTI_AFFINITY_NOT_MATCH]
        );
    }

    #[test]
    fn the_first_of_a_self_affine_group_goes_anywhere() {
        let cache = cluster();
        let first = pod(
            "w",
            json!({"app": "w"}),
            json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "w"}}, "topologyKey": "zone"}]}}}),
        );
        assert!(verdicts(&cache, &first).iter().all(Result::is_ok));
    }

    #[test]
    fn preferences_score_the_domains() {
        let cache = cluster();
        let prefers = pod(
            "web",
            json!({}),
            json!({"affinity": {"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm":
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]}}}),
        );
        let state = State::new(&prefers, &cache, &NamespaceLabels::new());
        let scores: Vec<i64> = cache.nodes().map(|n| state.score(n)).collect();
        assert_eq!(scores, [10, 10, 0]);
    }
}
