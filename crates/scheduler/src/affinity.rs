//! InterPodAffinity, as upstream's plugin: counts of matching pods per
//! topology domain are computed once per pod (upstream's PreFilter and
//! PreScore), then each node is judged by its domain's counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Namespace, Pod, PodAffinityTerm};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::cache::{Cache, Query};
use crate::domains::DomainCounts;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    namespaces: BTreeSet<String>,
    namespace_selector: Option<Selector>,
    /// None: the term's nil labelSelector matches no pod.
    selector: Option<Selector>,
    key: String,
    weight: i64,
}

impl Hash for Term {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.namespaces.hash(state);
        self.namespace_selector
            .as_ref()
            .map(ToString::to_string)
            .hash(state);
        self.selector.as_ref().map(ToString::to_string).hash(state);
        self.key.hash(state);
        self.weight.hash(state);
    }
}

impl Term {
    fn new(term: &PodAffinityTerm, owner: &Pod, weight: i64) -> Self {
        let mut namespaces: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
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

    /// The term as the cache counts pods for it: its namespaces named or
    /// selected now, and its selector (None: it matches no pod).
    fn matcher(&self, ns_labels: &NamespaceLabels) -> Option<(BTreeSet<String>, Selector)> {
        let mut namespaces = self.namespaces.clone();
        if let Some(s) = &self.namespace_selector {
            namespaces.extend(
                ns_labels
                    .iter()
                    .filter(|(_, labels)| s.matches(labels))
                    .map(|(ns, _)| ns.clone()),
            );
        }
        Some((namespaces, self.selector.clone()?))
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

    /// What the cache must count for these terms of an incoming pod, each
    /// with what a matching pod adds in its domain: for the required
    /// affinity, pods matching all its terms, per term's key; for the
    /// others, pods matching each term.
    fn queries(&self, ns_labels: &NamespaceLabels) -> Vec<(Kind, Query)> {
        let mut queries = Vec::new();
        let all: Option<Vec<_>> = self
            .required_affinity
            .iter()
            .map(|t| t.matcher(ns_labels))
            .collect();
        if let Some(matchers) = all.filter(|m| !m.is_empty()) {
            for term in &self.required_affinity {
                queries.push((
                    Kind::Affinity,
                    Query {
                        matchers: matchers.clone(),
                        key: term.key.clone(),
                        live_only: false,
                    },
                ));
            }
        }
        let each = [
            (&self.required_anti, 0),
            (&self.preferred_affinity, 1),
            (&self.preferred_anti, -1),
        ];
        for (terms, sign) in each {
            for term in terms {
                let Some(matcher) = term.matcher(ns_labels) else {
                    continue;
                };
                let kind = if sign == 0 {
                    Kind::Anti
                } else {
                    Kind::Preferred(sign * term.weight)
                };
                queries.push((
                    kind,
                    Query {
                        matchers: vec![matcher],
                        key: term.key.clone(),
                        live_only: false,
                    },
                ));
            }
        }
        queries
    }
}

/// What pods matching an incoming pod's term count for.
#[derive(Clone, Copy)]
enum Kind {
    Affinity,
    Anti,
    Preferred(i64),
}

/// A term an existing pod holds, as the cache groups its holders: a
/// required anti-affinity term forbids its holders' domains to the pods
/// it matches; other terms weigh them, by their weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeldTerm {
    term: Term,
    forbids: bool,
}

impl HeldTerm {
    pub fn key(&self) -> &str {
        &self.term.key
    }
}

/// The terms an existing pod holds that concern incoming pods.
pub fn held_terms(pod: &Pod) -> Vec<HeldTerm> {
    let t = Terms::of(pod);
    let forbidding = t.required_anti.into_iter().map(|term| HeldTerm {
        term,
        forbids: true,
    });
    let weighing = t
        .required_affinity
        .into_iter()
        .map(|term| Term {
            weight: HARD_AFFINITY_WEIGHT,
            ..term
        })
        .chain(t.preferred_affinity)
        .chain(t.preferred_anti.into_iter().map(|term| Term {
            weight: -term.weight,
            ..term
        }))
        .map(|term| HeldTerm {
            term,
            forbids: false,
        });
    forbidding.chain(weighing).collect()
}

pub fn has_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// Counts per topology domain, borrowed from the cache with the weight
/// each counts for: an incoming pod reads a few domains of a few counts,
/// so copying every domain of them (a hostname key has one per node) for
/// each pod would cost more than the filter itself.
#[derive(Default)]
struct Domains<'a>(Vec<(&'a DomainCounts, i64)>);

