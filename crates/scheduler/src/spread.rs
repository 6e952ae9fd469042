//! PodTopologySpread, as upstream's plugin: matching pods are counted per
//! topology domain (by the cache, as pods come and go); a node is feasible
//! while placing the pod there keeps each DoNotSchedule constraint's skew
//! within maxSkew, and ScheduleAnyway constraints prefer the emptier domains.
//! A pod without constraints of its own that belongs to workloads (see
//! `workloads`) gets upstream's system default ones, in scoring only.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::cache::{Cache, Query};
use crate::domains::DomainCounts;
use crate::filters::{Rejection, node_affinity, untolerated_taint};
use crate::node_info::NodeInfo;

pub const CONSTRAINTS_NOT_MATCH: &str = "node(s) didn't match pod topology spread constraints";
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Upstream's `systemDefaultConstraints` (the default profile's
/// `defaultingType: System`): key and maxSkew, all ScheduleAnyway.
const SYSTEM_DEFAULTS: [(&str, i32); 2] = [(HOSTNAME, 3), (ZONE, 5)];

struct Constraint {
    max_skew: i64,
    key: String,
    /// DoNotSchedule (a filter) rather than ScheduleAnyway (a score).
    hard: bool,
    /// The pods it counts: live ones of the pod's namespace its selector
    /// matches (None: a nil selector matches none).
    query: Option<Query>,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    /// Whether the incoming pod is one of the pods it counts.
    self_match: i64,
    /// One of the system defaults: a node without its key still scores
    /// by the other constraints instead of being left out.
    system: bool,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &Pod) -> Self {
        // matchLabelKeys: the pod's own values for those keys narrow the selector.
        let mut selector = c.label_selector.clone();
        if let Some(s) = selector.as_mut() {
            for key in c.match_label_keys.iter().flatten() {
                if let Some(v) = pod.labels().get(key) {
                    s.match_labels
                        .get_or_insert_default()
                        .insert(key.clone(), v.clone());
                }
            }
        }
        let selector = selector.and_then(|s| Selector::try_from(s).ok());
        let self_match = selector.as_ref().is_some_and(|s| s.matches(pod.labels()));
        Self {
            max_skew: i64::from(c.max_skew),
            key: c.topology_key.clone(),
            hard: c.when_unsatisfiable == "DoNotSchedule",
            query: selector.map(|selector| Query {
                matchers: vec![([pod.namespace().unwrap_or_default()].into(), selector)],
                key: c.topology_key.clone(),
                live_only: true,
            }),
            min_domains: c.min_domains.map_or(1, |m| m.max(1) as usize),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            self_match: i64::from(self_match),
            system: false,
        }
    }

    /// Whether the node's domain counts for this constraint at all.
    fn counts_node(&self, pod: &Pod, info: &NodeInfo) -> bool {
        info.labels().contains_key(&self.key)
            && (!self.honor_affinity || node_affinity(pod, info).is_ok())
            && (!self.honor_taints
                || untolerated_taint(pod, info, &["NoSchedule", "NoExecute"]).is_none())
    }

    /// Whether every node with the key counts: the pod's node affinity and
    /// taints narrow nothing.
    fn counts_every_node(&self, pod: &Pod) -> bool {
        let spec = pod.spec.as_ref();
        let node_constrained = spec
            .and_then(|s| s.node_selector.as_ref())
            .is_some_and(|s| !s.is_empty())
            || spec
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.as_ref())
                .is_some_and(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .is_some()
                });
        !(self.honor_taints || self.honor_affinity && node_constrained)
    }
}

/// The pod's own constraints, or else, when it belongs to workloads
/// selecting `workload_pods`, the system defaults over those pods.
fn constraints(pod: &Pod, workload_pods: Option<&LabelSelector>) -> Vec<Constraint> {
    let own: Vec<Constraint> = pod
        .spec
        .iter()
        .flat_map(|s| s.topology_spread_constraints.iter().flatten())
        .map(|c| Constraint::new(c, pod))
        .collect();
    match workload_pods {
        Some(selector) if own.is_empty() => SYSTEM_DEFAULTS
            .iter()
            .map(|(key, max_skew)| {
                let c = TopologySpreadConstraint {
                    max_skew: *max_skew,
                    topology_key: (*key).to_owned(),
                    when_unsatisfiable: "ScheduleAnyway".to_owned(),
                    label_selector: Some(selector.clone()),
                    ..Default::default()
                };
                Constraint {
                    system: true,
                    ..Constraint::new(&c, pod)
                }
            })
            .collect(),
        _ => own,
    }
}

/// Per constraint: matching pods per domain value.
pub struct State<'a> {
    constraints: Vec<Constraint>,
    /// Per constraint: the cache's counts of the pods it counts.
    pods: Vec<Option<&'a DomainCounts>>,
    /// Per constraint: matching pods per domain of the nodes that count.
    counts: Vec<Cow<'a, HashMap<String, i64>>>,
    /// Per hard constraint: the fewest matching pods in any domain.
    minimums: Vec<i64>,
}

