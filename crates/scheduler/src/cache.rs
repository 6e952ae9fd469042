//! The scheduler's view of the cluster, kept up to date from watch events
//! rather than rebuilt for every pod: each node with the pods counted on it,
//! including those this scheduler bound (assumed) before the watch shows them,
//! and the pods counted per topology domain that affinity and spread ask
//! about.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::affinity::{HeldTerm, held_terms};
use crate::domains::{DomainCounts, Labels};
use crate::node_info::{NodeInfo, bound_node, occupies_node};
use crate::queue::Key;

/// Counted queries not asked about for longest are dropped beyond this
/// many, so that pods with selectors of their own do not make every pod
/// event dearer for ever.
const QUERIES_KEPT: usize = 256;

/// Pods to count per domain of a topology key: those in one of each
/// matcher's namespaces whose labels match its selector, for every matcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub matchers: Vec<(BTreeSet<String>, Selector)>,
    pub key: String,
    /// Leave out pods being deleted (PodTopologySpread does, InterPodAffinity does not).
    pub live_only: bool,
}

impl Hash for Query {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for (namespaces, selector) in &self.matchers {
            namespaces.hash(state);
            selector.to_string().hash(state);
        }
        self.key.hash(state);
        self.live_only.hash(state);
    }
}

impl Query {
    pub fn matches(&self, pod: &Pod) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        (!self.live_only || pod.metadata.deletion_timestamp.is_none())
            && self.matchers.iter().all(|(namespaces, selector)| {
                namespaces.contains(ns) && selector.matches(pod.labels())
            })
    }
}

struct Counted {
    counts: DomainCounts,
    last_asked: u64,
}

#[derive(Default)]
pub struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Node names in order, the order filters walk them in.
    order: Vec<String>,
    /// Where each counted pod is counted.
    placed: HashMap<Key, String>,
    /// Pods bound to nodes the cache does not know (yet): watches of pods
    /// and nodes are not ordered with each other.
    waiting: HashMap<String, HashMap<Key, Arc<Pod>>>,
    /// Pods bound by this scheduler that the watch does not show bound yet.
    assumed: HashSet<Key>,
    /// The pod affinity terms counted pods hold, each with where its
    /// holders are: what every incoming pod is checked against (symmetry).
    held: HashMap<HeldTerm, DomainCounts>,
    holders: HashMap<Key, Vec<HeldTerm>>,
    /// The pods matching what incoming pods' terms and constraints asked about.
    queries: HashMap<Query, Counted>,
    asked: u64,
    /// How many nodes have each value of each label key: the topology
    /// domains there are.
    label_values: HashMap<String, HashMap<String, usize>>,
    /// How many nodes have each image, kept as nodes change rather than
    /// counted over every node for every pod (ImageLocality's spread).
    images: HashMap<String, usize>,
}

impl Cache {
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.name_any();
        match self.nodes.get_mut(&name) {
            Some(info) => {
                count_images(&mut self.images, info, -1);
                let old = info.node.clone();
                info.set_node(node);
                count_images(&mut self.images, info, 1);
                if old.metadata.labels != info.node.metadata.labels {
                    let new = info.node.clone();
                    self.relabel(
                        &name,
                        old.metadata.labels.as_ref(),
                        new.metadata.labels.as_ref(),
                    );
                }
            }
            None => {
                let mut info = NodeInfo::new(node);
                count_images(&mut self.images, &info, 1);
                for (key, pod) in self.waiting.remove(&name).unwrap_or_default() {
                    info.add(key, pod);
                }
                let new = info.node.clone();
                self.nodes.insert(name.clone(), info);
                let at = self.order.binary_search(&name).unwrap_or_else(|i| i);
                self.order.insert(at, name.clone());
                self.relabel(&name, None, Some(new.labels()));
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            count_images(&mut self.images, &info, -1);
            self.order.retain(|n| n != name);
            self.relabel(name, Some(info.labels()), None);
            self.waiting.insert(name.to_owned(), info.pods);
        }
    }

    /// A node's labels changed (None: the node is unknown): its pods move domains.
    fn relabel(&mut self, node: &str, old: Option<&Labels>, new: Option<&Labels>) {
        for (labels, sign) in [(old, -1), (new, 1)] {
            for (k, v) in labels.into_iter().flatten() {
                let values = self.label_values.entry(k.clone()).or_default();
                let n = values.entry(v.clone()).or_default();
                *n = n.saturating_add_signed(sign);
                if *n == 0 {
                    values.remove(v);
                    if values.is_empty() {
                        self.label_values.remove(k);
                    }
                }
            }
        }
        let counts = self
            .held
            .values_mut()
            .chain(self.queries.values_mut().map(|q| &mut q.counts));
        for c in counts {
            c.relabel(node, old, new);
        }
    }

