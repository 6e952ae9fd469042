//! The PersistentVolume controller as a user meets it through kubectl:
//! static volumes are Available, bind to the claims that fit them, and are
//! Released (then reclaimed by their policy) once their claims are gone.

use std::time::Duration;

use kubox_testkit::{HollowCluster, KuboxServer, eventually, table_cell};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_kubox");

/// A hostPath volume of no class, as an administrator writes one.
fn volume_yaml(name: &str, size: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}\nspec:\n  \
         capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  \
         storageClassName: \"\"\n  hostPath: {{path: /srv/{name}}}\n"
    )
}

const CLAIM: &str = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  resources: {requests: {storage: 1Gi}}
"#;

/// A claim of no class for `size`, naming `volume` if given.
fn claim(name: &str, size: &str, volume: Option<&str>) -> Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "resources": {"requests": {"storage": size}}}});
    if let Some(volume) = volume {
        c["spec"]["volumeName"] = volume.into();
    }
    c
}

/// A column of a PV or PVC as `kubectl get` prints it.
fn cell(s: &KuboxServer, kind: &str, name: &str, column: &str) -> String {
    let table = s.kubectl_ok(&["get", kind, name]);
    table_cell(&table, name, column).unwrap_or_else(|| panic!("no {column} in {table}"))
}

async fn phase(s: &KuboxServer, kind: &str, name: &str, phase: &str) {
    eventually(&format!("{kind} {name} to be {phase}"), TIMEOUT, || async {
        (cell(s, kind, name, "STATUS") == phase).then_some(())
    })
    .await
}

/// `kubectl apply` of three volumes of no class (512Mi, 2Gi, 10Gi) and a
/// claim `data` of 1Gi.
fn apply_storage(s: &KuboxServer) {
    let file = s.data_dir().join("storage.yaml");
    let mut manifests: Vec<String> = [("small", "512Mi"), ("fits", "2Gi"), ("big", "10Gi")]
        .iter()
        .map(|(name, size)| volume_yaml(name, size))
        .collect();
    manifests.push(CLAIM.to_owned());
    std::fs::write(&file, manifests.join("---\n")).unwrap();
    s.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
}

#[tokio::test]
async fn static_volumes_bind_to_claims_and_are_released_with_them() {
    let s = KuboxServer::start(BIN, &["--disable-agent", "--disable-dns"]).await;
    apply_storage(&s);

    // The smallest volume that fits is bound; the others stay Available.
    phase(&s, "pvc", "data", "Bound").await;
    assert_eq!(cell(&s, "pvc", "data", "VOLUME"), "fits");
    assert_eq!(cell(&s, "pvc", "data", "CAPACITY"), "2Gi");
    assert_eq!(cell(&s, "pvc", "data", "ACCESS MODES"), "RWO");
    phase(&s, "pv", "fits", "Bound").await;
    assert_eq!(cell(&s, "pv", "fits", "CLAIM"), "default/data");
    for pv in ["small", "big"] {
        phase(&s, "pv", pv, "Available").await;
        assert_eq!(cell(&s, "pv", pv, "CLAIM"), "");
    }
    let pvc = s.kubectl_json(&["get", "pvc", "data"]);
    for annotation in [
        "pv.kubernetes.io/bind-completed",
        "pv.kubernetes.io/bound-by-controller",
    ] {
        assert_eq!(pvc["metadata"]["annotations"][annotation], "yes", "{pvc}");
    }
    let pv = s.kubectl_json(&["get", "pv", "fits"]);
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);

    // A claim nothing fits waits, and says why.
    s.apply_json(&claim("huge", "100Gi", None));
    assert_eq!(
        s.event_messages("huge", "FailedBinding", TIMEOUT).await[0],
        "no persistent volumes available for this claim and no storage class is set"
    );
    assert_eq!(cell(&s, "pvc", "huge", "STATUS"), "Pending");

    // A claim naming its volume gets it, even a larger one.
    s.apply_json(&claim("named", "1Gi", Some("big")));
    phase(&s, "pvc", "named", "Bound").await;
    phase(&s, "pv", "big", "Bound").await;
    assert_eq!(cell(&s, "pv", "big", "CLAIM"), "default/named");

    // The claim goes: its volume (Retain, the default) is Released and
    // keeps its claimRef.
    s.kubectl_ok(&["delete", "pvc", "data"]);
    phase(&s, "pv", "fits", "Released").await;
    assert_eq!(cell(&s, "pv", "fits", "CLAIM"), "default/data");
    assert_eq!(cell(&s, "pv", "fits", "RECLAIM POLICY"), "Retain");

    // A volume of policy Delete that no plugin here can delete is Failed.
    s.kubectl_ok(&[
        "patch",
        "pv",
        "big",
        "-p",
        r#"{"spec": {"persistentVolumeReclaimPolicy": "Delete"}}"#,
    ]);
    s.kubectl_ok(&["delete", "pvc", "named"]);
    phase(&s, "pv", "big", "Failed").await;
    assert_eq!(
        s.event_messages("big", "VolumeFailedDelete", TIMEOUT).await[0],
        "host_path deleter only supports /tmp/.+ but received provided /srv/big"
    );
}

#[tokio::test]
async fn a_claim_a_pod_uses_and_its_volume_stay_until_the_pod_is_gone() {
    let cluster = HollowCluster::start(BIN, 1, &[]).await;
    let s = &cluster.server;
    apply_storage(s);
    phase(s, "pvc", "data", "Bound").await;
    let pvc = s.kubectl_json(&["get", "pvc", "data"]);
    assert_eq!(
        pvc["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    let pv = s.kubectl_json(&["get", "pv", "fits"]);
    assert_eq!(
        pv["metadata"]["finalizers"],
        json!(["kubernetes.io/pv-protection"])
    );
    s.apply_json(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}),
    );
    eventually("the pod to run", TIMEOUT, || async {
        let pod = s.kubectl_json(&["get", "pod", "user"]);
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await;

    // Both are asked to go; the running pod holds the claim, the claim its volume.
    s.kubectl_ok(&["delete", "pvc", "data", "--wait=false"]);
    s.kubectl_ok(&["delete", "pv", "fits", "--wait=false"]);
    assert_eq!(cell(s, "pvc", "data", "STATUS"), "Terminating");
    assert_eq!(cell(s, "pv", "fits", "STATUS"), "Terminating");
    assert_eq!(cell(s, "pv", "fits", "CLAIM"), "default/data");

    // The pod goes: then the claim, then its volume, released.
    s.kubectl_ok(&["delete", "pod", "user"]);
    for (kind, name) in [("pvc", "data"), ("pv", "fits")] {
        eventually(&format!("{kind} {name} to be deleted"), TIMEOUT, || async {
            (!s.kubectl(&["get", kind, name]).status.success()).then_some(())
        })
        .await;
    }
    // A volume no claim holds goes at once.
    s.kubectl_ok(&["delete", "pv", "small"]);
}
