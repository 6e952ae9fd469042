//! Scheduling scenarios on hollow nodes (`kubox agent --hollow`): each of
//! upstream's plugins kubox implements shows the node it picks, or the
//! FailedScheduling message kube-scheduler would give.

use std::time::Duration;

use kubox_testkit::{HollowCluster, KuboxServer, eventually};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_kubox");

fn get(server: &KuboxServer, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).unwrap()
}

/// Creates a pod from `spec` (merged over a one-container pause pod) and `labels`.
fn create(server: &KuboxServer, name: &str, labels: Value, spec: Value) {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    });
    for (k, v) in spec.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    server.apply_json(&pod);
}

async fn node_of(server: &KuboxServer, name: &str) -> String {
    eventually("the pod to be bound", TIMEOUT, || async {
        let p = get(server, &["pod", name]);
        p["spec"]["nodeName"].as_str().map(str::to_owned)
    })
    .await
}

async fn unschedulable_message(server: &KuboxServer, name: &str) -> String {
    eventually("the pod to be reported unschedulable", TIMEOUT, || async {
        let p = get(server, &["pod", name]);
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")?
            .clone();
        c["message"].as_str().map(str::to_owned)
    })
    .await
}

/// The messages of the pod's FailedScheduling events, once there is one.
async fn failed_scheduling(server: &KuboxServer, name: &str) -> Vec<String> {
    events(server, name, "FailedScheduling").await
}

/// The messages of the object's events of `reason`, once there is one.
async fn events(server: &KuboxServer, name: &str, reason: &str) -> Vec<String> {
    server.event_messages(name, reason, TIMEOUT).await
}

fn label(server: &KuboxServer, node: &str, label: &str) {
    server.kubectl_ok(&["label", "node", node, label, "--overwrite"]);
}

