//! StatefulSets end to end with stock kubectl: real busybox pods made one
//! at a time with stable names and hostnames, rolled out from the highest
//! ordinal down (and only above a partition), scaled down from the top;
//! a Parallel set's claims from its volumeClaimTemplates, bound by the
//! local-path provisioner on their pods' node once the pods are scheduled
//! (`WaitForFirstConsumer`) and removed with the set when its retention
//! policy says so; and a pod made again finding its claim's data.

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

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn web(extra: Value, image: &str) -> Value {
    let mut spec = json!({
        "replicas": 3,
        "serviceName": "web",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "web", "image": image, "command": ["sleep", "3600"]}]
            }
        }
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"}, "spec": spec})
}

/// The set's live pods, by name.
fn live_pods(server: &KuboxServer) -> Vec<Value> {
    let mut pods: Vec<Value> = items(&get_json(server, &["get", "pods", "-l", "app=web"]))
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    pods.sort_by_key(|p| {
        p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    pods
}

fn rollout_status(server: &KuboxServer) -> String {
    server.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=120s"])
}

fn image(pod: &Value) -> &str {
    pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
}

fn created(pod: &Value) -> String {
    pod["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn ready_since(pod: &Value) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the live pods run exactly these images (by ordinal).
async fn images_are(server: &KuboxServer, wanted: &[&str]) -> Vec<Value> {
    eventually(&format!("the pods to run {wanted:?}"), TIMEOUT, || async {
        let pods = live_pods(server);
        (pods.iter().map(image).collect::<Vec<_>>() == wanted
            && pods.iter().all(|p| !ready_since(p).is_empty()))
        .then_some(pods)
    })
    .await
}

#[tokio::test]
async fn a_statefulset_starts_in_order_rolls_out_from_the_top_and_scales_down_from_the_top() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.wait_node_ready("node").await;
    for tag in ["1.0", "2.0", "3.0"] {
        server.import_busybox_as(&format!("docker.io/library/busybox:{tag}"));
    }
    server.apply_json(&web(json!({}), "busybox:1.0"));
    // kubectl reports any set with a partition (0 by default) this way.
    let out = rollout_status(&server);
    assert!(
        out.ends_with("partitioned roll out complete: 3 new pods have been updated...\n"),
        "{out}"
    );
    let sts = get_json(&server, &["get", "sts", "web"]);
    let first = sts["status"]["updateRevision"].as_str().unwrap().to_owned();
    let status = &sts["status"];
    for field in [
        "replicas",
        "readyReplicas",
        "currentReplicas",
        "updatedReplicas",
        "availableReplicas",
    ] {
        assert_eq!(status[field], 3, "{field}: {status}");
    }
    assert_eq!(status["currentRevision"], first.as_str());
    assert_eq!(status["observedGeneration"], sts["metadata"]["generation"]);

    let pods = images_are(&server, &["busybox:1.0"; 3]).await;
    for (i, pod) in pods.iter().enumerate() {
        let name = format!("web-{i}");
        assert_eq!(pod["metadata"]["name"], name.as_str());
        assert_eq!(pod["spec"]["hostname"], name.as_str());
        assert_eq!(pod["spec"]["subdomain"], "web");
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["statefulset.kubernetes.io/pod-name"], name.as_str());
        assert_eq!(labels["apps.kubernetes.io/pod-index"], i.to_string());
        assert_eq!(labels["controller-revision-hash"], first.as_str());
    }
    // OrderedReady: each pod was made only once the one before was ready.
    for pair in pods.windows(2) {
        assert!(created(&pair[1]) >= ready_since(&pair[0]), "{pair:?}");
    }
    let revision = get_json(&server, &["get", "controllerrevision", &first]);
    assert_eq!(revision["revision"], 1);
    assert_eq!(
        revision["metadata"]["ownerReferences"][0]["kind"],
        "StatefulSet"
    );

    let table = server.kubectl_ok(&["get", "sts", "web"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "READY", "AGE"]);
    assert_eq!(rows[1][..2], ["web", "3/3"]);

    // A rolling update replaces web-2, then web-1, then web-0.
    server.kubectl_ok(&["set", "image", "sts/web", "web=busybox:2.0"]);
    let out = rollout_status(&server);
    let second = get_json(&server, &["get", "sts", "web"])["status"]["updateRevision"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second, first);
    // With partition 0 kubectl is done once every pod is ready again,
    // which it may see before the first is replaced.
    assert!(out.contains("partitioned roll out complete: "), "{out}");
    let pods = images_are(&server, &["busybox:2.0"; 3]).await;
    assert!(created(&pods[1]) >= ready_since(&pods[2]), "{pods:?}");
    assert!(created(&pods[0]) >= ready_since(&pods[1]), "{pods:?}");

    // Above the partition only.
    server.kubectl_ok(&[
        "patch",
        "sts",
        "web",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
    ]);
    server.kubectl_ok(&["set", "image", "sts/web", "web=busybox:3.0"]);
    let out = rollout_status(&server);
    assert!(
        out.ends_with("partitioned roll out complete: 1 new pods have been updated...\n"),
        "{out}"
    );
    images_are(&server, &["busybox:2.0", "busybox:2.0", "busybox:3.0"]).await;
    let status = get_json(&server, &["get", "sts", "web"])["status"].clone();
    assert_eq!(
        (
            status["currentReplicas"].clone(),
            status["updatedReplicas"].clone()
        ),
        (json!(2), json!(1)),
        "{status}"
    );
    assert_eq!(status["currentRevision"], second.as_str());

    // Scale down goes from the top: web-2, then web-1.
    server.kubectl_ok(&["scale", "sts", "web", "--replicas=1"]);
    eventually("the set to scale down to web-0", TIMEOUT, || async {
        let pods = live_pods(&server);
        (pods.len() == 1 && pods[0]["metadata"]["name"] == "web-0").then_some(())
    })
    .await;
    let deleted: Vec<String> = items(&get_json(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulDelete,involvedObject.kind=StatefulSet",
        ],
    ))
    .iter()
    .filter_map(|e| e["message"].as_str().map(str::to_owned))
    .collect();
    for pod in ["web-2", "web-1"] {
        let message = format!("delete Pod {pod} in StatefulSet web successful");
        assert!(deleted.contains(&message), "{message} in {deleted:?}");
    }
    // A terminating pod still counts in status.replicas until it is gone.
    eventually("status.replicas to be 1", TIMEOUT, || async {
        let replicas =
            server.kubectl_ok(&["get", "sts", "web", "-o", "jsonpath={.status.replicas}"]);
        (replicas == "1").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_parallel_statefulset_makes_every_pod_and_claim_at_once_and_deletes_claims_with_the_set()
{
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    // No image: the pods never get ready, and Parallel does not wait for them.
    server.apply_json(&web(
        json!({
            "podManagementPolicy": "Parallel",
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
            }]
        }),
        "busybox:absent",
    ));
    let pods = eventually("all three pods", TIMEOUT, || async {
        let pods = live_pods(&server);
        (pods.len() == 3).then_some(pods)
    })
    .await;
    for (i, pod) in pods.iter().enumerate() {
        assert_eq!(
            pod["spec"]["volumes"][0],
            json!({"name": "data", "persistentVolumeClaim": {"claimName": format!("data-web-{i}")}})
        );
    }
    let claims = eventually("the claims", TIMEOUT, || async {
        let claims = items(&get_json(&server, &["get", "pvc", "-l", "app=web"]));
        (claims.len() == 3).then_some(claims)
    })
    .await;
    let mut names: Vec<&str> = claims
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["data-web-0", "data-web-1", "data-web-2"]);
    assert_eq!(
        claims[0]["metadata"]["ownerReferences"][0]["kind"],
        "StatefulSet"
    );

    let volumes: Vec<String> = eventually("the claims to be bound", TIMEOUT, || async {
        let claims = items(&get_json(&server, &["get", "pvc", "-l", "app=web"]));
        let volumes: Vec<String> = claims
            .iter()
            .filter(|c| c["status"]["phase"] == "Bound")
            .filter_map(|c| c["spec"]["volumeName"].as_str().map(str::to_owned))
            .collect();
        (volumes.len() == 3).then_some(volumes)
    })
    .await;
    for volume in &volumes {
        let pv = get_json(&server, &["get", "pv", volume]);
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
            json!(["node"]),
            "{pv}"
        );
    }

    server.kubectl_ok(&["delete", "sts", "web"]);
    eventually(
        "the claims and their volumes to go with the set",
        TIMEOUT,
        || async {
            let claims_gone =
                items(&get_json(&server, &["get", "pvc", "-l", "app=web"])).is_empty();
            let left: Vec<Value> = items(&get_json(&server, &["get", "pv"]))
                .into_iter()
                .filter(|pv| volumes.iter().any(|v| pv["metadata"]["name"] == v.as_str()))
                .collect();
            (claims_gone && left.is_empty()).then_some(())
        },
    )
    .await;
}

