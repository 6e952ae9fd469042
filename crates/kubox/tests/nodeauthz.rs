//! The Node authorizer and NodeRestriction admission, with a real `kubox
//! server` and the real kubectl and openssl: a node's certificate
//! (`system:node:<name>` in `system:nodes`, signed by the cluster CA) reads
//! only the Secrets of pods bound to it and writes only its own Node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::json;

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

/// A kubeconfig for node `name`: its key and a certificate the cluster CA
/// signs, as a node's CSR gets one.
fn node_kubeconfig(server: &KuboxServer, dir: &Path, name: &str) -> PathBuf {
    let pki = server.data_dir().join("pki");
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    run("openssl", &["genrsa", "-out", &key, "2048"], dir);
    let subject = format!("/CN=system:node:{name}/O=system:nodes");
    run(
        "openssl",
        &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject],
        dir,
    );
    let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_crt.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
        ],
        dir,
    );
    let config = dir.join(format!("{name}.kubeconfig"));
    std::fs::copy(server.kubeconfig(), &config).unwrap();
    let cfg = config.to_str().unwrap();
    let user = format!("system:node:{name}");
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-credentials",
            &user,
            "--client-certificate",
            dir.join(&crt).to_str().unwrap(),
            "--client-key",
            dir.join(&key).to_str().unwrap(),
            "--embed-certs=true",
        ],
        dir,
    );
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-context",
            "--current",
            "--user",
            &user,
        ],
        dir,
    );
    config
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

/// What kubectl prints for a request refused with `message`.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "allowed: {}", text(&out.stdout));
    text(&out.stderr).trim().to_owned()
}

fn pod(
    name: &str,
    node: &str,
    secret_volume: Option<&str>,
    secret_env: Option<&str>,
) -> serde_json::Value {
    let mut container = json!({"name": "c", "image": "busybox"});
    if let Some(s) = secret_env {
        container["env"] =
            json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": s, "key": "token"}}}]);
    }
    let volumes = match secret_volume {
        Some(s) => json!([{"name": "creds", "secret": {"secretName": s}}]),
        None => json!([]),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [container], "volumes": volumes},
    })
}

#[tokio::test]
async fn a_node_reads_only_its_pods_secrets_and_writes_only_its_own_node() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let dir = tempfile::tempdir().unwrap();
    let node_a = node_kubeconfig(&server, dir.path(), "node-a");
    for node in ["node-a", "node-b"] {
        server.apply_json(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}));
    }
    for secret in ["on-a", "on-b", "unrelated"] {
        server.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            secret,
            "--from-literal=token=t",
        ]);
    }
    server.apply_json(&pod("web-a", "node-a", Some("on-a"), None));
    server.apply_json(&pod("web-b", "node-b", None, Some("on-b")));

    // The secret of its pod, once the node graph has the pod.
    let got = eventually(
        "node-a reads its pod's secret",
        Duration::from_secs(10),
        || async {
            let out = kubectl_as(&node_a, &["get", "secret", "on-a", "-o", "name"]);
            out.status.success().then(|| text(&out.stdout))
        },
    )
    .await;
    assert_eq!(got.trim(), "secret/on-a");
    // A watch of that one secret is a read of it.
    let out = kubectl_as(
        &node_a,
        &[
            "get",
            "secrets",
            "--field-selector",
            "metadata.name=on-a",
            "-o",
            "name",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    for secret in ["on-b", "unrelated"] {
        let out = kubectl_as(&node_a, &["get", "secret", secret]);
        assert_eq!(
            refused(&out),
            format!(
                "Error from server (Forbidden): secrets \"{secret}\" is forbidden: User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-a' and this object"
            )
        );
    }
    let out = kubectl_as(&node_a, &["get", "secrets"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): secrets is forbidden: User \"system:node:node-a\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\": No Object name found"
    );
    // Its own pods by field selector, not everyone's.
    let out = kubectl_as(
        &node_a,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=node-a",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "pod/web-a",
        "{}",
        text(&out.stderr)
    );
    let out = kubectl_as(&node_a, &["get", "pods"]);
    assert!(
        refused(&out).ends_with(
            "cannot list resource \"pods\" in API group \"\" in the namespace \"default\": can only list/watch pods with spec.nodeName field selector"
        ),
        "{}",
        text(&out.stderr)
    );

    // NodeRestriction: not another node, not a restricted label of its own.
    let out = kubectl_as(&node_a, &["label", "node", "node-b", "rack=r1"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\""
    );
    let out = kubectl_as(
        &node_a,
        &[
            "label",
            "node",
            "node-a",
            "node-restriction.kubernetes.io/trusted=yes",
        ],
    );
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): nodes \"node-a\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/trusted"
    );
    let out = kubectl_as(&node_a, &["label", "node", "node-a", "rack=r1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Its own status, as a kubelet reports it (PUT of `nodes/status`: the
    // Node authorizer, as upstream's, lets a node write its status but not
    // read it, which `kubectl patch --subresource=status` would first).
    let put_status = |node: &str| {
        let out = kubectl_as(&node_a, &["get", "node", node, "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut object: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        object["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]);
        let file = dir.path().join(format!("{node}-status.json"));
        std::fs::write(&file, object.to_string()).unwrap();
        let path = format!("/api/v1/nodes/{node}/status");
        kubectl_as(
            &node_a,
            &["replace", "--raw", &path, "-f", file.to_str().unwrap()],
        )
    };
    let out = put_status("node-a");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ready = server.kubectl_ok(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
    ]);
    assert_eq!(ready, "KubeletReady");
    let out = put_status("node-b");
    let message = refused(&out);
    assert!(
        message.contains(
            "nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\""
        ),
        "{message}"
    );

    // Its pods' status only, and no one else's pod deleted.
    let out = kubectl_as(&node_a, &["delete", "pod", "web-b"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): pods \"web-b\" is forbidden: node \"node-a\" can only delete pods with spec.nodeName set to itself"
    );

    // system:node is bound to no one: nodes get its rules through the Node authorizer only.
    let binding: serde_json::Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "clusterrolebinding",
        "system:node",
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(
        binding["subjects"].as_array().is_none_or(Vec::is_empty),
        "{binding}"
    );
}