#[tokio::test]
async fn hollow_nodes_heartbeat_and_run_their_pods() {
    let cluster = HollowCluster::start(BIN, 3, &[]).await;
    let s = &cluster.server;
    // A node's Lease follows its registration.
    eventually("a Lease per hollow node", TIMEOUT, || async {
        let leases = s.kubectl_ok(&["get", "leases", "-n", "kube-node-lease", "-o", "name"]);
        (0..3)
            .all(|i| leases.contains(&format!("lease.coordination.k8s.io/hollow-{i}")))
            .then_some(())
    })
    .await;
    create(s, "web", json!({}), json!({}));
    let node = node_of(s, "web").await;
    assert!(node.starts_with("hollow-"), "{node}");
    let pod = eventually("the pod to run", TIMEOUT, || async {
        let p = get(s, &["pod", "web"]);
        (p["status"]["phase"] == "Running").then_some(p)
    })
    .await;
    assert!(
        pod["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{pod}"
    );
    s.kubectl_ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"]);
    // A hollow node's pod goes as soon as its deletion is asked for.
    s.kubectl_ok(&["delete", "pod", "web", "--timeout=60s"]);
}

#[tokio::test]
async fn gates_priorities_and_preemption() {
    let cluster = HollowCluster::start(BIN, 1, &[]).await;
    let s = &cluster.server;

    create(
        s,
        "gated",
        json!({}),
        json!({"schedulingGates": [{"name": "example.com/wait"}]}),
    );
    let p = get(s, &["pod", "gated"]);
    let condition = &p["status"]["conditions"][0];
    assert_eq!(condition["reason"], "SchedulingGated", "{p}");
    assert_eq!(
        condition["message"],
        "Scheduling is blocked due to non-empty scheduling gates"
    );
    let row = s.kubectl_ok(&["get", "pod", "gated", "--no-headers"]);
    assert_eq!(
        row.split_whitespace().nth(2),
        Some("SchedulingGated"),
        "{row}"
    );
    let added = s.kubectl(&[
        "patch",
        "pod",
        "gated",
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "example.com/more"}}]"#,
    ]);
    assert!(!added.status.success());
    assert_eq!(
        String::from_utf8_lossy(&added.stderr).trim(),
        "The Pod \"gated\" is invalid: spec.schedulingGates[1].name: Forbidden: \
         only deletion is allowed, but found new scheduling gate 'example.com/more'"
    );
    s.kubectl_ok(&[
        "patch",
        "pod",
        "gated",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/schedulingGates"}]"#,
    ]);
    assert_eq!(node_of(s, "gated").await, "hollow-0");
    let failed = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=gated,reason=FailedScheduling",
        "-o",
        "name",
    ]);
    assert!(failed.is_empty(), "a gated pod is never tried: {failed}");

    let missing = s.kubectl(&[
        "run",
        "nope",
        "--image=pause",
        "--overrides",
        r#"{"spec": {"priorityClassName": "nope"}}"#,
    ]);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains(r#"pods "nope" is forbidden: no PriorityClass with name nope was found"#),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    create(
        s,
        "critical",
        json!({}),
        json!({"priorityClassName": "system-cluster-critical"}),
    );
    assert_eq!(
        get(s, &["pod", "critical"])["spec"]["priority"],
        2_000_000_000
    );

    s.apply_json(
        &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                         "metadata": {"name": "high"}, "value": 1000}),
    );
    let cpu = |n: &str| {
        json!([{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"requests": {"cpu": n}}}])
    };
    create(s, "low", json!({}), json!({"containers": cpu("30")}));
    assert_eq!(node_of(s, "low").await, "hollow-0");
    create(
        s,
        "vip",
        json!({}),
        json!({"priorityClassName": "high", "containers": cpu("10")}),
    );
    assert_eq!(get(s, &["pod", "vip"])["spec"]["priority"], 1000);
    // The preemptor waits for its nominated node, then takes the room its victim left.
    assert_eq!(
        failed_scheduling(s, "vip").await[0],
        "0/1 nodes are available: 1 Insufficient cpu."
    );
    assert_eq!(node_of(s, "vip").await, "hollow-0");
    assert_eq!(
        get(s, &["pod", "vip"])["status"]["nominatedNodeName"],
        "hollow-0"
    );
    let preempted = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=low,reason=Preempted",
        "-o",
        "json",
    ]);
    assert!(preempted.contains("Preempted by pod"), "{preempted}");
    assert!(
        !s.kubectl(&["get", "pod", "low"]).status.success(),
        "the victim is gone"
    );

    create(
        s,
        "equal",
        json!({}),
        json!({"priorityClassName": "high", "containers": cpu("30")}),
    );
    assert_eq!(
        unschedulable_message(s, "equal").await,
        "0/1 nodes are available: 1 Insufficient cpu. \
         preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
}

