//! The scheduler end to end: pods without a node are placed by upstream's
//! rules, and those that fit nowhere say why exactly as kube-scheduler does.

use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn pod(server: &KuboxServer, name: &str) -> Value {
    serde_json::from_str(&server.kubectl_ok(&["get", "pod", name, "-o", "json"])).unwrap()
}

fn run(server: &KuboxServer, name: &str, overrides: Value) {
    server.kubectl_ok(&[
        "run",
        name,
        "--image=busybox",
        "--overrides",
        &overrides.to_string(),
        "--",
        "sleep",
        "3600",
    ]);
}

/// Waits for the pod's PodScheduled condition to say it cannot be placed, and returns why.
async fn unschedulable_message(server: &KuboxServer, name: &str) -> String {
    eventually("the pod is reported unschedulable", TIMEOUT, || async {
        let p = pod(server, name);
        let condition = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        (condition["status"] == "False" && condition["reason"] == "Unschedulable")
            .then(|| condition["message"].as_str().unwrap_or_default().to_owned())
    })
    .await
}

async fn bound_to_node(server: &KuboxServer, name: &str) {
    eventually("the pod is bound and running", TIMEOUT, || async {
        let p = pod(server, name);
        (p["spec"]["nodeName"] == "node" && p["status"]["phase"] == "Running").then_some(())
    })
    .await;
}

#[tokio::test]
async fn pods_are_placed_and_unschedulable_ones_say_why() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();

    server.kubectl_ok(&["run", "web", "--image=busybox", "--", "sleep", "3600"]);
    bound_to_node(&server, "web").await;
    let events = server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web,reason=Scheduled",
        "-o",
        "json",
    ]);
    assert!(
        events.contains("Successfully assigned default/web to node"),
        "{events}"
    );

    run(
        &server,
        "picky",
        serde_json::json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
    );
    assert_eq!(
        unschedulable_message(&server, "picky").await,
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    let failed = server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=picky,reason=FailedScheduling",
        "-o",
        "name",
    ]);
    assert!(!failed.is_empty());
    // Labelling the node is a cluster event: the pod is tried again and fits.
    server.kubectl_ok(&["label", "node", "node", "disk=ssd"]);
    bound_to_node(&server, "picky").await;

    server.kubectl_ok(&["taint", "node", "node", "role/log=true:NoSchedule"]);
    run(&server, "plain", serde_json::json!({}));
    assert_eq!(
        unschedulable_message(&server, "plain").await,
        "0/1 nodes are available: 1 node(s) had untolerated taint {role/log: true}. \
         preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    run(
        &server,
        "tolerant",
        serde_json::json!({"spec": {"tolerations": [{"key": "role/log", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}}),
    );
    bound_to_node(&server, "tolerant").await;
    server.kubectl_ok(&["taint", "node", "node", "role/log=true:NoSchedule-"]);
    bound_to_node(&server, "plain").await;

    server.kubectl_ok(&["cordon", "node"]);
    run(&server, "waiting", serde_json::json!({}));
    assert_eq!(
        unschedulable_message(&server, "waiting").await,
        "0/1 nodes are available: 1 node(s) were unschedulable. \
         preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    server.kubectl_ok(&["uncordon", "node"]);
    bound_to_node(&server, "waiting").await;

    run(
        &server,
        "huge",
        serde_json::json!({"spec": {"containers": [{"name": "huge", "image": "busybox", "args": ["sleep", "3600"],
                                                     "resources": {"requests": {"cpu": "1000"}}}]}}),
    );
    assert_eq!(
        unschedulable_message(&server, "huge").await,
        "0/1 nodes are available: 1 Insufficient cpu. \
         preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
    let table = server.kubectl_ok(&["get", "pod", "huge"]);
    assert!(table.contains("Pending"), "{table}");

    server.kubectl_ok(&["delete", "pods", "--all", "--grace-period=1"]);
}
