//! kubox's metrics-server: every resolution period it scrapes each node
//! agent's `/metrics/resource` through the API server's node proxy (as an
//! API client with metrics-server's identity), turns the counters into
//! usage, and hands the latest window to the API server, which serves it
//! as `metrics.k8s.io/v1beta1` for `kubectl top` and the HPA controller.

mod exposition;
mod storage;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use kubox_apiserver::resource_metrics::{
    ContainerMetrics, MetricsWindow, NodeMetrics, PodMetrics, go_duration,
};

use crate::storage::{NodeScrape, Storage, Usage};

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("GET {0}: {1}")]
    Get(String, #[source] kube::Error),
    #[error("reading {0}: {1}")]
    Parse(String, #[source] exposition::ParseError),
}

/// Scrapes one node's resource metrics through the API server.
pub async fn scrape_node(client: &kube::Client, node: &str) -> Result<NodeScrape, ScrapeError> {
    let path = format!("/api/v1/nodes/{node}/proxy/metrics/resource");
    let request = http::Request::get(&path)
        .body(Vec::new())
        .expect("a GET request builds");
    let page = client
        .request_text(request)
        .await
        .map_err(|e| ScrapeError::Get(path.clone(), e))?;
    let samples = exposition::parse(&page).map_err(|e| ScrapeError::Parse(path, e))?;
    Ok(NodeScrape::from_samples(&samples))
}

/// A running metrics-server; dropping it stops scraping.
pub struct MetricsServer {
    _tasks: kubox_client::Tasks,
}

impl MetricsServer {
    /// Scrapes every `resolution` (metrics-server's `--metric-resolution`).
    pub fn start(client: kube::Client, window: Arc<MetricsWindow>, resolution: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut storage = Storage::default();
            let mut ticks = tokio::time::interval(resolution);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let started = Instant::now();
                if let Err(e) = round(&client, &mut storage, &window, resolution).await {
                    tracing::warn!("metrics-server: {e}");
                }
                tracing::debug!("metrics-server: scrape took {:?}", started.elapsed());
            }
        });
        Self {
            _tasks: kubox_client::Tasks::new(vec![task]),
        }
    }
}

async fn round(
    client: &kube::Client,
    storage: &mut Storage,
    window: &MetricsWindow,
    timeout: Duration,
) -> Result<(), kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let scrapes = futures::future::join_all(nodes.items.iter().map(|n| async move {
        let name = n.metadata.name.clone().unwrap_or_default();
        let got = tokio::time::timeout(timeout, scrape_node(client, &name)).await;
        (name, got)
    }))
    .await;
    let mut round = HashMap::new();
    for (name, got) in scrapes {
        match got {
            Ok(Ok(scrape)) => {
                round.insert(name, scrape);
            }
            Ok(Err(e)) => tracing::warn!("metrics-server: scraping node {name}: {e}"),
            Err(_) => tracing::warn!("metrics-server: scraping node {name} timed out"),
        }
    }
    storage.store(round);
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    window.replace(
        node_metrics(&nodes.items, storage),
        pod_metrics(&pods.items, storage),
    );
    Ok(())
}

fn usage_of(cpu_cores: f64, memory_bytes: f64) -> BTreeMap<String, Quantity> {
    let nanocores = (cpu_cores * 1e9).round() as u64;
    let bytes = memory_bytes.max(0.0) as u64;
    let memory = if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    };
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(format!("{nanocores}n"))),
        ("memory".to_owned(), Quantity(memory)),
    ])
}

fn time(ms: i64) -> Time {
    Time(Timestamp::from_millisecond(ms).unwrap_or_else(|_| Timestamp::now()))
}

/// The objects' metadata as metrics-server gives it: name, namespace,
/// labels, and the time of the answer as creation time.
fn meta(of: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: of.name.clone(),
        namespace: of.namespace.clone(),
        labels: of.labels.clone(),
        creation_timestamp: Some(Time(Timestamp::now())),
        ..Default::default()
    }
}

fn node_metrics(nodes: &[Node], storage: &Storage) -> Vec<NodeMetrics> {
    let usage = storage.nodes();
    nodes
        .iter()
        .filter_map(|n| {
            let u = usage.get(n.metadata.name.as_deref()?)?;
            Some(NodeMetrics {
                metadata: meta(&n.metadata),
                timestamp: time(u.timestamp_ms),
                window: go_duration(u.window),
                usage: usage_of(u.cpu_cores, u.memory_bytes),
            })
        })
        .collect()
}

fn pod_metrics(pods: &[Pod], storage: &Storage) -> Vec<PodMetrics> {
    let usage = storage.pods();
    pods.iter()
        .filter_map(|p| {
            let key = (p.metadata.namespace.clone()?, p.metadata.name.clone()?);
            let containers = usage.get(&key)?;
            let latest: &Usage = containers.values().max_by_key(|u| u.timestamp_ms)?;
            Some(PodMetrics {
                metadata: meta(&p.metadata),
                timestamp: time(latest.timestamp_ms),
                window: go_duration(latest.window),
                containers: containers
                    .iter()
                    .map(|(name, u)| ContainerMetrics {
                        name: name.clone(),
                        usage: usage_of(u.cpu_cores, u.memory_bytes),
                    })
                    .collect(),
            })
        })
        .collect()
}