#[tokio::test]
async fn pod_affinity_spread_and_image_locality() {
    let cluster = HollowCluster::start(BIN, 3, &[]).await;
    let s = &cluster.server;
    label(s, "hollow-0", "zone=a");
    label(s, "hollow-1", "zone=a");
    label(s, "hollow-2", "zone=b");
    let on = |node: &str| json!({"nodeSelector": {"kubernetes.io/hostname": node}});

    create(s, "db", json!({"app": "db"}), on("hollow-2"));
    assert_eq!(node_of(s, "db").await, "hollow-2");
    create(
        s,
        "near-db",
        json!({}),
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}),
    );
    assert_eq!(node_of(s, "near-db").await, "hollow-2");
    create(
        s,
        "no-partner",
        json!({}),
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}),
    );
    assert_eq!(
        unschedulable_message(s, "no-partner").await,
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    let mut away = on("hollow-2");
    away["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    create(s, "away", json!({}), away);
    assert_eq!(
        unschedulable_message(s, "away").await,
        "0/3 nodes are available: 1 node(s) didn't match pod anti-affinity rules, \
         2 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
         2 Preemption is not helpful for scheduling."
    );
    // An existing pod's anti-affinity keeps matching pods out of its zone.
    create(
        s,
        "loner",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "hollow-0"},
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}),
    );
    assert_eq!(node_of(s, "loner").await, "hollow-0");
    create(s, "web", json!({"app": "web"}), json!({}));
    assert_eq!(node_of(s, "web").await, "hollow-2");

    // Spread over zones. Pods pinned to zone b ignore their node selector
    // when counting domains (nodeAffinityPolicy: Ignore), so zone a counts.
    let spread = |policy: &str| {
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule", "nodeAffinityPolicy": policy,
        "labelSelector": {"matchLabels": {"app": "spread"}}}]})
    };
    let in_b = || {
        let mut spec = spread("Ignore");
        spec["nodeSelector"] = json!({"zone": "b"});
        spec
    };
    create(s, "spread-0", json!({"app": "spread"}), in_b());
    assert_eq!(node_of(s, "spread-0").await, "hollow-2");
    create(s, "spread-1", json!({"app": "spread"}), spread("Honor"));
    let zone_a = node_of(s, "spread-1").await;
    assert!(zone_a == "hollow-0" || zone_a == "hollow-1", "{zone_a}");
    create(s, "spread-2", json!({"app": "spread"}), in_b());
    assert_eq!(node_of(s, "spread-2").await, "hollow-2");
    // Zone b has 2 to zone a's 1: one more there would skew by 2.
    create(s, "spread-3", json!({"app": "spread"}), in_b());
    assert_eq!(
        unschedulable_message(s, "spread-3").await,
        "0/3 nodes are available: 1 node(s) didn't match pod topology spread constraints, \
         2 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
         2 Preemption is not helpful for scheduling."
    );
    create(
        s,
        "racked",
        json!({"app": "r"}),
        json!({"topologySpreadConstraints": [{"maxSkew": 1,
        "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "r"}}}]}),
    );
    assert_eq!(
        unschedulable_message(s, "racked").await,
        "0/3 nodes are available: 3 node(s) didn't match pod topology spread constraints (missing required label). \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );

    // ImageLocality: the one node that has a large image draws its pod.
    s.kubectl_ok(&[
        "patch",
        "node",
        "hollow-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"images": [{"names": ["kubox.local/big:1"], "sizeBytes": 900000000}]}}"#,
    ]);
    eventually("the scheduler to see the image", TIMEOUT, || async {
        let n = get(s, &["node", "hollow-1"]);
        (n["status"]["images"][0]["sizeBytes"] == 900000000).then_some(())
    })
    .await;
    create(
        s,
        "big",
        json!({}),
        json!({"containers": [{"name": "main", "image": "kubox.local/big:1"}]}),
    );
    assert_eq!(node_of(s, "big").await, "hollow-1");
}

#[tokio::test]
async fn replica_set_pods_spread_by_the_system_defaults() {
    let cluster = HollowCluster::start(BIN, 3, &[]).await;
    let s = &cluster.server;
    // Busy hollow-1 and hollow-2 make hollow-0 the emptiest by a margin
    // the resource scores alone would fill it with every replica.
    for node in ["hollow-1", "hollow-2"] {
        let name = format!("busy-{node}");
        create(
            s,
            &name,
            json!({}),
            json!({"nodeSelector": {"kubernetes.io/hostname": node},
                   "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                   "resources": {"requests": {"cpu": "4"}}}]}),
        );
        assert_eq!(node_of(s, &name).await, node);
    }
    s.apply_json(&json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]}}},
    }));
    let nodes = eventually("the replicas to be bound", TIMEOUT, || async {
        let pods = get(s, &["pods", "-l", "app=web"]);
        let nodes: Vec<String> = pods["items"]
            .as_array()?
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
        (nodes.len() == 6).then_some(nodes)
    })
    .await;
    for node in ["hollow-0", "hollow-1", "hollow-2"] {
        assert_eq!(
            nodes.iter().filter(|n| *n == node).count(),
            2,
            "{node} in {nodes:?}"
        );
    }
}

