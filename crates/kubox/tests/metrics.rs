//! Resource metrics end to end: the node agent's `/metrics/resource` read
//! from real containers' cgroups, the built-in metrics-server's
//! metrics.k8s.io read with stock `kubectl top`, and the
//! HorizontalPodAutoscaler scaling a Deployment by its pods' CPU.

use std::collections::HashMap;
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);

/// A server on node `node` scraping every second, with busybox imported.
async fn cluster(extra: &[&str]) -> KuboxServer {
    let mut args = vec!["--node-name", "node", "--metric-resolution=1s"];
    args.extend_from_slice(extra);
    let server = KuboxServer::start(KUBOX, &args).await;
    server.wait_node_ready("node").await;
    server.import_busybox();
    server
}

fn pod(name: &str, script: &str, cpu_request: Option<&str>) -> Value {
    let mut container = json!({
        "name": "main",
        "image": "busybox",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    });
    if let Some(cpu) = cpu_request {
        container["resources"] = json!({"requests": {"cpu": cpu}});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
            "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory"}}],
        }
    })
}

/// The rows of a kubectl table, each as column name to cell.
fn rows(table: &str) -> Vec<HashMap<String, String>> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split_whitespace().map(str::to_owned))
                .collect()
        })
        .collect()
}

fn millicores(cell: &str) -> f64 {
    cell.strip_suffix('m')
        .map(|m| m.parse().unwrap())
        .unwrap_or_else(|| cell.parse::<f64>().unwrap() * 1000.0)
}

fn mebibytes(cell: &str) -> f64 {
    cell.strip_suffix("Mi")
        .map(|m| m.parse().unwrap())
        .unwrap_or_else(|| panic!("memory {cell:?} is not in Mi"))
}

/// `kubectl top pods`' row for `name`, once it is there.
async fn top_pod(
    server: &KuboxServer,
    args: &[&str],
    name: &str,
    col: &str,
) -> Option<HashMap<String, String>> {
    let mut all = vec!["top", "pods"];
    all.extend_from_slice(args);
    let out = server.kubectl(&all);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    rows(&table)
        .into_iter()
        .find(|r| r.get(col).is_some_and(|n| n == name))
}

#[tokio::test]
async fn top_shows_a_pod_burning_a_core_and_one_holding_100_mib() {
    let server = cluster(&[]).await;
    server.apply_json(&pod("burner", "while :; do :; done", Some("500m")));
    server.apply_json(&pod(
        "holder",
        "head -c 104857600 /dev/zero > /cache/fill && exec sleep 3600",
        None,
    ));
    for p in ["burner", "holder"] {
        server.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{p}"),
            "--timeout=120s",
        ]);
    }
    // The agent's own page, through the API server's node proxy.
    let page = server.kubectl_ok(&["get", "--raw", "/api/v1/nodes/node/proxy/metrics/resource"]);
    for series in [
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        "container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"burner\"} ",
        "container_memory_working_set_bytes{container=\"main\",namespace=\"default\",pod=\"holder\"} ",
        "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"burner\"} ",
        "pod_memory_working_set_bytes{namespace=\"default\",pod=\"holder\"} ",
        "resource_scrape_error 0",
    ] {
        assert!(page.contains(series), "no {series:?} in\n{page}");
    }

    // A busy loop gets close to a core (the machine is shared, so a
    // reading within a minute will do).
    let burner = eventually("the busy pod to show most of a core", TIMEOUT, || async {
        let row = top_pod(&server, &[], "burner", "NAME").await?;
        (millicores(&row["CPU(cores)"]) >= 600.0).then_some(row)
    })
    .await;
    assert!(millicores(&burner["CPU(cores)"]) <= 1100.0, "{burner:?}");
    // Filling its 100 MiB costs the holder CPU at first; a window later it
    // idles.
    let holder = eventually("the holding pod to idle", TIMEOUT, || async {
        let row = top_pod(&server, &[], "holder", "NAME").await?;
        (millicores(&row["CPU(cores)"]) < 50.0).then_some(row)
    })
    .await;
    let held = mebibytes(&holder["MEMORY(bytes)"]);
    assert!((99.0..=130.0).contains(&held), "{holder:?}");

    // Containers, all namespaces, sorted by CPU: the burner first.
    let row = top_pod(&server, &["--containers"], "burner", "POD")
        .await
        .unwrap();
    assert_eq!(row["NAME"], "main");
    let sorted = server.kubectl_ok(&["top", "pods", "-A", "--sort-by=cpu"]);
    let first = &rows(&sorted)[0];
    assert_eq!(
        (first["NAMESPACE"].as_str(), first["NAME"].as_str()),
        ("default", "burner"),
        "{sorted}"
    );
    // By label, and by name.
    let labelled = server.kubectl_ok(&["top", "pods", "-l", "app=holder"]);
    assert_eq!(rows(&labelled).len(), 1, "{labelled}");
    let missing = server.kubectl(&["top", "pod", "nothing"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("podmetrics.metrics.k8s.io \"default/nothing\" not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let nodes = server.kubectl_ok(&["top", "nodes"]);
    let node = rows(&nodes)
        .into_iter()
        .find(|r| r["NAME"] == "node")
        .unwrap();
    let cpu_column = node
        .keys()
        .find(|k| k.starts_with("CPU(cores)"))
        .unwrap()
        .clone();
    assert!(millicores(&node[&cpu_column]) >= 500.0, "{nodes}");
    let memory: f64 = mebibytes(&node["MEMORY(bytes)"]);
    assert!(memory > held, "{nodes}");
}

/// A Deployment whose pods burn a core until `<dir>/stop` exists on the
/// host, then sleep.
fn burning_deployment(name: &str, dir: &std::path::Path, cpu_request: Option<&str>) -> Value {
    let mut container = json!({
        "name": "main",
        "image": "busybox",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", "while [ ! -e /ctl/stop ]; do :; done; exec sleep 3600"],
        "volumeMounts": [{"name": "ctl", "mountPath": "/ctl"}],
    });
    if let Some(cpu) = cpu_request {
        container["resources"] = json!({"requests": {"cpu": cpu}});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [container],
                    "volumes": [{"name": "ctl", "hostPath": {"path": dir.to_str().unwrap(), "type": "DirectoryOrCreate"}}],
                }
            }
        }
    })
}

