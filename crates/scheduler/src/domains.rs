//! Pods counted per node and per topology domain for one topology key,
//! kept up to date as pods are placed and removed and as nodes are
//! relabelled, so that an incoming pod's affinity and spread state is read
//! from counts rather than from every pod of the cluster.

use std::collections::{BTreeMap, HashMap};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainCounts {
    key: String,
    /// Every counted pod, by the node it is on, known to the cache or not.
    per_node: HashMap<String, i64>,
    /// The pods on known nodes that have the key, by the key's value.
    per_value: HashMap<String, i64>,
}

fn bump(counts: &mut HashMap<String, i64>, at: &str, delta: i64) {
    if delta == 0 {
        return;
    }
    let n = counts.entry(at.to_owned()).or_default();
    *n += delta;
    if *n == 0 {
        counts.remove(at);
    }
}

impl DomainCounts {
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Counts `delta` pods on `node`, whose labels are None while the
    /// node is unknown.
    pub fn add(&mut self, node: &str, labels: Option<&Labels>, delta: i64) {
        bump(&mut self.per_node, node, delta);
        if let Some(value) = labels.and_then(|l| l.get(&self.key)) {
            bump(&mut self.per_value, value, delta);
        }
    }

    /// Moves the node's pods to the domain its new labels put it in (None:
    /// the node is unknown, before it arrives or after it is gone).
    pub fn relabel(&mut self, node: &str, old: Option<&Labels>, new: Option<&Labels>) {
        let old_value = old.and_then(|l| l.get(&self.key));
        let new_value = new.and_then(|l| l.get(&self.key));
        if old_value == new_value {
            return;
        }
        let n = self.on_node(node);
        if let Some(v) = old_value {
            bump(&mut self.per_value, v, -n);
        }
        if let Some(v) = new_value {
            bump(&mut self.per_value, v, n);
        }
    }

    pub fn on_node(&self, node: &str) -> i64 {
        self.per_node.get(node).copied().unwrap_or(0)
    }

    /// The domains with counted pods, and how many.
    pub fn domains(&self) -> &HashMap<String, i64> {
        &self.per_value
    }

    pub fn is_empty(&self) -> bool {
        self.per_node.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl DomainCounts {
        fn in_domain(&self, value: &str) -> i64 {
            self.per_value.get(value).copied().unwrap_or(0)
        }
    }

    fn labels(zone: &str) -> Labels {
        [("zone".to_owned(), zone.to_owned())].into()
    }

    #[test]
    fn counts_follow_pods_and_relabelled_nodes() {
        let mut c = DomainCounts::new("zone");
        let (z1, z2) = (labels("z1"), labels("z2"));
        c.add("a", Some(&z1), 1);
        c.add("a", Some(&z1), 1);
        c.add("b", Some(&z1), 1);
        assert_eq!((c.in_domain("z1"), c.on_node("a")), (3, 2));
        c.relabel("a", Some(&z1), Some(&z2));
        assert_eq!((c.in_domain("z1"), c.in_domain("z2")), (1, 2));
        c.add("a", Some(&z2), -1);
        c.add("b", Some(&z1), -1);
        assert_eq!(c.domains(), &HashMap::from([("z2".to_owned(), 1)]));
        c.relabel("a", Some(&z2), Some(&Labels::new()));
        assert!(
            c.domains().is_empty(),
            "a node without the key is no domain"
        );
        assert_eq!(c.on_node("a"), 1);
        c.add("a", Some(&Labels::new()), -1);
        assert!(c.is_empty());
    }

    #[test]
    fn pods_on_unknown_nodes_count_once_the_node_arrives() {
        let mut c = DomainCounts::new("zone");
        c.add("late", None, 2);
        assert!(c.domains().is_empty());
        c.relabel("late", None, Some(&labels("z1")));
        assert_eq!(c.in_domain("z1"), 2);
        c.relabel("late", Some(&labels("z1")), None);
        assert!(c.domains().is_empty());
        assert_eq!(c.on_node("late"), 2);
    }
}