#[tokio::test]
async fn preemption_spares_pods_a_disruption_budget_protects() {
    let cluster = HollowCluster::start(BIN, 2, &[]).await;
    let s = &cluster.server;
    for (name, value) in [("mid", 10), ("high", 1000)] {
        s.apply_json(
            &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                             "metadata": {"name": name}, "value": value}),
        );
    }
    let big = |node: &str, class: Option<&str>, cpu: &str| {
        let mut spec = json!({"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                               "resources": {"requests": {"cpu": cpu}}}]});
        if !node.is_empty() {
            spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        }
        if let Some(class) = class {
            spec["priorityClassName"] = json!(class);
        }
        spec
    };
    // Without the budget, the least important victim (guarded, priority 0)
    // would make hollow-0 the node to preempt on.
    create(
        s,
        "guarded",
        json!({"app": "guarded"}),
        big("hollow-0", None, "30"),
    );
    create(s, "mid", json!({}), big("hollow-1", Some("mid"), "30"));
    assert_eq!(node_of(s, "guarded").await, "hollow-0");
    assert_eq!(node_of(s, "mid").await, "hollow-1");
    s.apply_json(&json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                         "metadata": {"name": "guard"},
                         "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}));
    eventually("the budget to count its pod", TIMEOUT, || async {
        let pdb = get(s, &["pdb", "guard"]);
        (pdb["status"]["currentHealthy"] == 1 && pdb["status"]["disruptionsAllowed"] == 0)
            .then_some(())
    })
    .await;

    create(s, "vip", json!({}), big("", Some("high"), "10"));
    assert_eq!(node_of(s, "vip").await, "hollow-1");
    assert_eq!(
        get(s, &["pod", "vip"])["status"]["nominatedNodeName"],
        "hollow-1"
    );
    assert!(
        s.kubectl(&["get", "pod", "guarded"]).status.success(),
        "the protected pod stays"
    );
}

/// A volume only `node` reaches, for claims of no class.
fn local_volume(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "", "hostPath": {"path": format!("/tmp/{name}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
}

/// A claim of `class` (None: of no class), bound to `volume` if given.
fn claim(name: &str, class: Option<&str>, volume: Option<&str>) -> Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    if let Some(class) = class {
        c["spec"]["storageClassName"] = class.into();
    }
    if let Some(volume) = volume {
        c["spec"]["volumeName"] = volume.into();
        c["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes"});
    }
    c
}

/// A StorageClass that binds its claims only once their pod is scheduled.
fn first_consumer_class(name: &str, provisioner: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name}, "provisioner": provisioner,
        "volumeBindingMode": "WaitForFirstConsumer"})
}

fn with_claim(claim: &str) -> Value {
    json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]})
}