impl<'a> State<'a> {
    /// What [`State::new`] asks the cache to count for the pod, which
    /// belongs to the workloads selecting `workload_pods`.
    pub fn queries(pod: &Pod, workload_pods: Option<&LabelSelector>) -> Vec<Query> {
        constraints(pod, workload_pods)
            .into_iter()
            .filter_map(|c| c.query)
            .collect()
    }

    /// The state from the cache's counts, once the cache was prepared
    /// with the pod's [`State::queries`].
    pub fn new(pod: &Pod, cache: &'a Cache, workload_pods: Option<&LabelSelector>) -> Option<Self> {
        let constraints = constraints(pod, workload_pods);
        if constraints.is_empty() {
            return None;
        }
        let pods: Vec<Option<&DomainCounts>> = constraints
            .iter()
            .map(|c| c.query.as_ref().and_then(|q| cache.counts(q)))
            .collect();
        let hard_keys: Vec<&str> = constraints
            .iter()
            .filter(|c| c.hard)
            .map(|c| c.key.as_str())
            .collect();
        let on_every_node = |key: &str| {
            cache
                .label_values(key)
                .is_some_and(|values| values.values().sum::<usize>() == cache.len())
        };
        let (counts, domains): (Vec<Cow<HashMap<String, i64>>>, Vec<usize>) =
            if constraints.iter().all(|c| c.counts_every_node(pod))
                && hard_keys.iter().all(|k| on_every_node(k))
            {
                // Every node with a constraint's key counts: the cache's counts are the domains'.
                constraints
                    .iter()
                    .zip(&pods)
                    .map(|(c, pods)| {
                        let counts = pods.map_or_else(
                            || Cow::Owned(HashMap::new()),
                            |p| Cow::Borrowed(p.domains()),
                        );
                        (counts, cache.label_values(&c.key).map_or(0, HashMap::len))
                    })
                    .unzip()
            } else {
                let mut counts = vec![HashMap::<String, i64>::new(); constraints.len()];
                for info in cache.nodes() {
                    // A node counts for the filter only with every hard constraint's key.
                    let has_hard_keys = hard_keys.iter().all(|k| info.labels().contains_key(*k));
                    for ((c, counts), pods) in constraints.iter().zip(&mut counts).zip(&pods) {
                        if (c.hard && !has_hard_keys) || !c.counts_node(pod, info) {
                            continue;
                        }
                        *counts.entry(info.labels()[&c.key].clone()).or_default() +=
                            pods.map_or(0, |p| p.on_node(info.name()));
                    }
                }
                let domains = counts.iter().map(HashMap::len).collect::<Vec<_>>();
                (
                    counts.into_iter().map(Cow::Owned).collect::<Vec<_>>(),
                    domains,
                )
            };
        let minimums = constraints
            .iter()
            .zip(counts.iter().zip(&domains))
            .map(|(c, (counts, domains))| {
                // Domains without matching pods have none in `counts`.
                if *domains < c.min_domains || counts.len() < *domains {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        Some(Self {
            constraints,
            pods,
            counts,
            minimums,
        })
    }

    pub fn filter(&self, info: &NodeInfo) -> Result<(), Rejection> {
        for (i, c) in self.constraints.iter().enumerate().filter(|(_, c)| c.hard) {
            let Some(value) = info.labels().get(&c.key) else {
                return Err(Rejection::unresolvable(MISSING_LABEL));
            };
            let count = self.counts[i].get(value).copied().unwrap_or(0);
            if count + c.self_match - self.minimums[i] > c.max_skew {
                return Err(Rejection::resolvable(CONSTRAINTS_NOT_MATCH));
            }
        }
        Ok(())
    }

    /// Scores the feasible nodes by their ScheduleAnyway constraints, fewer
    /// matching pods scoring higher, normalised to 0..=100 as upstream.
    pub fn scores(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let soft: Vec<(usize, &Constraint)> = self
            .constraints
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.hard)
            .collect();
        if soft.is_empty() {
            return vec![0; nodes.len()];
        }
        // Domains among the feasible nodes weigh each constraint (upstream's
        // topologyNormalizingWeight); per host, the feasible nodes are the domains.
        let weights: Vec<f64> = soft
            .iter()
            .map(|(_, c)| {
                let domains: HashSet<&String> = nodes
                    .iter()
                    .filter_map(|n| n.labels().get(&c.key))
                    .collect();
                ((domains.len() + 2) as f64).ln()
            })
            .collect();
        let raw: Vec<Option<f64>> = nodes
            .iter()
            .map(|info| {
                let mut total = 0.0;
                for ((i, c), w) in soft.iter().zip(&weights) {
                    let Some(value) = info.labels().get(&c.key) else {
                        if c.system {
                            continue;
                        }
                        return None;
                    };
                    let count = if c.key == HOSTNAME {
                        self.pods[*i].map_or(0, |p| p.on_node(info.name()))
                    } else {
                        self.counts[*i].get(value).copied().unwrap_or(0)
                    };
                    total += count as f64 * w + (c.max_skew - 1) as f64;
                }
                Some(total)
            })
            .collect();
        let present = raw.iter().flatten();
        let max = present.clone().copied().fold(0.0, f64::max);
        let min = present.copied().fold(f64::MAX, f64::min);
        raw.iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max == 0.0 => 100,
                Some(s) => (100.0 * (max + min - s) / max).round() as i64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(name: &str, spec: serde_json::Value) -> Arc<Pod> {
        let mut base = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c"}]}});
        json_patch::merge(&mut base, &json!({"spec": spec}));
        Arc::new(serde_json::from_value(base).unwrap())
    }

    fn cluster(zones: &[(&str, Option<&str>)]) -> Cache {
        let mut cache = Cache::default();
        for (name, zone) in zones {
            let mut labels = json!({"kubernetes.io/hostname": name});
            if let Some(z) = zone {
                labels["zone"] = json!(z);
            }
            cache.set_node(Arc::new(
                serde_json::from_value::<Node>(
                    json!({"metadata": {"name": name, "labels": labels}}),
                )
                .unwrap(),
            ));
        }
        cache
    }

    fn spread(when: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut c = json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when,
                           "labelSelector": {"matchLabels": {"app": "web"}}});
        json_patch::merge(&mut c, &extra);
        pod("new", json!({"topologySpreadConstraints": [c]}))
    }

    /// The cache, made ready for `incoming`.
    fn prepared<'a>(cache: &'a mut Cache, incoming: &Pod) -> &'a Cache {
        cache.prepare(&State::queries(incoming, None));
        cache
    }

    #[test]
    fn skew_beyond_max_rejects_and_a_missing_key_is_unresolvable() {
        let mut cache = cluster(&[("a", Some("z1")), ("b", Some("z2")), ("c", None)]);
        cache.assume("default/w1".into(), "a".into(), pod("w1", json!({})));
        let incoming = spread("DoNotSchedule", json!({}));
        let cache = prepared(&mut cache, &incoming);
        let state = State::new(&incoming, cache, None).unwrap();
        let v: Vec<_> = cache.nodes().map(|n| state.filter(n)).collect();
        assert_eq!(v[0].as_ref().unwrap_err().reasons, [CONSTRAINTS_NOT_MATCH]);
        assert!(v[0].as_ref().unwrap_err().resolvable);
        assert!(v[1].is_ok());
        assert_eq!(v[2].as_ref().unwrap_err().reasons, [MISSING_LABEL]);
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        let mut cache = cluster(&[("a", Some("z1")), ("b", Some("z2"))]);
        cache.assume("default/w1".into(), "a".into(), pod("w1", json!({})));
        cache.assume("default/w2".into(), "b".into(), pod("w2", json!({})));
        for (min_domains, fits) in [(json!({"minDomains": 3}), false), (json!({}), true)] {
            let incoming = spread("DoNotSchedule", min_domains);
            let cache = prepared(&mut cache, &incoming);
            let state = State::new(&incoming, cache, None).unwrap();
            assert!(cache.nodes().all(|n| state.filter(n).is_ok() == fits));
        }
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let mut cache = cluster(&[("a", Some("z1")), ("b", Some("z2"))]);
        cache.assume("default/w1".into(), "a".into(), pod("w1", json!({})));
        let incoming = spread("ScheduleAnyway", json!({}));
        let cache = prepared(&mut cache, &incoming);
        let state = State::new(&incoming, cache, None).unwrap();
        let nodes: Vec<&NodeInfo> = cache.nodes().collect();
        let scores = state.scores(&nodes);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert!(nodes.iter().all(|n| state.filter(n).is_ok()));
    }

    #[test]
    fn workload_pods_spread_by_system_defaults_in_scoring_only() {
        let mut cache = cluster(&[("a", None), ("b", None)]);
        cache.assume("default/w1".into(), "a".into(), pod("w1", json!({})));
        let incoming = pod("new", json!({}));
        assert!(State::new(&incoming, &cache, None).is_none(), "no workload");
        let web: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        cache.prepare(&State::queries(&incoming, Some(&web)));
        let state = State::new(&incoming, &cache, Some(&web)).unwrap();
        let nodes: Vec<&NodeInfo> = cache.nodes().collect();
        // Without zones the hostname default alone decides, over every node.
        assert_eq!(state.scores(&nodes), [59, 100]);
        assert!(nodes.iter().all(|n| state.filter(n).is_ok()));
        let own = spread(
            "ScheduleAnyway",
            json!({"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "none"}}}),
        );
        let state = State::new(&own, &cache, Some(&web)).unwrap();
        assert_eq!(
            state.scores(&nodes),
            [100, 100],
            "the pod's own constraints (counting no pods) win"
        );
    }
}
