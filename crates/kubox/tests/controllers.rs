//! The controller manager end to end: its leader election and the control
//! loops it runs, against a real `kubox server` with real kubectl.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kubox_client::leader::{LeaderElection, Timing};
use kubox_testkit::{KuboxServer, eventually};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn every_namespace_gets_a_default_service_account() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let has_default = |ns: &'static str| {
        let server = &server;
        move || async move {
            server
                .kubectl(&["get", "serviceaccount", "default", "-n", ns])
                .status
                .success()
                .then_some(())
        }
    };
    eventually("default in default", TIMEOUT, has_default("default")).await;
    eventually(
        "default in kube-system",
        TIMEOUT,
        has_default("kube-system"),
    )
    .await;
    server.kubectl_ok(&["create", "namespace", "team"]);
    eventually("default in a new namespace", TIMEOUT, has_default("team")).await;
    let before = server.kubectl_ok(&[
        "get",
        "sa",
        "default",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    server.kubectl_ok(&["delete", "sa", "default", "-n", "team"]);
    let after = eventually("default recreated", TIMEOUT, || async {
        let out = server.kubectl(&[
            "get",
            "sa",
            "default",
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let uid = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !uid.is_empty()).then_some(uid)
    })
    .await;
    assert_ne!(before, after, "a new ServiceAccount, not the deleted one");
    let out = server.kubectl_ok(&["get", "sa", "-n", "team"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("default"), "{out}");
}

#[tokio::test]
async fn the_controller_manager_holds_its_lease() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let spec = eventually("the lease is held", TIMEOUT, || async {
        leases
            .get_opt(kubox_controllers::LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .filter(|s| s.holder_identity.is_some())
    })
    .await;
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
}

/// Candidates for one lease: one leads at a time, another takes over once
/// the leader stops renewing, and a leader released hands the lease on at once.
#[tokio::test]
async fn a_standby_candidate_takes_over_when_the_leader_stops() {
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--disable-agent",
            "--disable-controllers",
            "--disable-scheduler",
        ],
    )
    .await;
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await.unwrap();
    let timing = Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    };
    let (tx, mut leaders) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let candidate = |name: &'static str| {
        let election = LeaderElection::with_timing(
            client.clone(),
            "default",
            "test-election",
            name.to_owned(),
            timing.clone(),
        );
        let tx = tx.clone();
        election.spawn(move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(name);
                std::future::pending::<()>().await
            }
        })
    };
    let a = candidate("a");
    assert_eq!(leaders.recv().await, Some("a"));
    let b = candidate("b");
    // b stays a standby while a renews: several lease durations pass with no takeover.
    let standby = tokio::time::timeout(Duration::from_secs(5), leaders.recv()).await;
    assert!(
        standby.is_err(),
        "b must not lead while a renews: {standby:?}"
    );
    // A crashed leader (its task gone, the lease left as it was) is
    // succeeded once its lease runs out.
    drop(a);
    let next = tokio::time::timeout(TIMEOUT, leaders.recv()).await;
    assert_eq!(next.ok().flatten(), Some("b"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let spec = leases.get("test-election").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // A leader stopped gracefully gives the lease up (client-go's
    // ReleaseOnCancel): no holder, one second, the transitions kept.
    b.release(TIMEOUT).await;
    let spec = leases.get("test-election").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(""));
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(spec.lease_transitions, Some(1));
    let c = candidate("c");
    let next = tokio::time::timeout(TIMEOUT, leaders.recv()).await;
    assert_eq!(next.ok().flatten(), Some("c"));
    let spec = leases.get("test-election").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("c"));
    assert_eq!(spec.lease_transitions, Some(2));
    drop(c);
}