#[tokio::test]
async fn volume_binding_follows_claims_and_their_volumes_nodes() {
    let cluster = HollowCluster::start(BIN, 3, &[]).await;
    let s = &cluster.server;
    const NOT_HELPFUL: &str =
        "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";

    // A claim bound to a volume only one node reaches takes its pod there.
    s.apply_json(&local_volume("pv-1", "hollow-1"));
    s.apply_json(&claim("data-1", Some(""), Some("pv-1")));
    create(s, "on-1", json!({}), with_claim("data-1"));
    assert_eq!(node_of(s, "on-1").await, "hollow-1");

    // A volume on a node that is gone, or tainted, leaves no node for its pod.
    s.apply_json(&local_volume("pv-9", "hollow-9"));
    s.apply_json(&claim("data-9", Some(""), Some("pv-9")));
    create(s, "on-9", json!({}), with_claim("data-9"));
    let expected = format!(
        "0/3 nodes are available: 3 node(s) had volume node affinity conflict. {NOT_HELPFUL}"
    );
    assert_eq!(unschedulable_message(s, "on-9").await, expected);
    assert_eq!(failed_scheduling(s, "on-9").await[0], expected);
    // A claim bound to a volume that does not exist is Lost.
    s.apply_json(&claim("data-none", Some(""), Some("pv-none")));
    assert_eq!(
        events(s, "data-none", "ClaimLost").await[0],
        "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
    );
    assert_eq!(get(s, &["pvc", "data-none"])["status"]["phase"], "Lost");
    create(s, "on-none", json!({}), with_claim("data-none"));
    assert_eq!(
        unschedulable_message(s, "on-none").await,
        format!(
            "0/3 nodes are available: persistentvolumeclaim \"data-none\" bound to \
             non-existent persistentvolume \"pv-none\". {NOT_HELPFUL}"
        )
    );

    s.kubectl_ok(&["taint", "node", "hollow-2", "disk=broken:NoSchedule"]);
    s.apply_json(&local_volume("pv-2", "hollow-2"));
    s.apply_json(&claim("data-2", Some(""), Some("pv-2")));
    create(s, "on-2", json!({}), with_claim("data-2"));
    assert_eq!(
        unschedulable_message(s, "on-2").await,
        format!(
            "0/3 nodes are available: 1 node(s) had untolerated taint {{disk: broken}}, \
             2 node(s) had volume node affinity conflict. {NOT_HELPFUL}"
        )
    );
    // A claim that is missing, and one of an Immediate class not bound yet.
    create(s, "unclaimed", json!({}), with_claim("later"));
    assert_eq!(
        unschedulable_message(s, "unclaimed").await,
        format!(
            "0/3 nodes are available: persistentvolumeclaim \"later\" not found. {NOT_HELPFUL}"
        )
    );
    s.apply_json(
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "manual"}, "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate"}),
    );
    s.apply_json(&claim("manual", Some("manual"), None));
    create(s, "immediate", json!({}), with_claim("manual"));
    assert_eq!(
        unschedulable_message(s, "immediate").await,
        format!(
            "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. {NOT_HELPFUL}"
        )
    );

    // A claim of no class gets local-path, which waits for its first pod...
    s.apply_json(&claim("scratch", None, None));
    assert_eq!(
        events(s, "scratch", "WaitForFirstConsumer").await[0],
        "waiting for first consumer to be created before binding"
    );
    let pvc = get(s, &["pvc", "scratch"]);
    assert_eq!(pvc["spec"]["storageClassName"], "local-path", "{pvc}");
    assert!(pvc["spec"]["volumeName"].is_null(), "{pvc}");
    assert_eq!(pvc["status"]["phase"], "Pending", "{pvc}");
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem", "{pvc}");
    // ...and is bound, on its pod's node, once the pod is placed; the pod
    // waiting for a claim that did not exist is tried again when it does.
    create(s, "writer", json!({}), with_claim("scratch"));
    s.apply_json(&claim("later", Some("local-path"), None));
    for (pod, claim) in [("writer", "scratch"), ("unclaimed", "later")] {
        let node = node_of(s, pod).await;
        let pvc = eventually("the claim to be bound", TIMEOUT, || async {
            let pvc = get(s, &["pvc", claim]);
            (pvc["status"]["phase"] == "Bound").then_some(pvc)
        })
        .await;
        assert_eq!(
            pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
            node.as_str()
        );
        let pv = get(s, &["pv", pvc["spec"]["volumeName"].as_str().unwrap()]);
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
            json!({"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}),
            "{pv}"
        );
        assert_eq!(pv["spec"]["hostPath"]["type"], "DirectoryOrCreate");
        eventually("the pod to run", TIMEOUT, || async {
            (get(s, &["pod", pod])["status"]["phase"] == "Running").then_some(())
        })
        .await;
    }
}