/// The host directory of a claim's volume (local-path volumes are hostPath).
fn claim_dir(server: &KuboxServer, claim: &str) -> std::path::PathBuf {
    let pvc = get_json(server, &["get", "pvc", claim]);
    assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    assert_eq!(pvc["spec"]["storageClassName"], "local-path");
    let pv = get_json(
        server,
        &["get", "pv", pvc["spec"]["volumeName"].as_str().unwrap()],
    );
    pv["spec"]["hostPath"]["path"].as_str().unwrap().into()
}

#[tokio::test]
async fn a_statefulset_pod_made_again_finds_the_data_of_its_claim() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.wait_node_ready("node").await;
    server.import_busybox_as("docker.io/library/busybox:1.0");
    let class = get_json(&server, &["get", "storageclass", "local-path"]);
    assert_eq!(
        class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    let mut set = web(
        json!({
            "replicas": 1,
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
            }]
        }),
        "busybox:1.0",
    );
    set["spec"]["template"]["spec"]["containers"][0]["command"] = json!([
        "sh",
        "-c",
        "if [ -f /data/first ]; then touch /data/again; else touch /data/first; fi; sleep 3600"
    ]);
    set["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/data"}]);
    server.apply_json(&set);
    rollout_status(&server);
    let dir = claim_dir(&server, "data-web-0");
    assert!(dir.starts_with(server.data_dir()), "{}", dir.display());
    eventually("the first run's file", TIMEOUT, || async {
        dir.join("first").exists().then_some(())
    })
    .await;
    let uid = get_json(&server, &["get", "pod", "web-0"])["metadata"]["uid"].clone();
    server.kubectl_ok(&["delete", "pod", "web-0", "--wait=false"]);
    eventually("web-0 made again, with its data", TIMEOUT, || async {
        let pods = live_pods(&server);
        (pods.len() == 1 && pods[0]["metadata"]["uid"] != uid && dir.join("again").exists())
            .then_some(())
    })
    .await;
    assert_eq!(claim_dir(&server, "data-web-0"), dir);
}
