//! Workload controllers end to end: Deployments, ReplicaSets and
//! ReplicationControllers running real busybox pods on a real `kubox
//! server`, driven and read with stock kubectl; the garbage collector's
//! cascades, namespace deletion and the root CA publisher.

use std::collections::BTreeSet;
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);

/// A server whose node `node` has busybox as `busybox:1.0` and `busybox:2.0`.
async fn cluster() -> KuboxServer {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    // Once the node is up its agent has opened the image store, so the
    // imports do not race with it.
    server.wait_node_ready("node").await;
    server.import_busybox_as("docker.io/library/busybox:1.0");
    server.import_busybox_as("docker.io/library/busybox:2.0");
    server
}

/// A Deployment of busybox `sleep`s labelled `app=<name>`, its pods quick to stop.
fn deployment(name: &str, replicas: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"]}]
                }
            }
        }
    })
}

fn apply(server: &KuboxServer, manifest: &Value) -> String {
    let file = server.data_dir().join(format!(
        "{}-{}.json",
        manifest["kind"].as_str().unwrap().to_lowercase(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&file, manifest.to_string()).unwrap();
    server.kubectl_ok(&["apply", "-f", file.to_str().unwrap()])
}

fn get_json(server: &KuboxServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).unwrap()
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The pods labelled `app=<app>` that are neither finished nor terminating.
fn active_pods(server: &KuboxServer, app: &str) -> Vec<Value> {
    items(&get_json(
        server,
        &["get", "pods", "-l", &format!("app={app}")],
    ))
    .into_iter()
    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
    .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
    .collect()
}

fn replica_sets(server: &KuboxServer, app: &str) -> Vec<Value> {
    items(&get_json(
        server,
        &["get", "rs", "-l", &format!("app={app}")],
    ))
}

/// `kubectl get deploy <name>` without its header: NAME READY UP-TO-DATE AVAILABLE AGE.
fn deploy_row(server: &KuboxServer, name: &str) -> Vec<String> {
    let out = server.kubectl_ok(&["get", "deploy", name]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Waits until `kubectl get deploy` shows `ready/replicas up-to-date available`.
async fn deploy_shows(
    server: &KuboxServer,
    name: &str,
    ready: &str,
    updated: &str,
    available: &str,
) {
    eventually(
        &format!("deploy/{name} to show {ready} {updated} {available}"),
        TIMEOUT,
        || async {
            let row = deploy_row(server, name);
            (row[1] == ready && row[2] == updated && row[3] == available).then_some(())
        },
    )
    .await;
}

fn rollout_status(server: &KuboxServer, name: &str) -> String {
    server.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deploy/{name}"),
        "--timeout=120s",
    ])
}

fn events(server: &KuboxServer, kind: &str, name: &str, reason: &str) -> Vec<Value> {
    items(&get_json(
        server,
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.kind={kind},involvedObject.name={name},reason={reason}"),
        ],
    ))
}

fn messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// The hash in a ReplicaSet name `<deployment>-<hash>`, checked to look like upstream's.
fn template_hash(rs: &Value, deployment: &str) -> String {
    let name = rs["metadata"]["name"].as_str().unwrap();
    let hash = name
        .strip_prefix(&format!("{deployment}-"))
        .unwrap()
        .to_owned();
    assert!(
        !hash.is_empty() && hash.len() <= 10 && hash.chars().all(|c| "456789bcdf".contains(c)),
        "{name}"
    );
    assert_eq!(rs["metadata"]["labels"]["pod-template-hash"], hash.as_str());
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash.as_str()
    );
    hash
}