fn hpa(name: &str, max: i32, behavior: Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": behavior,
        }
    })
}

fn spec_replicas(server: &KuboxServer, deployment: &str) -> i64 {
    let out = server.kubectl_ok(&[
        "get",
        "deployment",
        deployment,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    out.trim().parse().unwrap_or(-1)
}

/// The messages of the HPA's events with `reason`.
fn events(server: &KuboxServer, hpa: &str, reason: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={hpa},reason={reason}");
    let list: Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &selector,
        "-o",
        "json",
    ]))
    .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn hpa_scales_a_cpu_burning_deployment_up_and_back_down() {
    let server = cluster(&["--horizontal-pod-autoscaler-sync-period=2s"]).await;
    let ctl = server.data_dir().join("burn-ctl");
    server.apply_json(&burning_deployment("burn", &ctl, Some("200m")));
    // Back down 5 s after the last higher recommendation, not 5 minutes.
    server.apply_json(&hpa(
        "burn",
        3,
        json!({"scaleDown": {"stabilizationWindowSeconds": 5}}),
    ));
    eventually(
        "the HPA to scale the burning Deployment to 3",
        TIMEOUT,
        || async { (spec_replicas(&server, "burn") == 3).then_some(()) },
    )
    .await;
    let rescales = events(&server, "burn", "SuccessfulRescale");
    assert!(
        rescales.iter().any(|m| m == "New size: 3; reason: cpu resource utilization (percentage of request) above target"),
        "{rescales:?}"
    );
    // NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE, TARGETS `cpu: N%/50%`.
    let table = server.kubectl_ok(&["get", "hpa", "burn"]);
    let line = table.lines().nth(1).unwrap();
    let (head, tail) = line
        .split_once("%/50%")
        .unwrap_or_else(|| panic!("{table}"));
    let (reference, utilization) = head.split_once(" cpu: ").unwrap();
    assert_eq!(
        reference.split_whitespace().collect::<Vec<_>>(),
        ["burn", "Deployment/burn"],
        "{table}"
    );
    assert!(utilization.parse::<i64>().unwrap() > 50, "{table}");
    assert_eq!(
        tail.split_whitespace().take(2).collect::<Vec<_>>(),
        ["1", "3"],
        "{table}"
    );

    std::fs::write(ctl.join("stop"), b"").unwrap();
    eventually(
        "the HPA to scale back to 1 once the pods idle",
        TIMEOUT,
        || async { (spec_replicas(&server, "burn") == 1).then_some(()) },
    )
    .await;
    let rescales = events(&server, "burn", "SuccessfulRescale");
    assert!(
        rescales
            .iter()
            .any(|m| m == "New size: 1; reason: All metrics below target"),
        "{rescales:?}"
    );
    let hpa: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "hpa", "burn", "-o", "json"])).unwrap();
    let conditions: HashMap<String, String> = hpa["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(conditions["AbleToScale"], "True", "{hpa}");
    assert_eq!(conditions["ScalingActive"], "True", "{hpa}");
}

#[tokio::test]
async fn hpa_on_pods_without_requests_reports_failed_get_resource_metric() {
    let server = cluster(&["--horizontal-pod-autoscaler-sync-period=2s"]).await;
    let ctl = server.data_dir().join("idle-ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    std::fs::write(ctl.join("stop"), b"").unwrap();
    server.apply_json(&burning_deployment("norequests", &ctl, None));
    server.apply_json(&hpa("norequests", 5, Value::Null));
    let message = eventually(
        "FailedGetResourceMetric for the missing request",
        TIMEOUT,
        || async {
            events(&server, "norequests", "FailedGetResourceMetric")
                .into_iter()
                .find(|m| m.contains("missing request"))
        },
    )
    .await;
    assert!(
        message.starts_with("failed to get cpu utilization: missing request for cpu in container main of Pod norequests-"),
        "{message}"
    );
    let hpa: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "hpa", "norequests", "-o", "json"]))
            .unwrap();
    let active = hpa["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ScalingActive")
        .cloned()
        .unwrap();
    assert_eq!(
        (active["status"].as_str(), active["reason"].as_str()),
        (Some("False"), Some("FailedGetResourceMetric")),
        "{hpa}"
    );
    let table = server.kubectl_ok(&["get", "hpa", "norequests"]);
    assert!(table.contains("cpu: <unknown>/50%"), "{table}");
    assert_eq!(spec_replicas(&server, "norequests"), 1);
}