    /// A pod as the watch shows it now.
    pub fn set_pod(&mut self, key: Key, pod: Arc<Pod>) {
        match bound_node(&pod) {
            Some(node) if occupies_node(&pod) => {
                let node = node.to_owned();
                self.assumed.remove(&key);
                self.place(key, node, pod);
            }
            // Still pending in the watch: what we assumed stands until the binding shows.
            None if self.assumed.contains(&key) => {}
            _ => self.remove_pod(&key),
        }
    }

    /// Counts `pod` on `node`, which this scheduler is binding it to.
    pub fn assume(&mut self, key: Key, node: String, pod: Arc<Pod>) {
        self.assumed.insert(key.clone());
        self.place(key, node, pod);
    }

    /// Undoes [`Cache::assume`], unless the watch has shown the pod bound since.
    pub fn forget_assumed(&mut self, key: &str) {
        if self.assumed.contains(key) {
            self.remove_pod(key);
        }
    }

    pub fn remove_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        self.unplace(key);
    }

    fn unplace(&mut self, key: &str) {
        let Some(node) = self.placed.remove(key) else {
            return;
        };
        let pod = if let Some(info) = self.nodes.get_mut(&node) {
            info.remove(key)
        } else if let Some(pods) = self.waiting.get_mut(&node) {
            let pod = pods.remove(key);
            if pods.is_empty() {
                self.waiting.remove(&node);
            }
            pod
        } else {
            None
        };
        let labels = self.nodes.get(&node).map(NodeInfo::labels);
        for term in self.holders.remove(key).unwrap_or_default() {
            if let Some(counts) = self.held.get_mut(&term) {
                counts.add(&node, labels, -1);
                if counts.is_empty() {
                    self.held.remove(&term);
                }
            }
        }
        if let Some(pod) = pod {
            for (query, counted) in &mut self.queries {
                if query.matches(&pod) {
                    counted.counts.add(&node, labels, -1);
                }
            }
        }
    }

    fn place(&mut self, key: Key, node: String, pod: Arc<Pod>) {
        // What was counted of its last version goes first: its labels or terms may have changed.
        self.unplace(&key);
        self.placed.insert(key.clone(), node.clone());
        let labels = self.nodes.get(&node).map(NodeInfo::labels);
        let terms = held_terms(&pod);
        for term in &terms {
            self.held
                .entry(term.clone())
                .or_insert_with(|| DomainCounts::new(term.key()))
                .add(&node, labels, 1);
        }
        if !terms.is_empty() {
            self.holders.insert(key.clone(), terms);
        }
        for (query, counted) in &mut self.queries {
            if query.matches(&pod) {
                counted.counts.add(&node, labels, 1);
            }
        }
        match self.nodes.get_mut(&node) {
            Some(info) => info.add(key, pod),
            None => {
                self.waiting.entry(node).or_default().insert(key, pod);
            }
        }
    }

    /// Makes sure the pods matching each query are counted, counting them
    /// once when a query is new; from then on pod and node events keep
    /// the counts.
    pub fn prepare(&mut self, queries: &[Query]) {
        for query in queries {
            self.asked += 1;
            if let Some(counted) = self.queries.get_mut(query) {
                counted.last_asked = self.asked;
                continue;
            }
            let mut counts = DomainCounts::new(&query.key);
            let placed =
                self.nodes
                    .values()
                    .flat_map(|info| {
                        info.pods
                            .values()
                            .map(move |p| (info.name(), Some(info.labels()), p))
                    })
                    .chain(self.waiting.iter().flat_map(|(node, pods)| {
                        pods.values().map(move |p| (node.as_str(), None, p))
                    }));
            for (node, labels, pod) in placed {
                if query.matches(pod) {
                    counts.add(node, labels, 1);
                }
            }
            if self.queries.len() >= QUERIES_KEPT
                && let Some(oldest) = self
                    .queries
                    .iter()
                    .min_by_key(|(_, c)| c.last_asked)
                    .map(|(q, _)| q.clone())
            {
                self.queries.remove(&oldest);
            }
            self.queries.insert(
                query.clone(),
                Counted {
                    counts,
                    last_asked: self.asked,
                },
            );
        }
    }

    /// The counts of a query [`Cache::prepare`] was given.
    pub fn counts(&self, query: &Query) -> Option<&DomainCounts> {
        self.queries.get(query).map(|c| &c.counts)
    }

    /// The affinity terms counted pods hold, with where their holders are.
    pub fn held_terms(&self) -> impl Iterator<Item = (&HeldTerm, &DomainCounts)> {
        self.held.iter()
    }

    /// The values nodes have for a label key, with how many nodes have each.
    pub fn label_values(&self, key: &str) -> Option<&HashMap<String, usize>> {
        self.label_values.get(key)
    }

    /// The nodes in order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeInfo> + Clone {
        self.order.iter().map(|n| &self.nodes[n])
    }

    /// The nodes in order split at `start`: those before it, then the rest,
    /// so a walk can begin anywhere without stepping over the first ones.
    pub fn nodes_from(
        &self,
        start: usize,
    ) -> (
        impl Iterator<Item = &NodeInfo>,
        impl Iterator<Item = &NodeInfo>,
    ) {
        let (before, after) = self.order.split_at(start.min(self.order.len()));
        let info = |n: &String| &self.nodes[n];
        (before.iter().map(info), after.iter().map(info))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// How many nodes have each image.
    pub fn image_spread(&self) -> crate::scores::ImageSpread<'_> {
        crate::scores::ImageSpread {
            nodes_with: &self.images,
            total: self.len(),
        }
    }
}