fn images_of(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_deployment_rolls_out_updates_rolls_back_and_scales() {
    let server = cluster().await;
    assert_eq!(
        apply(&server, &deployment("web", 2, "busybox:1.0")).trim(),
        "deployment.apps/web created"
    );
    let status = rollout_status(&server, "web");
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    deploy_shows(&server, "web", "2/2", "2", "2").await;

    let sets = replica_sets(&server, "web");
    assert_eq!(sets.len(), 1);
    let first = &sets[0];
    let first_hash = template_hash(first, "web");
    let annotations = &first["metadata"]["annotations"];
    assert_eq!(annotations["deployment.kubernetes.io/revision"], "1");
    assert_eq!(
        annotations["deployment.kubernetes.io/desired-replicas"],
        "2"
    );
    assert_eq!(annotations["deployment.kubernetes.io/max-replicas"], "3");
    let owner = &first["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["controller"].as_bool()),
        (Some("Deployment"), Some(true))
    );
    assert_eq!(owner["blockOwnerDeletion"], true);
    let rs_status = &first["status"];
    assert_eq!(
        (
            &rs_status["replicas"],
            &rs_status["fullyLabeledReplicas"],
            &rs_status["readyReplicas"],
            &rs_status["availableReplicas"]
        ),
        (&json!(2), &json!(2), &json!(2), &json!(2))
    );
    assert_eq!(
        rs_status["observedGeneration"],
        first["metadata"]["generation"]
    );

    let pods = active_pods(&server, "web");
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        let rs_name = format!("web-{first_hash}-");
        let suffix = name
            .strip_prefix(&rs_name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(suffix.len(), 5, "{name}");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("ReplicaSet"), Some(rs_name.trim_end_matches('-')))
        );
        assert_eq!(
            (&owner["controller"], &owner["blockOwnerDeletion"]),
            (&json!(true), &json!(true))
        );
    }

    let d = get_json(&server, &["get", "deploy", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let available = condition(&d, "Available");
    assert_eq!(
        (&available["status"], &available["reason"]),
        (&json!("True"), &json!("MinimumReplicasAvailable"))
    );
    assert_eq!(available["message"], "Deployment has minimum availability.");
    let progressing = condition(&d, "Progressing");
    assert_eq!(
        (&progressing["status"], &progressing["reason"]),
        (&json!("True"), &json!("NewReplicaSetAvailable"))
    );
    assert_eq!(
        progressing["message"],
        format!("ReplicaSet \"web-{first_hash}\" has successfully progressed.")
    );
    let scaled = messages(&events(&server, "Deployment", "web", "ScalingReplicaSet"));
    assert!(
        scaled.contains(&format!(
            "Scaled up replica set web-{first_hash} from 0 to 2"
        )),
        "{scaled:?}"
    );
    let created = messages(&events(
        &server,
        "ReplicaSet",
        &format!("web-{first_hash}"),
        "SuccessfulCreate",
    ));
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created
            .iter()
            .all(|m| m.starts_with(&format!("Created pod: web-{first_hash}-"))),
        "{created:?}"
    );

    // A new image: a second ReplicaSet takes over.
    assert_eq!(
        server
            .kubectl_ok(&["set", "image", "deploy/web", "app=busybox:2.0"])
            .trim(),
        "deployment.apps/web image updated"
    );
    let status = rollout_status(&server, "web");
    assert!(
        status.contains("Waiting for deployment \"web\" rollout to finish: "),
        "{status}"
    );
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    deploy_shows(&server, "web", "2/2", "2", "2").await;
    assert_eq!(
        images_of(&active_pods(&server, "web")),
        BTreeSet::from(["busybox:2.0".to_string()])
    );
    let sets = replica_sets(&server, "web");
    assert_eq!(sets.len(), 2);
    let second = sets
        .iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2")
        .unwrap();
    let second_hash = template_hash(second, "web");
    assert_ne!(first_hash, second_hash);
    let old = sets
        .iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1")
        .unwrap();
    assert_eq!(old["spec"]["replicas"], 0);
    let scaled = messages(&events(&server, "Deployment", "web", "ScalingReplicaSet"));
    assert!(
        scaled.contains(&format!(
            "Scaled up replica set web-{second_hash} from 0 to 1"
        )),
        "{scaled:?}"
    );
    assert!(
        scaled.contains(&format!(
            "Scaled down replica set web-{first_hash} from 2 to 1"
        )),
        "{scaled:?}"
    );

    let history = server.kubectl_ok(&["rollout", "history", "deploy/web"]);
    let rows: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| !r.is_empty())
        .collect();
    assert_eq!(rows[0], ["deployment.apps/web"]);
    assert_eq!(rows[1], ["REVISION", "CHANGE-CAUSE"]);
    assert_eq!(rows[2..], [vec!["1", "<none>"], vec!["2", "<none>"]]);
    let one = server.kubectl_ok(&["rollout", "history", "deploy/web", "--revision=1"]);
    assert!(
        one.starts_with("deployment.apps/web with revision #1\n"),
        "{one}"
    );
    assert!(one.contains("busybox:1.0"), "{one}");
    assert!(
        one.contains(&format!("pod-template-hash={first_hash}")),
        "{one}"
    );

    // Back to the first template: its ReplicaSet returns as revision 3.
    assert_eq!(
        server.kubectl_ok(&["rollout", "undo", "deploy/web"]).trim(),
        "deployment.apps/web rolled back"
    );
    let status = rollout_status(&server, "web");
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    assert_eq!(
        images_of(&active_pods(&server, "web")),
        BTreeSet::from(["busybox:1.0".to_string()])
    );
    let back = replica_sets(&server, "web")
        .into_iter()
        .find(|rs| rs["metadata"]["name"] == format!("web-{first_hash}"))
        .unwrap();
    assert_eq!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    let history = server.kubectl_ok(&["rollout", "history", "deploy/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"]);

    assert_eq!(
        server
            .kubectl_ok(&["scale", "deploy/web", "--replicas=4"])
            .trim(),
        "deployment.apps/web scaled"
    );
    deploy_shows(&server, "web", "4/4", "4", "4").await;
    assert_eq!(active_pods(&server, "web").len(), 4);
    server.kubectl_ok(&["scale", "deploy/web", "--replicas=1"]);
    deploy_shows(&server, "web", "1/1", "1", "1").await;
    let scaled = messages(&events(&server, "Deployment", "web", "ScalingReplicaSet"));
    assert!(
        scaled.contains(&format!(
            "Scaled up replica set web-{first_hash} from 2 to 4"
        )),
        "{scaled:?}"
    );
    assert!(
        scaled.contains(&format!(
            "Scaled down replica set web-{first_hash} from 4 to 1"
        )),
        "{scaled:?}"
    );
    eventually("one pod left", TIMEOUT, || async {
        (active_pods(&server, "web").len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_deployment_cascades_as_asked() {
    let server = cluster().await;
    for name in ["gone", "kept", "fore"] {
        apply(&server, &deployment(name, 2, "busybox:1.0"));
    }
    for name in ["gone", "kept", "fore"] {
        deploy_shows(&server, name, "2/2", "2", "2").await;
    }

    // Background (kubectl's default): the ReplicaSet and its pods follow.
    assert_eq!(
        server.kubectl_ok(&["delete", "deploy", "gone"]).trim(),
        "deployment.apps \"gone\" deleted"
    );
    eventually("the ReplicaSet and pods of gone to go", TIMEOUT, || async {
        (replica_sets(&server, "gone").is_empty() && active_pods(&server, "gone").is_empty())
            .then_some(())
    })
    .await;

    // Orphan: they stay, without their owner reference.
    let rs_before = replica_sets(&server, "kept");
    let pods_before: BTreeSet<String> = active_pods(&server, "kept")
        .iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned())
        .collect();
    server.kubectl_ok(&["delete", "deploy", "kept", "--cascade=orphan"]);
    let missing = server.kubectl(&["get", "deploy", "kept"]);
    assert!(
        !missing.status.success(),
        "the Deployment is gone once orphaning is done"
    );
    let rs_after = replica_sets(&server, "kept");
    assert_eq!(rs_after.len(), 1);
    assert_eq!(
        rs_after[0]["metadata"]["uid"],
        rs_before[0]["metadata"]["uid"]
    );
    assert!(
        rs_after[0]["metadata"]["ownerReferences"].is_null(),
        "{}",
        rs_after[0]["metadata"]
    );
    assert!(rs_after[0]["metadata"]["finalizers"].is_null());
    let pods_after: BTreeSet<String> = active_pods(&server, "kept")
        .iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        pods_before, pods_after,
        "the pods stay, still the ReplicaSet's"
    );

    // Foreground: kubectl waits until the pods and the ReplicaSet are gone, then the Deployment.
    server.kubectl_ok(&[
        "delete",
        "deploy",
        "fore",
        "--cascade=foreground",
        "--timeout=120s",
    ]);
    assert!(replica_sets(&server, "fore").is_empty());
    let leftover = items(&get_json(&server, &["get", "pods", "-l", "app=fore"]));
    assert!(leftover.is_empty(), "{leftover:?}");

    // A dependent whose owner reference names another UID than the live owner's is garbage.
    let cm_owner = get_json(&server, &["get", "rs", "-l", "app=kept"]);
    let rs_name = items(&cm_owner)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    apply(
        &server,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "stale",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": "00000000-0000-0000-0000-000000000000"}]}}),
    );
    eventually(
        "the ConfigMap with a stale owner to be collected",
        TIMEOUT,
        || async { (!server.kubectl(&["get", "cm", "stale"]).status.success()).then_some(()) },
    )
    .await;
    assert_eq!(
        replica_sets(&server, "kept").len(),
        1,
        "the live ReplicaSet stays"
    );
}

#[tokio::test]
async fn deleting_a_namespace_deletes_everything_in_it() {
    let server = cluster().await;
    server.kubectl_ok(&["create", "namespace", "team"]);
    let ca = std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap();
    let published = eventually("kube-root-ca.crt in team", TIMEOUT, || async {
        let out = server.kubectl(&["get", "cm", "kube-root-ca.crt", "-n", "team", "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    })
    .await;
    assert_eq!(published["data"]["ca.crt"], ca.as_str());
    assert!(
        published["metadata"]["annotations"]["kubernetes.io/description"]
            .as_str()
            .unwrap()
            .starts_with("Contains a CA bundle that can be used to verify the kube-apiserver")
    );
    // Edited, it is put back.
    server.kubectl_ok(&[
        "patch",
        "cm",
        "kube-root-ca.crt",
        "-n",
        "team",
        "-p",
        r#"{"data":{"ca.crt":"x"}}"#,
    ]);
    eventually("kube-root-ca.crt restored", TIMEOUT, || async {
        let out = server.kubectl_ok(&[
            "get",
            "cm",
            "kube-root-ca.crt",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        (out == ca).then_some(())
    })
    .await;

    let ns = get_json(&server, &["get", "ns", "team"]);
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    let mut web = deployment("web", 2, "busybox:1.0");
    web["metadata"]["namespace"] = json!("team");
    apply(&server, &web);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "held",
        "-n",
        "team",
        "--from-literal=a=1",
    ]);
    server.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "team",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    eventually("the pods of team/web to run", TIMEOUT, || async {
        let pods = items(&get_json(
            &server,
            &["get", "pods", "-n", "team", "-l", "app=web"],
        ));
        (pods.len() == 2 && pods.iter().all(|p| p["status"]["phase"] == "Running")).then_some(())
    })
    .await;

    server.kubectl_ok(&["delete", "namespace", "team", "--wait=false"]);
    // Everything goes but what a finalizer holds, and the conditions say so.
    let ns = eventually("team to report what remains", TIMEOUT, || async {
        let ns = get_json(&server, &["get", "ns", "team"]);
        (condition(&ns, "NamespaceFinalizersRemaining")["status"] == "True"
            && condition(&ns, "NamespaceContentRemaining")["message"]
                == "Some resources are remaining: configmaps. has 1 resource instances")
            .then_some(ns)
    })
    .await;
    assert_eq!(ns["status"]["phase"], "Terminating");
    let finalizers = condition(&ns, "NamespaceFinalizersRemaining");
    assert_eq!(finalizers["reason"], "SomeFinalizersRemain");
    assert_eq!(
        finalizers["message"],
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        condition(&ns, "NamespaceContentRemaining")["reason"],
        "SomeResourcesRemain"
    );
    let discovery = condition(&ns, "NamespaceDeletionDiscoveryFailure");
    assert_eq!(
        (&discovery["status"], &discovery["reason"]),
        (&json!("False"), &json!("ResourcesDiscovered"))
    );
    let content = condition(&ns, "NamespaceDeletionContentFailure");
    assert_eq!(
        (&content["status"], &content["reason"]),
        (&json!("False"), &json!("ContentDeleted"))
    );
    assert!(items(&get_json(&server, &["get", "deploy,rs,pods", "-n", "team"])).is_empty());
    let cms = items(&get_json(&server, &["get", "cm", "-n", "team"]));
    assert_eq!(cms.len(), 1, "{cms:?}");
    assert_eq!(cms[0]["metadata"]["name"], "held");
    // Creating in a terminating namespace is refused.
    let refused = server.kubectl(&["create", "configmap", "late", "-n", "team"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("because it is being terminated"));

    server.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    server.kubectl_ok(&["wait", "--for=delete", "namespace/team", "--timeout=120s"]);
    assert!(!server.kubectl(&["get", "ns", "team"]).status.success());
}

#[tokio::test]
async fn a_broken_image_stalls_the_rollout_while_the_old_pods_serve() {
    let server = cluster().await;
    let mut web = deployment("web", 3, "busybox:1.0");
    web["spec"]["progressDeadlineSeconds"] = json!(10);
    apply(&server, &web);
    deploy_shows(&server, "web", "3/3", "3", "3").await;

    server.kubectl_ok(&["set", "image", "deploy/web", "app=busybox:no-such-tag"]);
    let d = eventually("the progress deadline to pass", TIMEOUT, || async {
        let d = get_json(&server, &["get", "deploy", "web"]);
        (condition(&d, "Progressing")["reason"] == "ProgressDeadlineExceeded").then_some(d)
    })
    .await;
    let progressing = condition(&d, "Progressing");
    assert_eq!(progressing["status"], "False");
    let new_rs = replica_sets(&server, "web")
        .into_iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2")
        .unwrap();
    assert_eq!(
        progressing["message"],
        format!(
            "ReplicaSet \"{}\" has timed out progressing.",
            new_rs["metadata"]["name"].as_str().unwrap()
        )
    );
    // 25% of 3: one pod over, none under; the old ReplicaSet keeps serving.
    assert_eq!(condition(&d, "Available")["status"], "True");
    assert_eq!(
        (
            &d["status"]["availableReplicas"],
            &d["status"]["updatedReplicas"]
        ),
        (&json!(3), &json!(1))
    );
    assert_eq!(d["status"]["unavailableReplicas"], 1);
    let pods = active_pods(&server, "web");
    assert_eq!(pods.len(), 4);
    let ready_old = pods
        .iter()
        .filter(|p| p["spec"]["containers"][0]["image"] == "busybox:1.0")
        .filter(|p| condition(p, "Ready")["status"] == "True")
        .count();
    assert_eq!(ready_old, 3);
    assert_eq!(deploy_row(&server, "web")[1], "3/3");
    let out = server.kubectl(&["rollout", "status", "deploy/web", "--timeout=30s"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: deployment \"web\" exceeded its progress deadline"
    );

    // Scaled mid-rollout, both ReplicaSets grow in proportion: 6 replicas
    // and 2 of surge, split 3:1 as the 4 pods were. The rollout then goes
    // on: the old ReplicaSet gives up its one pod that is not available
    // yet, the new one takes the room, and there it stays: 5 available old
    // pods are the minimum 6 replicas with 1 unavailable allow.
    server.kubectl_ok(&["scale", "deploy/web", "--replicas=6"]);
    let old_name = replica_sets(&server, "web")
        .into_iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1")
        .map(|rs| rs["metadata"]["name"].as_str().unwrap().to_owned())
        .unwrap();
    let new_name = new_rs["metadata"]["name"].as_str().unwrap().to_owned();
    deploy_shows(&server, "web", "5/6", "3", "5").await;
    let scaled = messages(&events(&server, "Deployment", "web", "ScalingReplicaSet"));
    for proportional in [
        format!("Scaled up replica set {old_name} from 3 to 6"),
        format!("Scaled up replica set {new_name} from 1 to 2"),
    ] {
        assert!(scaled.contains(&proportional), "{scaled:?}");
    }

    // Undo brings back the old template; the broken pods go. The deadline
    // is a long one again, so a loaded machine cannot make recovering miss it.
    server.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":600}}"#,
    ]);
    server.kubectl_ok(&["rollout", "undo", "deploy/web"]);
    let status = rollout_status(&server, "web");
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    eventually("only old-image pods", TIMEOUT, || async {
        let pods = active_pods(&server, "web");
        (pods.len() == 6 && images_of(&pods) == BTreeSet::from(["busybox:1.0".to_string()]))
            .then_some(())
    })
    .await;
    let d = get_json(&server, &["get", "deploy", "web"]);
    assert_eq!(
        condition(&d, "Progressing")["reason"],
        "NewReplicaSetAvailable"
    );
}

#[tokio::test]
async fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let server = cluster().await;
    let mut web = deployment("web", 2, "busybox:1.0");
    web["spec"]["strategy"] = json!({"type": "Recreate"});
    apply(&server, &web);
    deploy_shows(&server, "web", "2/2", "2", "2").await;
    let d = get_json(&server, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));

    server.kubectl_ok(&["set", "image", "deploy/web", "app=busybox:2.0"]);
    let saw_new = std::cell::Cell::new(false);
    eventually("the new pods to run", TIMEOUT, || {
        // Pods of both templates never run at once, terminating ones included.
        let pods = items(&get_json(&server, &["get", "pods", "-l", "app=web"]));
        let running: Vec<&Value> = pods
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .collect();
        let images: BTreeSet<&str> = running
            .iter()
            .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap())
            .collect();
        assert!(images.len() <= 1, "old and new pods at once: {images:?}");
        if images.contains("busybox:2.0") {
            saw_new.set(true);
        }
        let ready = running
            .iter()
            .filter(|p| condition(p, "Ready")["status"] == "True")
            .count();
        let done = saw_new.get() && ready == 2 && running.len() == 2;
        async move { done.then_some(()) }
    })
    .await;
    let status = rollout_status(&server, "web");
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    let scaled = messages(&events(&server, "Deployment", "web", "ScalingReplicaSet"));
    let old = replica_sets(&server, "web")
        .into_iter()
        .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1")
        .unwrap();
    assert!(
        scaled.contains(&format!(
            "Scaled down replica set {} from 2 to 0",
            old["metadata"]["name"].as_str().unwrap()
        )),
        "{scaled:?}"
    );
}

#[tokio::test]
async fn paused_rollouts_restarts_and_the_set_commands() {
    let server = cluster().await;
    let mut web = deployment("web", 1, "busybox:1.0");
    web["spec"]["revisionHistoryLimit"] = json!(2);
    apply(&server, &web);
    deploy_shows(&server, "web", "1/1", "1", "1").await;

    assert_eq!(
        server
            .kubectl_ok(&["rollout", "pause", "deploy/web"])
            .trim(),
        "deployment.apps/web paused"
    );
    server.kubectl_ok(&["set", "image", "deploy/web", "app=busybox:2.0"]);
    let d = eventually("the pause to be seen", TIMEOUT, || async {
        let d = get_json(&server, &["get", "deploy", "web"]);
        (condition(&d, "Progressing")["reason"] == "DeploymentPaused").then_some(d)
    })
    .await;
    let progressing = condition(&d, "Progressing");
    assert_eq!(
        (&progressing["status"], &progressing["message"]),
        (&json!("Unknown"), &json!("Deployment is paused"))
    );
    assert_eq!(
        replica_sets(&server, "web").len(),
        1,
        "paused: no new ReplicaSet"
    );
    // A paused Deployment still scales.
    server.kubectl_ok(&["scale", "deploy/web", "--replicas=2"]);
    deploy_shows(&server, "web", "2/2", "0", "2").await;
    assert_eq!(
        images_of(&active_pods(&server, "web")),
        BTreeSet::from(["busybox:1.0".to_string()])
    );
    // kubectl finds no previous revision: the paused change made none.
    let undo = server.kubectl(&["rollout", "undo", "deploy/web"]);
    assert_eq!(
        String::from_utf8_lossy(&undo.stderr).trim(),
        "error: no rollout history found for deployment \"web\""
    );

    assert_eq!(
        server
            .kubectl_ok(&["rollout", "resume", "deploy/web"])
            .trim(),
        "deployment.apps/web resumed"
    );
    rollout_status(&server, "web");
    assert_eq!(
        images_of(&active_pods(&server, "web")),
        BTreeSet::from(["busybox:2.0".to_string()])
    );

    let before: BTreeSet<String> = active_pods(&server, "web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        server
            .kubectl_ok(&["rollout", "restart", "deploy/web"])
            .trim(),
        "deployment.apps/web restarted"
    );
    rollout_status(&server, "web");
    eventually("all pods replaced", TIMEOUT, || async {
        let pods = active_pods(&server, "web");
        let names: BTreeSet<String> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        (pods.len() == 2 && names.is_disjoint(&before)).then_some(())
    })
    .await;
    let d = get_json(&server, &["get", "deploy", "web"]);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    server.kubectl_ok(&["rollout", "pause", "deploy/web"]);
    let undo = server.kubectl(&["rollout", "undo", "deploy/web"]);
    assert_eq!(
        String::from_utf8_lossy(&undo.stderr).trim(),
        "error: you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again"
    );
    server.kubectl_ok(&["rollout", "resume", "deploy/web"]);

    assert_eq!(
        server
            .kubectl_ok(&["set", "env", "deploy/web", "COLOR=blue"])
            .trim(),
        "deployment.apps/web env updated"
    );
    rollout_status(&server, "web");
    assert_eq!(
        server
            .kubectl_ok(&[
                "set",
                "resources",
                "deploy/web",
                "--limits=cpu=200m,memory=64Mi"
            ])
            .trim(),
        "deployment.apps/web resource requirements updated"
    );
    rollout_status(&server, "web");
    eventually("pods with the env and the limits", TIMEOUT, || async {
        let pods = active_pods(&server, "web");
        (pods.len() == 2
            && pods.iter().all(|p| {
                let c = &p["spec"]["containers"][0];
                c["env"] == json!([{"name": "COLOR", "value": "blue"}])
                    && c["resources"]["limits"]["cpu"] == "200m"
            }))
        .then_some(())
    })
    .await;
    // revisionHistoryLimit 2: the current revision and two before it stay.
    eventually("old revisions cleaned up", TIMEOUT, || async {
        let history = server.kubectl_ok(&["rollout", "history", "deploy/web"]);
        let revisions: Vec<String> = history
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        (revisions == ["3", "4", "5"]).then_some(())
    })
    .await;
    assert_eq!(replica_sets(&server, "web").len(), 3);
}

/// A ReplicaSet of busybox `sleep`s labelled `app=<name>`.
fn replica_set(name: &str, replicas: i32) -> Value {
    let mut d = deployment(name, replicas, "busybox:1.0");
    d["kind"] = json!("ReplicaSet");
    d
}

#[tokio::test]
async fn replica_sets_adopt_release_and_replace_pods() {
    let server = cluster().await;
    apply(&server, &replica_set("pool", 2));
    eventually("two ready pods", TIMEOUT, || async {
        let rs = get_json(&server, &["get", "rs", "pool"]);
        (rs["status"]["readyReplicas"] == 2).then_some(())
    })
    .await;
    let row = server.kubectl_ok(&["get", "rs", "pool", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..4],
        ["pool", "2", "2", "2"],
        "NAME DESIRED CURRENT READY"
    );

    // A deleted pod is replaced.
    let victim = active_pods(&server, "pool")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    server.kubectl_ok(&["delete", "pod", &victim, "--wait=false"]);
    eventually("a replacement", TIMEOUT, || async {
        let pods = active_pods(&server, "pool");
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["name"] != victim.as_str()))
        .then_some(())
    })
    .await;
    let deleted = messages(&events(&server, "ReplicaSet", "pool", "SuccessfulCreate"));
    assert_eq!(deleted.len(), 3, "{deleted:?}");

    // A pod relabelled out of the selector is released and replaced.
    let released = active_pods(&server, "pool")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    server.kubectl_ok(&["label", "pod", &released, "app=free", "--overwrite"]);
    eventually(
        "the relabelled pod released and replaced",
        TIMEOUT,
        || async {
            let pod = get_json(&server, &["get", "pod", &released]);
            (pod["metadata"]["ownerReferences"].is_null()
                && active_pods(&server, "pool").len() == 2)
                .then_some(())
        },
    )
    .await;

    // An orphan matching the selector is adopted, and one pod too many goes.
    server.kubectl_ok(&["label", "pod", &released, "app=pool", "--overwrite"]);
    eventually(
        "the orphan adopted and the surplus deleted",
        TIMEOUT,
        || async {
            let pod = get_json(&server, &["get", "pod", &released]);
            let adopted = pod["metadata"]["ownerReferences"][0]["name"] == "pool";
            (adopted && active_pods(&server, "pool").len() == 2).then_some(())
        },
    )
    .await;
    let deletions = messages(&events(&server, "ReplicaSet", "pool", "SuccessfulDelete"));
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    assert!(
        deletions[0].starts_with("Deleted pod: pool-"),
        "{deletions:?}"
    );

    server.kubectl_ok(&["scale", "rs", "pool", "--replicas=1"]);
    eventually("one pod left, and counted", TIMEOUT, || async {
        let rs = get_json(&server, &["get", "rs", "pool"]);
        (active_pods(&server, "pool").len() == 1 && rs["status"]["replicas"] == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn replication_controllers_keep_their_pods() {
    let server = cluster().await;
    let rc = json!({
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "legacy"},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "legacy"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "app", "image": "busybox:1.0", "command": ["sleep", "3600"]}]}
            }
        }
    });
    apply(&server, &rc);
    let rc = get_json(&server, &["get", "rc", "legacy"]);
    assert_eq!(
        rc["spec"]["selector"],
        json!({"app": "legacy"}),
        "defaulted from the template"
    );
    assert_eq!(rc["metadata"]["labels"], json!({"app": "legacy"}));
    eventually("two ready pods", TIMEOUT, || async {
        let rc = get_json(&server, &["get", "rc", "legacy"]);
        (rc["status"]["readyReplicas"] == 2 && rc["status"]["availableReplicas"] == 2).then_some(())
    })
    .await;
    let pods = active_pods(&server, "legacy");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController")
    );
    let created = messages(&events(
        &server,
        "ReplicationController",
        "legacy",
        "SuccessfulCreate",
    ));
    assert_eq!(created.len(), 2, "{created:?}");
    server.kubectl_ok(&["scale", "rc", "legacy", "--replicas=3"]);
    eventually("three pods", TIMEOUT, || async {
        (active_pods(&server, "legacy").len() == 3).then_some(())
    })
    .await;
    server.kubectl_ok(&["delete", "rc", "legacy"]);
    eventually("the pods to follow", TIMEOUT, || async {
        active_pods(&server, "legacy").is_empty().then_some(())
    })
    .await;
}

