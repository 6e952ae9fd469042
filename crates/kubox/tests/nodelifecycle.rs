//! The node lifecycle controller against a node the test plays the
//! kubelet of: registered, its Lease renewed once, then silent. It goes
//! Unknown and is tainted unreachable; the pod tolerating that for a second
//! is evicted, the one with the default five minutes (from the
//! DefaultTolerationSeconds admission) stays and is marked not ready; and
//! once the node posts Ready again its taints come off.

use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(60);
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn get_json(server: &KuboxServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).unwrap()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn ready_condition(v: &Value) -> Value {
    v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null)
}

fn taints(server: &KuboxServer) -> Vec<(String, String)> {
    get_json(server, &["get", "node", "ghost"])["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["key"].as_str().unwrap_or_default().to_owned(),
                t["effect"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pod_on_ghost(name: &str, tolerations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "ghost", "tolerations": tolerations,
                 "containers": [{"name": "c", "image": "busybox:1.0"}]}
    })
}

#[tokio::test]
async fn a_silent_node_is_tainted_unreachable_and_its_pods_evicted_by_their_tolerations() {
    let server = KuboxServer::start(
        KUBOX,
        &["--disable-agent", "--node-monitor-grace-period=10s"],
    )
    .await;
    server.apply_json(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"}}));
    server.apply_json(&json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "ghost", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 40, "renewTime": now()}
    }));
    server.apply_json(&pod_on_ghost(
        "evictable",
        json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}]),
    ));
    server.apply_json(&pod_on_ghost("patient", json!([])));
    let patient = get_json(&server, &["get", "pod", "patient"]);
    assert_eq!(
        patient["spec"]["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ])
    );
    for pod in ["evictable", "patient"] {
        server.kubectl_ok(&[
            "patch", "pod", pod, "--subresource=status", "--type=merge", "-p",
            &json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}).to_string(),
        ]);
    }

    let ready = eventually("the node to go Unknown", TIMEOUT, || async {
        let c = ready_condition(&get_json(&server, &["get", "node", "ghost"]));
        (c["status"] == "Unknown").then_some(c)
    })
    .await;
    assert_eq!(ready["reason"], "NodeStatusNeverUpdated");
    assert_eq!(ready["message"], "Kubelet never posted node status.");
    eventually("the unreachable taints", TIMEOUT, || async {
        let t = taints(&server);
        (t.contains(&(UNREACHABLE.into(), "NoExecute".into()))
            && t.contains(&(UNREACHABLE.into(), "NoSchedule".into())))
        .then_some(())
    })
    .await;
    eventually("the intolerant pod to be evicted", TIMEOUT, || async {
        let out = server.kubectl(&["get", "pod", "evictable", "-o", "json"]);
        let gone = !out.status.success()
            || serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|p| p["metadata"]["deletionTimestamp"].is_string());
        gone.then_some(())
    })
    .await;
    let patient = eventually(
        "the patient pod to be marked not ready",
        TIMEOUT,
        || async {
            let p = get_json(&server, &["get", "pod", "patient"]);
            (ready_condition(&p)["status"] == "False").then_some(p)
        },
    )
    .await;
    assert!(
        patient["metadata"]["deletionTimestamp"].is_null(),
        "{patient}"
    );

    // The kubelet is back: Ready again, and the taints come off.
    server.kubectl_ok(&[
        "patch", "node", "ghost", "--subresource=status", "--type=merge", "-p",
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                             "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}})
            .to_string(),
    ]);
    eventually("the taints to come off", TIMEOUT, || async {
        taints(&server)
            .iter()
            .all(|(k, _)| k != UNREACHABLE)
            .then_some(())
    })
    .await;
}
