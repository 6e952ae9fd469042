//! DaemonSets end to end: a real busybox pod on the node of a real `kubox
//! server`, rolled out, updated and rolled back with stock kubectl; and the
//! pod garbage collector's orphans.

use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);

fn get_json(server: &KuboxServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).unwrap()
}

/// The DaemonSet's pods that are not terminating.
fn live_pods(server: &KuboxServer) -> Vec<Value> {
    get_json(server, &["get", "pods", "-l", "app=agent"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn rollout_status(server: &KuboxServer) -> String {
    server.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=120s"])
}

/// Waits until the one live pod runs `image`; that pod.
async fn pod_with_image(server: &KuboxServer, image: &str) -> Value {
    eventually(
        &format!("the daemon pod to run {image}"),
        TIMEOUT,
        || async {
            let pods = live_pods(server);
            (pods.len() == 1 && pods[0]["spec"]["containers"][0]["image"] == image)
                .then(|| pods[0].clone())
        },
    )
    .await
}

#[tokio::test]
async fn a_daemonset_runs_on_the_node_rolls_out_and_rolls_back() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.wait_node_ready("node").await;
    server.import_busybox_as("docker.io/library/busybox:1.0");
    server.import_busybox_as("docker.io/library/busybox:2.0");
    server.apply_json(&json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "agent", "image": "busybox:1.0", "command": ["sleep", "3600"]}]
                }
            }
        }
    }));
    let out = rollout_status(&server);
    assert!(
        out.ends_with("daemon set \"agent\" successfully rolled out\n"),
        "{out}"
    );
    let pod = pod_with_image(&server, "busybox:1.0").await;
    assert_eq!(pod["spec"]["nodeName"], "node");
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0],
        json!({"key": "metadata.name", "operator": "In", "values": ["node"]})
    );
    let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
    assert!(tolerations.contains(&json!({
        "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"
    })));
    let hash = pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let revision = get_json(
        &server,
        &["get", "controllerrevision", &format!("agent-{hash}")],
    );
    assert_eq!(revision["revision"], 1);
    assert_eq!(
        revision["metadata"]["ownerReferences"][0]["kind"],
        "DaemonSet"
    );

    let ds = get_json(&server, &["get", "ds", "agent"]);
    let status = &ds["status"];
    for field in [
        "desiredNumberScheduled",
        "currentNumberScheduled",
        "numberReady",
        "updatedNumberScheduled",
        "numberAvailable",
    ] {
        assert_eq!(status[field], 1, "{field}: {status}");
    }
    assert_eq!(status["observedGeneration"], ds["metadata"]["generation"]);
    let table = server.kubectl_ok(&["get", "ds", "agent"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE"
        ]
    );
    assert_eq!(rows[1][..7], ["agent", "1", "1", "1", "1", "1", "<none>"]);

    server.kubectl_ok(&["set", "image", "ds/agent", "agent=busybox:2.0"]);
    let out = rollout_status(&server);
    assert!(
        out.ends_with("daemon set \"agent\" successfully rolled out\n"),
        "{out}"
    );
    let updated = pod_with_image(&server, "busybox:2.0").await;
    assert_ne!(
        updated["metadata"]["labels"]["controller-revision-hash"],
        hash.as_str()
    );
    let history = server.kubectl_ok(&["rollout", "history", "ds/agent"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    assert_eq!(
        server.kubectl_ok(&["rollout", "undo", "ds/agent"]).trim(),
        "daemonset.apps/agent rolled back"
    );
    let back = pod_with_image(&server, "busybox:1.0").await;
    assert_eq!(
        back["metadata"]["labels"]["controller-revision-hash"],
        hash.as_str()
    );
    let revision = get_json(
        &server,
        &["get", "controllerrevision", &format!("agent-{hash}")],
    );
    assert_eq!(revision["revision"], 3);
}

#[tokio::test]
async fn pods_bound_to_a_node_that_does_not_exist_are_collected() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.apply_json(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stranded"},
        "spec": {
            "nodeName": "ghost",
            "containers": [{"name": "c", "image": "busybox:1.0"}]
        }
    }));
    // 40 s of quarantine for the missing node, checked every 20 s.
    eventually("the orphaned pod to be collected", TIMEOUT, || async {
        (!server.kubectl(&["get", "pod", "stranded"]).status.success()).then_some(())
    })
    .await;
}
