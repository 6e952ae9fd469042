//! The pod garbage collector (upstream's pod-garbage-collector), every
//! 20 s: finished pods beyond the threshold (12500) go, oldest first; pods
//! bound to a node that no longer exists (still missing 40 s after it was
//! first missed, checked against the API) are marked Failed with the
//! DisruptionTarget condition and deleted at once; terminating pods never
//! scheduled are deleted at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{Context, api_message, is_not_found};

pub const COMPONENT: &str = "pod-garbage-collector";

const PERIOD: Duration = Duration::from_secs(20);
/// How long a node must stay missing before its pods are orphans.
const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's default `--terminated-pod-gc-threshold`.
const TERMINATED_THRESHOLD: usize = 12500;

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// The finished pods beyond `threshold`, oldest first.
fn excess_terminated(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut finished: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| matches!(phase(p), "Succeeded" | "Failed"))
        .cloned()
        .collect();
    let excess = finished.len().saturating_sub(threshold);
    finished.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    finished.truncate(excess);
    finished
}

/// Terminating pods no node will ever finish.
fn unscheduled_terminating(pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_empty())
        .cloned()
        .collect()
}

struct Collector {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Nodes pods name that the cache lacks, and since when.
    missing: HashMap<String, Instant>,
}

pub async fn run(ctx: Arc<Context>) {
    let pods = ctx.informers.get::<Pod>();
    let nodes = ctx.informers.get::<Node>();
    pods.synced().await;
    nodes.synced().await;
    let mut gc = Collector {
        client: ctx.client.clone(),
        pods: pods.store(),
        nodes: nodes.store(),
        missing: HashMap::new(),
    };
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        gc.collect().await;
    }
}

impl Collector {
    async fn collect(&mut self) {
        let pods = self.pods.state();
        for p in excess_terminated(&pods, TERMINATED_THRESHOLD) {
            self.delete(&p, None).await;
        }
        for p in self.orphans(&pods).await {
            self.mark_failed(&p).await;
            self.delete(&p, Some(0)).await;
        }
        for p in unscheduled_terminating(&pods) {
            self.delete(&p, Some(0)).await;
        }
    }

    /// Pods on nodes missing for the quarantine, the API confirming it.
    async fn orphans(&mut self, pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
        let known: HashSet<String> = self.nodes.state().iter().map(|n| n.name_any()).collect();
        let wanted: HashSet<&str> = pods
            .iter()
            .map(|p| node_of(p))
            .filter(|n| !n.is_empty() && !known.contains(*n))
            .collect();
        self.missing.retain(|n, _| wanted.contains(n.as_str()));
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut gone = HashSet::new();
        for name in wanted {
            let since = *self
                .missing
                .entry(name.to_owned())
                .or_insert_with(Instant::now);
            if since.elapsed() < QUARANTINE {
                continue;
            }
            match nodes.get(name).await {
                Err(e) if is_not_found(&e) => {
                    gone.insert(name.to_owned());
                }
                Err(e) => {
                    tracing::warn!(controller = COMPONENT, node = name, "{}", api_message(&e))
                }
                Ok(_) => {}
            }
        }
        pods.iter()
            .filter(|p| gone.contains(node_of(p)))
            .cloned()
            .collect()
    }

    async fn mark_failed(&self, pod: &Pod) {
        if matches!(phase(pod), "Succeeded" | "Failed") {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let status = json!({"status": {
            "phase": "Failed",
            "conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists",
                "lastTransitionTime": crate::now(),
            }],
        }});
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await
            && !is_not_found(&e)
        {
            tracing::warn!(controller = COMPONENT, pod = %pod.name_any(), "{}", api_message(&e));
        }
    }

    async fn delete(&self, pod: &Pod, grace: Option<u32>) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: grace,
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => tracing::info!(controller = COMPONENT, pod = %pod.name_any(), "deleted"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(controller = COMPONENT, pod = %pod.name_any(), "{}", api_message(&e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, created: i64, node: &str, deleting: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {
                    "name": name,
                    "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
                    "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z"),
                },
                "spec": {"nodeName": (!node.is_empty()).then_some(node), "containers": []},
                "status": {"phase": phase}
            }))
            .unwrap(),
        )
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn the_oldest_finished_pods_beyond_the_threshold_go() {
        let pods = vec![
            pod("new-done", "Succeeded", 300, "n", false),
            pod("running", "Running", 1, "n", false),
            pod("old-failed", "Failed", 100, "n", false),
            pod("mid-done", "Succeeded", 200, "n", false),
        ];
        assert_eq!(
            names(&excess_terminated(&pods, 1)),
            ["old-failed", "mid-done"]
        );
        assert!(excess_terminated(&pods, 3).is_empty());
    }

    #[test]
    fn terminating_pods_never_scheduled_go() {
        let pods = vec![
            pod("bound", "Running", 1, "n", true),
            pod("unbound", "Pending", 1, "", true),
            pod("pending", "Pending", 1, "", false),
        ];
        assert_eq!(names(&unscheduled_terminating(&pods)), ["unbound"]);
    }
}
