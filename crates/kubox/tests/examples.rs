//! The example applications (examples/apps) as images built on the node
//! with `kubox image build`, running as pods with their ConfigMaps and
//! Secrets: what the seeds' journeys deploy.

use std::path::Path;
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(60);

fn manifests() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/go-multiroute/manifests")
}

/// A pod named `name` from a Deployment manifest's pod template.
fn pod_from_deployment(server: &KuboxServer, deployment: &Path, name: &str) -> Value {
    let out = server.kubectl_ok(&[
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        deployment.to_str().unwrap(),
    ]);
    let d: Value = serde_json::from_str(&out).unwrap();
    let template = &d["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    })
}

async fn running(server: &KuboxServer, name: &str) {
    eventually(&format!("pod {name} runs"), TIMEOUT, || async {
        let out = server.kubectl(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
        (out.stdout == b"Running").then_some(())
    })
    .await;
}

/// What `wget` inside the pod gets from the app on localhost (the pod's
/// own network namespace), retried until the app listens.
async fn fetch(server: &KuboxServer, pod: &str, url: &str) -> String {
    eventually(&format!("{url} answers in {pod}"), TIMEOUT, || async {
        let out = server.kubectl(&["exec", pod, "--", "wget", "-qO-", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
}

#[tokio::test]
async fn go_multiroute_serves_its_configmap_routes_and_secret() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.build_example_images();
    let dir = manifests();
    for file in ["configmap.yaml", "secret.yaml"] {
        server.kubectl_ok(&["apply", "-f", dir.join(file).to_str().unwrap()]);
    }
    server.apply_json(&pod_from_deployment(
        &server,
        &dir.join("deployment.yaml"),
        "go-multiroute",
    ));
    running(&server, "go-multiroute").await;
    assert_eq!(
        fetch(&server, "go-multiroute", "http://127.0.0.1:3000/route1").await,
        "[v1] Hello, You are at /route1, Got: route1's content\n"
    );
    assert_eq!(
        fetch(&server, "go-multiroute", "http://127.0.0.1:3000/connect_db").await,
        "[v1] connected to db with password \"pass123\"\n",
        "the Secret's value arrives through secretKeyRef"
    );
    let missing = server.kubectl(&[
        "exec",
        "go-multiroute",
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:3000/nowhere",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test]
async fn redis_and_saythx_tiers_talk_over_the_pods_network() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.build_example_images();
    // One pod holds redis and the SayThx tiers, so they meet on localhost
    // until the cluster network carries Service traffic.
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "saythx"},
        "spec": {"containers": [
            {"name": "redis", "image": "kubox.local/redis:7"},
            {"name": "backend", "image": "kubox.local/saythx:1.0", "args": ["backend"],
             "env": [{"name": "REDIS_HOST", "value": "127.0.0.1"}]},
            {"name": "work", "image": "kubox.local/saythx:1.0", "args": ["work"],
             "env": [{"name": "REDIS_HOST", "value": "127.0.0.1"}, {"name": "REDIS_PORT", "value": "6379"}]},
            {"name": "frontend", "image": "kubox.local/saythx:1.0", "args": ["frontend"],
             "env": [{"name": "BACKEND_HOST", "value": "127.0.0.1"}]},
        ]},
    });
    server.apply_json(&pod);
    running(&server, "saythx").await;
    let ping = eventually("redis answers PING", TIMEOUT, || async {
        let out = server.kubectl(&["exec", "saythx", "-c", "redis", "--", "redis-cli", "ping"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert_eq!(ping, "PONG\n");
    assert_eq!(
        fetch(&server, "saythx", "http://127.0.0.1:8080/api/v1/list").await,
        r#"{"HonorDatas":null}"#
    );
    for _ in 0..2 {
        server.kubectl_ok(&[
            "exec",
            "saythx",
            "-c",
            "frontend",
            "--",
            "wget",
            "-qO-",
            "--post-data=name=kubox",
            "http://127.0.0.1:80/api/v1/submit",
        ]);
    }
    let ranked = eventually("the worker counts both thank-yous", TIMEOUT, || async {
        let list = fetch(&server, "saythx", "http://127.0.0.1:80/api/v1/list").await;
        list.contains(r#""Score":2"#).then_some(list)
    })
    .await;
    assert_eq!(ranked, r#"{"HonorDatas":[{"Name":"kubox","Score":2}]}"#);
}