impl<'a> Domains<'a> {
    fn add(&mut self, counts: &'a DomainCounts, weight: i64) {
        // No counts without domains: emptiness means no pods anywhere.
        if !counts.domains().is_empty() {
            self.0.push((counts, weight));
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .iter()
            .filter(|(counts, _)| counts.key() == key)
            .filter_map(|(counts, weight)| Some(weight * counts.domains().get(value)?))
            .sum()
    }

    /// The node's domain's count in each counts it has a domain of.
    fn on<'n>(&'n self, info: &'n NodeInfo) -> impl Iterator<Item = i64> + 'n {
        let labels = info.labels();
        self.0.iter().filter_map(|(counts, weight)| {
            Some(weight * counts.domains().get(labels.get(counts.key())?)?)
        })
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the filter and score need of the cluster for one incoming pod.
pub struct State<'a> {
    terms: Terms,
    /// Domains holding pods that match all the pod's required affinity terms.
    affinity_counts: Domains<'a>,
    /// Domains holding pods that match one of its required anti-affinity terms.
    anti_counts: Domains<'a>,
    /// Domains where an existing pod's required anti-affinity forbids this pod.
    existing_anti: Domains<'a>,
    /// Whether the pod matches all its own required affinity terms (the first of a group).
    matches_itself: bool,
    /// Preference per domain, for scoring.
    preferred: Domains<'a>,
}

impl<'a> State<'a> {
    /// Whether the pod has terms of its own, or some existing pod has
    /// terms that could concern it (upstream skips the plugin otherwise).
    pub fn needed(pod: &Pod, cache: &Cache) -> bool {
        has_affinity(pod) || cache.held_terms().next().is_some()
    }

    /// What [`State::new`] asks the cache to count for the pod.
    pub fn queries(pod: &Pod, ns_labels: &NamespaceLabels) -> Vec<Query> {
        Terms::of(pod)
            .queries(ns_labels)
            .into_iter()
            .map(|(_, q)| q)
            .collect()
    }

    /// The state from the cache's counts, once the cache was prepared
    /// with the pod's [`State::queries`].
    pub fn new(pod: &Pod, cache: &'a Cache, ns_labels: &NamespaceLabels) -> Self {
        let terms = Terms::of(pod);
        let mut state = Self {
            matches_itself: !terms.required_affinity.is_empty()
                && terms
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(pod, ns_labels)),
            affinity_counts: Domains::default(),
            anti_counts: Domains::default(),
            existing_anti: Domains::default(),
            preferred: Domains::default(),
            terms: Terms::default(),
        };
        for (kind, query) in terms.queries(ns_labels) {
            let Some(counts) = cache.counts(&query) else {
                continue;
            };
            match kind {
                Kind::Affinity => state.affinity_counts.add(counts, 1),
                Kind::Anti => state.anti_counts.add(counts, 1),
                Kind::Preferred(weight) => state.preferred.add(counts, weight),
            }
        }
        state.terms = terms;
        for (held, counts) in cache.held_terms() {
            if !held.term.matches(pod, ns_labels) {
                continue;
            }
            if held.forbids {
                state.existing_anti.add(counts, 1);
            } else {
                state.preferred.add(counts, held.term.weight);
            }
        }
        state
    }

    pub fn filter(&self, info: &NodeInfo) -> Result<(), Rejection> {
        let labels = info.labels();
        let mut pods_exist = true;
        for term in &self.terms.required_affinity {
            let Some(value) = labels.get(&term.key) else {
                return Err(Rejection::unresolvable(AFFINITY_NOT_MATCH));
            };
            if self.affinity_counts.get(&term.key, value) <= 0 {
                pods_exist = false;
            }
        }
        // The first pod of a group with affinity to itself goes anywhere.
        let first_of_group = self.affinity_counts.is_empty() && self.matches_itself;
        if !(pods_exist || first_of_group) {
            return Err(Rejection::unresolvable(AFFINITY_NOT_MATCH));
        }
        if self.terms.required_anti.iter().any(|t| {
            labels
                .get(&t.key)
                .is_some_and(|v| self.anti_counts.get(&t.key, v) > 0)
        }) {
            return Err(Rejection::resolvable(ANTI_AFFINITY_NOT_MATCH));
        }
        if self.existing_anti.on(info).any(|n| n > 0) {
            return Err(Rejection::resolvable(EXISTING_ANTI_AFFINITY_NOT_MATCH));
        }
        Ok(())
    }

    /// The node's raw preference: the sum over its domains.
    pub fn score(&self, info: &NodeInfo) -> i64 {
        if self.preferred.is_empty() {
            return 0;
        }
        self.preferred.on(info).sum()
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

    fn state<'c>(cache: &'c mut Cache, incoming: &Pod) -> (State<'c>, &'c Cache) {
        let ns = NamespaceLabels::new();
        cache.prepare(&State::queries(incoming, &ns));
        let cache = &*cache;
        (State::new(incoming, cache, &ns), cache)
    }

    fn verdicts(cache: &mut Cache, incoming: &Pod) -> Vec<Result<(), Rejection>> {
        let (state, cache) = state(cache, incoming);
        cache.nodes().map(|n| state.filter(n)).collect()
    }

    #[test]
    fn required_affinity_and_anti_affinity_follow_the_topology_key() {
        let mut cache = cluster();
        let near_db = pod(
            "web",
            json!({}),
            json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}),
        );
        let v = verdicts(&mut cache, &near_db);
        assert!(v[0].is_ok() && v[1].is_ok(), "{v:?}");
        assert_eq!(v[2].as_ref().unwrap_err().reasons, [AFFINITY_NOT_MATCH]);
        let away = pod(
            "web",
            json!({}),
            json!({"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        );
        let v = verdicts(&mut cache, &away);
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
        let v = verdicts(&mut cache, &pod("web", json!({"app": "web"}), json!({})));
        assert!(v[0].is_ok());
        assert_eq!(
            v[2].as_ref().unwrap_err().reasons,
            [EXISTING_ANTI_AFFINITY_NOT_MATCH]
        );
    }

    #[test]
    fn the_first_of_a_self_affine_group_goes_anywhere() {
        let mut cache = cluster();
        let first = pod(
            "w",
            json!({"app": "w"}),
            json!({"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "w"}}, "topologyKey": "zone"}]}}}),
        );
        assert!(verdicts(&mut cache, &first).iter().all(Result::is_ok));
    }

    #[test]
    fn preferences_score_the_domains() {
        let mut cache = cluster();
        let prefers = pod(
            "web",
            json!({}),
            json!({"affinity": {"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm":
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]}}}),
        );
        let (state, cache) = state(&mut cache, &prefers);
        let scores: Vec<i64> = cache.nodes().map(|n| state.score(n)).collect();
        assert_eq!(scores, [10, 10, 0]);
    }
}
