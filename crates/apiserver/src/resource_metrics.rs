//! The resource metrics API (`metrics.k8s.io/v1beta1`): NodeMetrics and
//! PodMetrics, as metrics-server serves them. Nothing is stored: a
//! metrics-server in the same process keeps the latest window of usage in a
//! [`MetricsWindow`], and `get` and `list` read it.

use std::collections::BTreeMap;
use std::sync::RwLock;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::ListOptions;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

const GROUP: &str = "metrics.k8s.io";

/// Usage by resource name: `cpu` in cores, `memory` in bytes.
pub type Usage = BTreeMap<String, Quantity>;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    pub metadata: ObjectMeta,
    /// When the later of the two samples the rate is computed from was taken.
    pub timestamp: Time,
    /// The time between the two samples, as a Go duration (`15.012s`).
    pub window: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    pub window: String,
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContainerMetrics {
    pub name: String,
    pub usage: Usage,
}

impl Resource for NodeMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "NodeMetrics";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "nodes";
    type Scope = ClusterResourceScope;
}

impl Resource for PodMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "PodMetrics";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

#[derive(Default)]
struct Latest {
    nodes: BTreeMap<String, NodeMetrics>,
    /// By namespace, then name.
    pods: BTreeMap<(String, String), PodMetrics>,
}

/// The latest usage of every node and pod, replaced whole after each scrape.
#[derive(Default)]
pub struct MetricsWindow {
    latest: RwLock<Latest>,
}

impl MetricsWindow {
    pub fn replace(&self, nodes: Vec<NodeMetrics>, pods: Vec<PodMetrics>) {
        let key = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        let latest = Latest {
            nodes: nodes.into_iter().map(|n| (key(&n.metadata), n)).collect(),
            pods: pods
                .into_iter()
                .map(|p| {
                    let ns = p.metadata.namespace.clone().unwrap_or_default();
                    ((ns, key(&p.metadata)), p)
                })
                .collect(),
        };
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = latest;
    }

    /// One object, as the API returns it.
    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        let found = match ns {
            Some(ns) if rt.namespaced => latest
                .pods
                .get(&(ns.to_owned(), name.to_owned()))
                .map(|p| object(rt, p)),
            _ => latest.nodes.get(name).map(|n| object(rt, n)),
        };
        found.ok_or_else(|| {
            // metrics-server names the missing object `namespace/name`.
            let shown = ns.map_or_else(|| name.to_owned(), |ns| format!("{ns}/{name}"));
            ApiError::not_found(GROUP, &rt.kind.to_ascii_lowercase(), &shown)
        })
    }

    /// The objects a list asks for: in one namespace or all, by label and name.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, opts: &ListOptions) -> Value {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        let items: Vec<Value> = if rt.namespaced {
            latest
                .pods
                .iter()
                .filter(|((pod_ns, _), _)| ns.is_none_or(|ns| ns == pod_ns))
                .map(|(_, p)| object(rt, p))
                .collect()
        } else {
            latest.nodes.values().map(|n| object(rt, n)).collect()
        };
        let items: Vec<Value> = items
            .into_iter()
            .filter(|o| {
                opts.label_selector.matches(&o["metadata"]["labels"])
                    && opts.field_selector.matches(o)
            })
            .collect();
        json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {},
            "items": items,
        })
    }
}

fn object(rt: &ResourceType, m: &impl Serialize) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["kind"] = json!(rt.kind);
    v["apiVersion"] = json!(rt.api_version());
    v
}

/// A duration as Go's `time.Duration` prints it, which is how
/// metrics-server reports windows: `15s`, `14.98s`, `1m0.5s`.
pub fn go_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    let (minutes, ms) = (ms / 60_000, ms % 60_000);
    let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::selectors::LabelSelector;

    fn pod(ns: &str, name: &str, app: &str) -> PodMetrics {
        PodMetrics {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some([("app".to_owned(), app.to_owned())].into()),
                ..Default::default()
            },
            timestamp: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            window: "15s".into(),
            containers: vec![],
        }
    }

    #[test]
    fn pods_are_listed_by_namespace_and_label() {
        let registry = Registry::builtin();
        let rt = registry.get(GROUP, "v1beta1", "pods").unwrap();
        let window = MetricsWindow::default();
        window.replace(
            vec![],
            vec![
                pod("a", "web", "web"),
                pod("a", "db", "db"),
                pod("b", "web", "web"),
            ],
        );
        let opts = ListOptions {
            label_selector: LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        let names = |list: Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    format!(
                        "{}/{}",
                        i["metadata"]["namespace"].as_str().unwrap(),
                        i["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect()
        };
        assert_eq!(names(window.list(rt, None, &opts)), ["a/web", "b/web"]);
        assert_eq!(
            names(window.list(rt, Some("a"), &ListOptions::default())),
            ["a/db", "a/web"]
        );
        let got = window.get(rt, Some("b"), "web").unwrap();
        assert_eq!(
            (got["kind"].as_str(), got["apiVersion"].as_str()),
            (Some("PodMetrics"), Some("metrics.k8s.io/v1beta1"))
        );
        let missing = window.get(rt, Some("b"), "db").unwrap_err();
        assert_eq!(
            missing.message,
            "podmetrics.metrics.k8s.io \"b/db\" not found"
        );
    }

    #[test]
    fn windows_read_as_go_durations() {
        use std::time::Duration;
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(14_980)), "14.98s");
        assert_eq!(go_duration(Duration::from_millis(60_500)), "1m0.5s");
    }
}
