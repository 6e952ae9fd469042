//! The scheduler and the controller manager run apart (`kubox scheduler`,
//! `kubox controller-manager`) against a server that runs neither, with
//! their own identities: they run a Deployment's pods, hold their Leases
//! and serve their own /metrics; and a scheduler apart stands by while
//! a server's own scheduler leads; with `--leader-elect=false` they act
//! without a Lease.

use std::time::Duration;

use kubox_testkit::{Apart, KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);

fn lease(server: &KuboxServer, name: &str) -> Value {
    server.kubectl_json(&["get", "lease", "-n", "kube-system", name])
}

/// The sum of a counter's samples whose labels contain `labels`.
fn counter(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_scheduler_and_a_controller_manager_apart_run_a_deployment() {
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--node-name",
            "node",
            "--disable-scheduler",
            "--disable-controllers",
        ],
    )
    .await;
    let scheduler = Apart::scheduler(&server, &[]).await;
    let controllers = Apart::controller_manager(&server, &[]).await;
    server.wait_node_ready("node").await;
    server.import_busybox_as("docker.io/library/busybox:1.0");
    server.apply_json(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": "busybox:1.0", "command": ["sleep", "3600"]}]
                }
            }
        }
    }));
    eventually("the Deployment to be 2/2 Running", TIMEOUT, || async {
        let deployment = server.kubectl_json(&["get", "deployment", "web"]);
        let running = server.kubectl_json(&["get", "pods", "-l", "app=web"])["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (deployment["status"]["readyReplicas"] == 2 && running == 2).then_some(())
    })
    .await;
    // Each Lease is held by the identity its process apart logged on
    // becoming leader.
    for (name, process) in [
        ("kube-scheduler", &scheduler),
        ("kube-controller-manager", &controllers),
    ] {
        let held = lease(&server, name);
        let holder = held["spec"]["holderIdentity"].as_str().unwrap_or_default();
        let log = process.log();
        assert!(
            !holder.is_empty() && log.contains(holder),
            "{name} is held by {holder:?}, not the process apart: {log}"
        );
    }
    let metrics = scheduler.get("/metrics").await;
    assert!(
        counter(
            &metrics,
            "scheduler_schedule_attempts_total",
            r#"result="scheduled""#
        ) >= 2.0,
        "the scheduler apart placed the pods: {metrics}"
    );
    let metrics = controllers.get("/metrics").await;
    assert!(
        counter(&metrics, "workqueue_adds_total", r#"name="deployment""#) >= 1.0,
        "the controller manager apart synced the Deployment: {metrics}"
    );
    assert_eq!(scheduler.get("/healthz").await, "ok");
    assert_eq!(controllers.get("/readyz").await, "ok");
}

#[tokio::test]
async fn a_scheduler_apart_stands_by_while_the_servers_own_leads() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let leader = eventually("the server's scheduler to lead", TIMEOUT, || async {
        let held = lease(&server, "kube-scheduler");
        held["spec"]["holderIdentity"].as_str().map(str::to_owned)
    })
    .await;
    let transitions = lease(&server, "kube-scheduler")["spec"]["leaseTransitions"].clone();
    let standby = Apart::scheduler(&server, &["--leader-elect-retry-period=1s"]).await;
    standby.get("/healthz").await;
    // A pod that fits nowhere (there is no node): the leader tries it.
    server.kubectl_ok(&["run", "stray", "--image=busybox", "--", "sleep", "3600"]);
    eventually(
        "the leader to report the pod unschedulable",
        TIMEOUT,
        || async {
            let pod = server.kubectl_json(&["get", "pod", "stray"]);
            let conditions = pod["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                .then_some(())
        },
    )
    .await;
    // The leader renews (every 2 s) while the standby retries each second:
    // across three renewals the Lease keeps its holder.
    let renewed = |lease: &Value| lease["spec"]["renewTime"].as_str().map(str::to_owned);
    let mut last = renewed(&lease(&server, "kube-scheduler"));
    for _ in 0..3 {
        last = eventually("the leader to renew", TIMEOUT, || {
            let last = last.clone();
            let (server, leader, transitions) = (&server, &leader, &transitions);
            async move {
                let now = lease(server, "kube-scheduler");
                assert_eq!(now["spec"]["holderIdentity"], leader.as_str());
                assert_eq!(&now["spec"]["leaseTransitions"], transitions);
                let at = renewed(&now);
                (at != last).then_some(at)
            }
        })
        .await;
    }
    let metrics = standby.get("/metrics").await;
    assert_eq!(
        counter(&metrics, "scheduler_schedule_attempts_total", ""),
        0.0,
        "the standby scheduled nothing: {metrics}"
    );
    assert!(
        !metrics.contains("scheduler_pending_pods{"),
        "the standby has no queue: {metrics}"
    );
}

#[tokio::test]
async fn unelected_components_apart_act_without_a_lease() {
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--disable-agent",
            "--disable-scheduler",
            "--disable-controllers",
        ],
    )
    .await;
    let scheduler = Apart::scheduler(&server, &["--leader-elect=false"]).await;
    let controllers = Apart::controller_manager(&server, &["--leader-elect=false"]).await;
    server.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--",
        "sleep",
        "3600",
    ]);
    // The controller manager makes the pod, the scheduler finds no node for it.
    eventually(
        "the Deployment's pod to be found unschedulable",
        TIMEOUT,
        || async {
            let pods = server.kubectl_json(&["get", "pods", "-l", "app=web"]);
            pods["items"].as_array()?.iter().find(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
            })?;
            Some(())
        },
    )
    .await;
    let leases = server.kubectl_json(&["get", "leases", "-n", "kube-system"]);
    let names: Vec<&str> = leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["metadata"]["name"].as_str())
        .collect();
    for name in ["kube-scheduler", "kube-controller-manager"] {
        assert!(!names.contains(&name), "{name} took a Lease: {names:?}");
    }
    assert_eq!(scheduler.get("/healthz").await, "ok");
    assert_eq!(controllers.get("/readyz").await, "ok");
}