/// The scheduler's running binding cycles (`scheduler_goroutines`), from
/// the server's metrics, where the scheduler in it records.
fn binding_cycles(server: &KuboxServer) -> Option<f64> {
    let page = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    page.lines()
        .find_map(|l| l.strip_prefix(r#"scheduler_goroutines{operation="binding"} "#))
        .and_then(|v| v.trim().parse().ok())
}

/// A pod deleted while PreBind waits for its claim to be provisioned ends
/// the wait, as upstream's volume binder gives up on a pod that is gone.
#[tokio::test]
async fn prebind_stops_waiting_for_a_deleted_pods_claims_which_name_their_pods() {
    let cluster = HollowCluster::start(BIN, 1, &[]).await;
    let s = &cluster.server;
    s.apply_json(&first_consumer_class("nobody", "example.com/nobody"));
    s.apply_json(&claim("unprovisioned", Some("nobody"), None));
    create(s, "waiting", json!({}), with_claim("unprovisioned"));
    eventually("PreBind to select the claim's node", TIMEOUT, || async {
        let pvc = get(s, &["pvc", "unprovisioned"]);
        pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
            .as_str()
            .map(drop)
    })
    .await;
    assert_eq!(binding_cycles(s), Some(1.0));
    assert_eq!(get(s, &["pod", "waiting"])["spec"]["nodeName"], Value::Null);
    s.kubectl_ok(&["delete", "pod", "waiting", "--wait=false"]);
    eventually("the binding cycle to end", TIMEOUT, || async {
        (binding_cycles(s) == Some(0.0)).then_some(())
    })
    .await;

    // A claim whose consumer fits no node says so (the PV controller's
    // WaitForPodScheduled), where a claim with no consumer says it waits
    // for one.
    let mut nowhere = with_claim("later");
    nowhere["nodeSelector"] = json!({"disk": "none-has-it"});
    create(s, "stuck", json!({}), nowhere);
    s.apply_json(&claim("later", Some("nobody"), None));
    assert_eq!(
        events(s, "later", "WaitForPodScheduled").await,
        ["waiting for pod stuck to be scheduled"]
    );
}

#[tokio::test]
async fn claims_of_first_consumer_classes_bind_on_their_pods_node() {
    let cluster = HollowCluster::start(BIN, 3, &[]).await;
    let s = &cluster.server;

    // A static volume of a WaitForFirstConsumer class waits for a pod...
    s.apply_json(&first_consumer_class(
        "local-storage",
        "kubernetes.io/no-provisioner",
    ));
    let mut pv = local_volume("local-2", "hollow-2");
    pv["spec"]["storageClassName"] = "local-storage".into();
    s.apply_json(&pv);
    s.apply_json(&claim("local", Some("local-storage"), None));
    assert_eq!(
        events(s, "local", "WaitForFirstConsumer").await[0],
        "waiting for first consumer to be created before binding"
    );
    eventually("the volume to be Available", TIMEOUT, || async {
        (get(s, &["pv", "local-2"])["status"]["phase"] == "Available").then_some(())
    })
    .await;
    assert_eq!(get(s, &["pvc", "local"])["status"]["phase"], "Pending");
    // ...then the scheduler reserves it on the node it picks, and the
    // controller binds both before the pod is bound.
    create(s, "consumer", json!({}), with_claim("local"));
    assert_eq!(node_of(s, "consumer").await, "hollow-2");
    let pvc = get(s, &["pvc", "local"]);
    assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    assert_eq!(pvc["spec"]["volumeName"], "local-2", "{pvc}");
    assert_eq!(get(s, &["pv", "local-2"])["status"]["phase"], "Bound");

    // local-path provisions a volume reserved for its claim on the pod's
    // node, the controller binds it, and it goes with its claim.
    s.apply_json(&claim("scratch", Some("local-path"), None));
    create(s, "writer", json!({}), with_claim("scratch"));
    let node = node_of(s, "writer").await;
    let pvc = get(s, &["pvc", "scratch"]);
    assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    assert_eq!(
        pvc["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"],
        "rancher.io/local-path"
    );
    let name = pvc["spec"]["volumeName"].as_str().unwrap().to_owned();
    let pv = get(s, &["pv", &name]);
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "rancher.io/local-path"
    );
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!([node])
    );
    assert_eq!(
        events(s, "scratch", "ExternalProvisioning").await[0],
        "Waiting for a volume to be created either by the external provisioner \
         'rancher.io/local-path' or manually by the system administrator. If volume \
         creation is delayed, please verify that the provisioner is running and correctly \
         registered."
    );
    s.kubectl_ok(&["delete", "pod", "writer"]);
    s.kubectl_ok(&["delete", "pvc", "scratch"]);
    eventually("the provisioned volume to be deleted", TIMEOUT, || async {
        (!s.kubectl(&["get", "pv", &name]).status.success()).then_some(())
    })
    .await;
}
