//! The last two samples of every node and container, from which usage is
//! computed as metrics-server does: CPU as the rate between them (the
//! counters' delta over the time between their readings), memory as the
//! latest working set. A series with one sample, a counter that went
//! back or a container that restarted in between yields nothing yet.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::exposition::Sample;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub cpu_seconds: f64,
    pub memory_bytes: f64,
    pub timestamp_ms: i64,
    /// When the container started (seconds); 0 for nodes.
    pub started: f64,
}

/// What one scrape of one node gave.
#[derive(Debug, Default)]
pub struct NodeScrape {
    pub node: Option<Point>,
    /// By namespace, pod and container.
    pub containers: HashMap<(String, String, String), Point>,
}

impl NodeScrape {
    /// Puts the series of a `/metrics/resource` page together.
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut scrape = NodeScrape::default();
        let mut node = Point {
            cpu_seconds: f64::NAN,
            memory_bytes: f64::NAN,
            timestamp_ms: 0,
            started: 0.0,
        };
        for s in samples {
            let ts = s.timestamp_ms.unwrap_or_default();
            let key = || {
                (
                    s.label("namespace").to_owned(),
                    s.label("pod").to_owned(),
                    s.label("container").to_owned(),
                )
            };
            match s.name.as_str() {
                "node_cpu_usage_seconds_total" => {
                    node.cpu_seconds = s.value;
                    node.timestamp_ms = ts;
                }
                "node_memory_working_set_bytes" => node.memory_bytes = s.value,
                "container_cpu_usage_seconds_total" => {
                    let c = container_point(&mut scrape, key(), ts);
                    c.cpu_seconds = s.value;
                    c.timestamp_ms = ts;
                }
                "container_memory_working_set_bytes" => {
                    container_point(&mut scrape, key(), ts).memory_bytes = s.value
                }
                "container_start_time_seconds" => {
                    container_point(&mut scrape, key(), ts).started = s.value
                }
                _ => {}
            }
        }
        let complete = |p: &Point| !p.cpu_seconds.is_nan() && !p.memory_bytes.is_nan();
        scrape.node = complete(&node).then_some(node);
        scrape.containers.retain(|_, p| complete(p));
        scrape
    }
}

fn container_point(scrape: &mut NodeScrape, key: (String, String, String), ts: i64) -> &mut Point {
    scrape.containers.entry(key).or_insert(Point {
        cpu_seconds: f64::NAN,
        memory_bytes: f64::NAN,
        timestamp_ms: ts,
        started: 0.0,
    })
}

/// CPU in cores and memory in bytes, over `window` ending at `timestamp_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub timestamp_ms: i64,
    pub window: Duration,
}

fn usage(prev: &Point, last: &Point) -> Option<Usage> {
    let elapsed = last.timestamp_ms - prev.timestamp_ms;
    let delta = last.cpu_seconds - prev.cpu_seconds;
    (elapsed > 0 && delta >= 0.0 && prev.started == last.started).then(|| Usage {
        cpu_cores: delta / (elapsed as f64 / 1000.0),
        memory_bytes: last.memory_bytes,
        timestamp_ms: last.timestamp_ms,
        window: Duration::from_millis(elapsed as u64),
    })
}

#[derive(Default)]
struct Series {
    prev: Option<Point>,
    last: Option<Point>,
}

impl Series {
    fn push(&mut self, p: Point) {
        match self.last {
            Some(last) if last.timestamp_ms >= p.timestamp_ms => {}
            _ => self.prev = self.last.replace(p),
        }
    }

    fn usage(&self) -> Option<Usage> {
        usage(self.prev.as_ref()?, self.last.as_ref()?)
    }
}

#[derive(Default)]
pub struct Storage {
    nodes: HashMap<String, Series>,
    containers: HashMap<(String, String, String), Series>,
}

impl Storage {
    /// Takes one round of scrapes, by node; nodes and containers missing
    /// from it are forgotten.
    pub fn store(&mut self, round: HashMap<String, NodeScrape>) {
        self.nodes
            .retain(|n, _| round.get(n).is_some_and(|s| s.node.is_some()));
        self.containers
            .retain(|k, _| round.values().any(|s| s.containers.contains_key(k)));
        for (name, scrape) in round {
            if let Some(p) = scrape.node {
                self.nodes.entry(name).or_default().push(p);
            }
            for (key, p) in scrape.containers {
                self.containers.entry(key).or_default().push(p);
            }
        }
    }

    pub fn nodes(&self) -> BTreeMap<String, Usage> {
        self.nodes
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.usage()?)))
            .collect()
    }

    /// Pods by namespace and name, each with its containers' usage by
    /// name; a pod is left out until every one of its containers has usage.
    pub fn pods(&self) -> BTreeMap<(String, String), BTreeMap<String, Usage>> {
        let mut pods: BTreeMap<(String, String), Option<BTreeMap<String, Usage>>> = BTreeMap::new();
        for ((ns, pod, container), series) in &self.containers {
            let entry = pods
                .entry((ns.clone(), pod.clone()))
                .or_insert_with(|| Some(BTreeMap::new()));
            match (series.usage(), entry.as_mut()) {
                (Some(u), Some(containers)) => {
                    containers.insert(container.clone(), u);
                }
                _ => *entry = None,
            }
        }
        pods.into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(cpu: f64, ms: i64, started: f64) -> Point {
        Point {
            cpu_seconds: cpu,
            memory_bytes: 100.0,
            timestamp_ms: ms,
            started,
        }
    }

    fn round(node: Point, containers: &[(&str, Point)]) -> HashMap<String, NodeScrape> {
        let containers = containers
            .iter()
            .map(|(c, p)| (("ns".into(), "p".into(), c.to_string()), *p))
            .collect();
        HashMap::from([(
            "n".to_owned(),
            NodeScrape {
                node: Some(node),
                containers,
            },
        )])
    }

    #[test]
    fn cpu_is_the_rate_between_the_last_two_samples() {
        let mut s = Storage::default();
        s.store(round(
            point(10.0, 1_000, 0.0),
            &[("a", point(1.0, 1_000, 5.0))],
        ));
        assert!(s.nodes().is_empty() && s.pods().is_empty());
        s.store(round(
            point(25.0, 16_000, 0.0),
            &[("a", point(16.0, 16_000, 5.0))],
        ));
        let n = s.nodes()["n"];
        assert_eq!((n.cpu_cores, n.window), (1.0, Duration::from_secs(15)));
        let pods = s.pods();
        assert_eq!(pods[&("ns".into(), "p".into())]["a"].cpu_cores, 1.0);
    }

    #[test]
    fn restarts_and_partial_pods_give_nothing() {
        let mut s = Storage::default();
        s.store(round(
            point(0.0, 1_000, 0.0),
            &[("a", point(5.0, 1_000, 5.0))],
        ));
        // Restarted: a new start time and a counter from zero.
        s.store(round(
            point(1.0, 2_000, 0.0),
            &[("a", point(0.1, 2_000, 9.0)), ("b", point(0.1, 2_000, 9.0))],
        ));
        assert!(s.pods().is_empty());
        s.store(round(
            point(2.0, 3_000, 0.0),
            &[("a", point(0.6, 3_000, 9.0)), ("b", point(0.2, 3_000, 9.0))],
        ));
        let pod = &s.pods()[&("ns".into(), "p".into())];
        assert!((pod["a"].cpu_cores - 0.5).abs() < 1e-9, "{pod:?}");
        // A node missing from a round is forgotten.
        s.store(HashMap::new());
        assert!(s.nodes().is_empty() && s.pods().is_empty());
    }
}