fn count_images(counts: &mut HashMap<String, usize>, info: &NodeInfo, sign: isize) {
    for image in info.images.keys() {
        let n = counts.entry(image.clone()).or_default();
        *n = n.saturating_add_signed(sign);
        if *n == 0 {
            counts.remove(image);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
            }))
            .unwrap(),
        )
    }

    fn node(name: &str) -> Arc<Node> {
        Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap())
    }

    fn cpu(cache: &Cache, node: &str) -> i64 {
        cache
            .nodes()
            .find(|n| n.name() == node)
            .unwrap()
            .requested
            .get("cpu")
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn assumptions_hold_until_the_binding_shows_and_end_with_the_pod() {
        let mut cache = Cache::default();
        cache.set_node(node("a"));
        cache.assume("default/p".into(), "a".into(), pod("p", None));
        cache.set_pod("default/p".into(), pod("p", None));
        assert_eq!(
            cpu(&cache, "a"),
            1000,
            "a lagging watch keeps the assumption"
        );
        cache.set_pod("default/p".into(), pod("p", Some("a")));
        assert_eq!(cpu(&cache, "a"), 1000, "counted once when seen bound");
        cache.remove_pod("default/p");
        assert_eq!(cpu(&cache, "a"), 0);
    }

    #[test]
    fn a_failed_binding_frees_what_was_assumed_unless_the_watch_shows_it_bound() {
        let mut cache = Cache::default();
        cache.set_node(node("a"));
        cache.assume("default/p".into(), "a".into(), pod("p", None));
        cache.forget_assumed("default/p");
        assert_eq!(cpu(&cache, "a"), 0, "the binding failed: the node is free");
        cache.assume("default/q".into(), "a".into(), pod("q", None));
        cache.set_pod("default/q".into(), pod("q", Some("a")));
        cache.forget_assumed("default/q");
        assert_eq!(
            cpu(&cache, "a"),
            1000,
            "bound meanwhile (a 409): the watch's version stays counted"
        );
    }

    fn labelled(
        name: &str,
        labels: serde_json::Value,
        node: Option<&str>,
        spec: serde_json::Value,
    ) -> Arc<Pod> {
        let mut base = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        });
        json_patch::merge(&mut base, &serde_json::json!({"spec": spec}));
        Arc::new(serde_json::from_value(base).unwrap())
    }

    fn zoned(name: &str, zone: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "labels": {"zone": zone}}}),
            )
            .unwrap(),
        )
    }

    fn web_per_zone() -> Query {
        Query {
            matchers: vec![(
                ["default".to_owned()].into(),
                Selector::try_from(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
            )],
            key: "zone".into(),
            live_only: true,
        }
    }

    fn zones(cache: &Cache, query: &Query) -> Vec<(String, i64)> {
        let mut counts: Vec<_> = cache
            .counts(query)
            .unwrap()
            .domains()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        counts.sort();
        counts
    }

    fn z(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn query_counts_follow_deletes_and_relabels_of_pods_and_nodes() {
        let mut cache = Cache::default();
        cache.set_node(zoned("a", "z1"));
        cache.set_node(zoned("b", "z2"));
        let web = serde_json::json!({"app": "web"});
        let none = serde_json::json!({});
        cache.set_pod(
            "default/w1".into(),
            labelled("w1", web.clone(), Some("a"), none.clone()),
        );
        let query = web_per_zone();
        cache.prepare(std::slice::from_ref(&query));
        assert_eq!(
            zones(&cache, &query),
            z(&[("z1", 1)]),
            "counted when first asked"
        );
        cache.assume(
            "default/w2".into(),
            "b".into(),
            labelled("w2", web.clone(), None, none.clone()),
        );
        cache.set_pod(
            "default/w3".into(),
            labelled("w3", web.clone(), Some("b"), none.clone()),
        );
        assert_eq!(zones(&cache, &query), z(&[("z1", 1), ("z2", 2)]));
        cache.set_pod(
            "default/w3".into(),
            labelled("w3", web.clone(), Some("b"), none.clone()),
        );
        assert_eq!(
            zones(&cache, &query),
            z(&[("z1", 1), ("z2", 2)]),
            "an update is no second pod"
        );
        cache.set_pod(
            "default/w1".into(),
            labelled(
                "w1",
                serde_json::json!({"app": "db"}),
                Some("a"),
                none.clone(),
            ),
        );
        assert_eq!(
            zones(&cache, &query),
            z(&[("z2", 2)]),
            "a relabelled pod leaves"
        );
        cache.set_node(zoned("b", "z3"));
        assert_eq!(
            zones(&cache, &query),
            z(&[("z3", 2)]),
            "a relabelled node moves its pods"
        );
        let mut deleting = (*labelled("w3", web.clone(), Some("b"), none.clone())).clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        cache.set_pod("default/w3".into(), Arc::new(deleting));
        assert_eq!(
            zones(&cache, &query),
            z(&[("z3", 1)]),
            "pods being deleted are left out"
        );
        cache.remove_pod("default/w2");
        cache.remove_node("b");
        assert_eq!(zones(&cache, &query), z(&[]));
        cache.set_node(zoned("b", "z2"));
        cache.remove_pod("default/w3");
        assert!(
            cache.counts(&query).unwrap().is_empty(),
            "{:?}",
            cache.counts(&query)
        );
    }

    #[test]
    fn held_terms_come_and_go_with_their_pods() {
        let mut cache = Cache::default();
        cache.set_node(zoned("a", "z1"));
        let anti = serde_json::json!({"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}});
        let held = |cache: &Cache| -> Vec<(String, i64)> {
            cache
                .held_terms()
                .flat_map(|(t, c)| {
                    c.domains()
                        .iter()
                        .map(move |(v, n)| (format!("{}={v}", t.key()), *n))
                })
                .collect()
        };
        cache.set_pod(
            "default/l1".into(),
            labelled("l1", serde_json::json!({}), Some("a"), anti.clone()),
        );
        cache.set_pod(
            "default/l2".into(),
            labelled("l2", serde_json::json!({}), Some("a"), anti.clone()),
        );
        assert_eq!(held(&cache), z(&[("zone=z1", 2)]));
        cache.set_pod(
            "default/l1".into(),
            labelled(
                "l1",
                serde_json::json!({}),
                Some("a"),
                serde_json::json!({}),
            ),
        );
        assert_eq!(
            held(&cache),
            z(&[("zone=z1", 1)]),
            "a pod that dropped its terms holds none"
        );
        cache.remove_pod("default/l2");
        assert!(cache.held_terms().next().is_none());
    }

    /// Random pod and node changes, the counts checked against a recount
    /// after each.
    #[test]
    fn query_counts_match_a_recount_whatever_happens() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut cache = Cache::default();
        let query = web_per_zone();
        cache.prepare(std::slice::from_ref(&query));
        for step in 0..2000 {
            let node = format!("n{}", rng.random_range(0..4));
            let pod = format!("p{}", rng.random_range(0..12));
            match rng.random_range(0..10) {
                0 => cache.set_node(zoned(&node, &format!("z{}", rng.random_range(0..3)))),
                1 => cache.remove_node(&node),
                2 => cache.remove_pod(&format!("default/{pod}")),
                _ => {
                    let app = if rng.random_bool(0.5) { "web" } else { "db" };
                    let p = labelled(
                        &pod,
                        serde_json::json!({"app": app}),
                        Some(&node),
                        serde_json::json!({}),
                    );
                    cache.set_pod(format!("default/{pod}"), p);
                }
            }
            let mut recount: HashMap<String, i64> = HashMap::new();
            for info in cache.nodes() {
                let n = info.pods.values().filter(|p| query.matches(p)).count() as i64;
                if let Some(zone) = info.labels().get("zone").filter(|_| n > 0) {
                    *recount.entry(zone.clone()).or_default() += n;
                }
            }
            assert_eq!(
                cache.counts(&query).unwrap().domains(),
                &recount,
                "after step {step}"
            );
        }
    }

    #[test]
    fn pods_seen_before_their_node_count_once_it_arrives() {
        let mut cache = Cache::default();
        cache.set_pod("default/p".into(), pod("p", Some("b")));
        cache.set_node(node("b"));
        cache.set_node(node("a"));
        assert_eq!(cpu(&cache, "b"), 1000);
        let names: Vec<&str> = cache.nodes().map(NodeInfo::name).collect();
        assert_eq!(names, ["a", "b"]);
        cache.remove_node("b");
        cache.set_node(node("b"));
        assert_eq!(cpu(&cache, "b"), 1000, "a node's pods outlive its removal");
    }
}
