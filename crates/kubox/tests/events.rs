//! Events as upstream's recorders write them: a repeated event is one
//! Event whose `count` grows and whose `lastTimestamp` moves, which stock
//! kubectl shows (`describe`'s `(x2 over 15s)`, `get events
//! --sort-by=.lastTimestamp`).

use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_repeated_event_is_counted_on_the_first() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.wait_node_ready("node").await;
    server.import_busybox();
    // Exits at once, so the agent starts it again and again.
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "flaky"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent", "command": ["false"]}],
        },
    }));
    let selector = "involvedObject.name=flaky,reason=Started";
    let started = eventually("the container to have started twice", TIMEOUT, || async {
        let out = server.kubectl_ok(&["get", "events", "--field-selector", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&out).ok()?;
        let items = list["items"].as_array()?.clone();
        (items
            .iter()
            .map(|e| e["count"].as_i64().unwrap_or(0))
            .sum::<i64>()
            >= 2)
            .then_some(items)
    })
    .await;
    assert_eq!(
        started.len(),
        1,
        "one Event for the repeated start: {started:#?}"
    );
    let event = &started[0];
    assert_eq!(event["message"], "Started container main");
    assert_eq!(event["source"]["component"], "kubelet");
    // Timestamps have seconds only, and the first restart is immediate.
    assert!(
        event["lastTimestamp"].as_str() >= event["firstTimestamp"].as_str(),
        "{event:#?}"
    );

    let describe = server.kubectl_ok(&["describe", "pod", "flaky"]);
    let line = describe
        .lines()
        .find(|l| l.contains("Started") && l.contains("kubelet"))
        .unwrap_or_else(|| panic!("no Started event in\n{describe}"));
    assert!(line.contains("(x") && line.contains(" over "), "{line}");

    let sorted = server.kubectl_ok(&["get", "events", "--sort-by=.lastTimestamp"]);
    let header = sorted.lines().next().unwrap_or_default();
    assert!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{sorted}"
    );
    assert!(sorted.contains("pod/flaky"), "{sorted}");
}
