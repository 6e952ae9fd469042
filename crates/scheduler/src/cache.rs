//! The scheduler's view of the cluster, kept up to date from watch events
//! rather than rebuilt for every pod: each node with the pods counted on it,
//! including those this scheduler bound (assumed) before the watch shows them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::node_info::{NodeInfo, bound_node, occupies_node};
use crate::queue::Key;

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
    /// Counted pods with pod affinity or anti-affinity terms, which every
    /// incoming pod is checked against.
    with_affinity: HashSet<Key>,
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
                info.set_node(node);
                count_images(&mut self.images, info, 1);
            }
            None => {
                let mut info = NodeInfo::new(node);
                count_images(&mut self.images, &info, 1);
                for (key, pod) in self.waiting.remove(&name).unwrap_or_default() {
                    info.add(key, pod);
                }
                self.nodes.insert(name.clone(), info);
                let at = self.order.binary_search(&name).unwrap_or_else(|i| i);
                self.order.insert(at, name);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            count_images(&mut self.images, &info, -1);
            self.order.retain(|n| n != name);
            self.waiting.insert(name.to_owned(), info.pods);
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
        self.with_affinity.remove(key);
        let Some(node) = self.placed.remove(key) else {
            return;
        };
        if let Some(info) = self.nodes.get_mut(&node) {
            info.remove(key);
        } else if let Some(pods) = self.waiting.get_mut(&node) {
            pods.remove(key);
            if pods.is_empty() {
                self.waiting.remove(&node);
            }
        }
    }

    fn place(&mut self, key: Key, node: String, pod: Arc<Pod>) {
        if self.placed.get(&key).is_some_and(|n| *n != node) {
            self.unplace(&key);
        }
        self.placed.insert(key.clone(), node.clone());
        if crate::affinity::has_affinity(&pod) {
            self.with_affinity.insert(key.clone());
        } else {
            self.with_affinity.remove(&key);
        }
        match self.nodes.get_mut(&node) {
            Some(info) => info.add(key, pod),
            None => {
                self.waiting.entry(node).or_default().insert(key, pod);
            }
        }
    }

    /// The nodes in order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeInfo> + Clone {
        self.order.iter().map(|n| &self.nodes[n])
    }

    pub fn pods_with_affinity(&self) -> usize {
        self.with_affinity.len()
    }

    /// The counted pods with affinity terms on known nodes, with their node.
    pub fn affinity_pods(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<Pod>)> {
        self.with_affinity.iter().filter_map(|key| {
            let info = self.nodes.get(self.placed.get(key)?)?;
            Some((info, info.pods.get(key)?))
        })
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