/// The active pods labelled `app=<app>`, by kubectl with `kubeconfig`;
/// `None` while the API is unreachable.
fn count_active(kubeconfig: &std::path::Path, app: &str) -> Option<usize> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "json",
            "--request-timeout=5s",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let list: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        items(&list)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count(),
    )
}

/// Samples the number of active pods of `app` until dropped; `max` is the
/// most seen.
struct PodCounter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodCounter {
    fn start(server: &KuboxServer, app: &str) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let max = std::sync::Arc::new(AtomicUsize::new(0));
        let (kubeconfig, app) = (server.kubeconfig(), app.to_owned());
        let thread = {
            let (stop, max) = (stop.clone(), max.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(n) = count_active(&kubeconfig, &app) {
                        max.fetch_max(n, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for PodCounter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn a_deployment_recovers_from_pods_deleted_at_random() {
    let server = cluster().await;
    apply(&server, &deployment("chaos", 10, "busybox:1.0"));
    deploy_shows(&server, "chaos", "10/10", "10", "10").await;
    let counter = PodCounter::start(&server, "chaos");
    let start = std::time::Instant::now();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut deleted = 0;
    // 30 s of it, and at least 10 pods even on a slow machine.
    while (start.elapsed() < Duration::from_secs(30) || deleted < 10) && start.elapsed() < TIMEOUT {
        let pods = active_pods(&server, "chaos");
        if !pods.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let victim = pods[(seed % pods.len() as u64) as usize]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned();
            let _ = server.kubectl(&["delete", "pod", &victim, "--wait=false"]);
            deleted += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(deleted >= 10, "only {deleted} pods deleted");
    deploy_shows(&server, "chaos", "10/10", "10", "10").await;
    eventually("exactly 10 active pods", TIMEOUT, || async {
        (active_pods(&server, "chaos").len() == 10).then_some(())
    })
    .await;
    assert!(counter.max() <= 10, "{} active pods at once", counter.max());
    let rs = &replica_sets(&server, "chaos")[0];
    assert_eq!(
        (&rs["status"]["replicas"], &rs["status"]["readyReplicas"]),
        (&json!(10), &json!(10))
    );
}

#[tokio::test]
async fn a_rollout_resumes_after_the_server_is_killed_without_exceeding_its_surge() {
    let mut server = cluster().await;
    let mut roll = deployment("roll", 10, "busybox:1.0");
    roll["spec"]["minReadySeconds"] = json!(2);
    roll["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 0}});
    apply(&server, &roll);
    deploy_shows(&server, "roll", "10/10", "10", "10").await;
    let counter = PodCounter::start(&server, "roll");
    server.kubectl_ok(&["set", "image", "deploy/roll", "app=busybox:2.0"]);
    eventually("the rollout to be under way", TIMEOUT, || async {
        let pods = active_pods(&server, "roll");
        let images = images_of(&pods);
        (images.len() == 2).then_some(())
    })
    .await;
    let uid = |rs: &Value| rs["metadata"]["uid"].as_str().unwrap().to_owned();
    let before: BTreeSet<String> = replica_sets(&server, "roll").iter().map(uid).collect();
    assert_eq!(before.len(), 2, "the old and the new ReplicaSet");
    // SIGKILL mid-rollout: nothing is flushed or handed over.
    server.kill();
    server.restart().await;
    let status = rollout_status(&server, "roll");
    assert!(
        status.ends_with("deployment \"roll\" successfully rolled out\n"),
        "{status}"
    );
    eventually("ten new pods", TIMEOUT, || async {
        let pods = active_pods(&server, "roll");
        (pods.len() == 10 && images_of(&pods) == BTreeSet::from(["busybox:2.0".to_string()]))
            .then_some(())
    })
    .await;
    assert!(
        counter.max() <= 13,
        "{} active pods at once, more than replicas + maxSurge",
        counter.max()
    );
    assert!(counter.max() >= 11, "the surge was used: {}", counter.max());
    // The same two ReplicaSets, none lost and none made again: the old
    // one scaled to zero as revision 1, the new one holding all ten.
    let sets = replica_sets(&server, "roll");
    let after: BTreeSet<String> = sets.iter().map(uid).collect();
    assert_eq!(after, before);
    let mut by_revision: Vec<(String, Value)> = sets
        .iter()
        .map(|rs| {
            let revision = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                .as_str()
                .unwrap()
                .to_owned();
            (revision, rs["spec"]["replicas"].clone())
        })
        .collect();
    by_revision.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_revision,
        [("1".to_string(), json!(0)), ("2".to_string(), json!(10))]
    );
}
