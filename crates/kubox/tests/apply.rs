//! Server-side apply with the real kubectl: create on apply, field
//! ownership in managedFields, conflicts between managers and
//! `--force-conflicts`, removal of fields an applier stops applying, and
//! the upgrade of an object made by client-side apply.

use kubox_testkit::KuboxServer;

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn deployment(replicas: u32, labels: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web{labels}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx
"
    )
}

/// Writes the manifest into the server's data directory; returns its path.
fn manifest_file(server: &KuboxServer, file: &str, text: &str) -> String {
    let path = server.data_dir().join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn managers(server: &KuboxServer) -> Vec<(String, String)> {
    let out = server.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_owned(),
                e["operation"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn kubectl_server_side_apply_owns_fields_and_reports_conflicts() {
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let v1 = manifest_file(&server, "v1.yaml", &deployment(1, "\n    tier: front"));
    let out = server.kubectl_ok(&["apply", "--server-side", "-f", &v1]);
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    let out = server.kubectl_ok(&["apply", "--server-side", "-f", &v1]);
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    assert_eq!(managers(&server), [("kubectl".into(), "Apply".into())]);
    let yaml = server.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(yaml.contains("f:replicas: {}"), "{yaml}");
    assert!(yaml.contains("k:{\"name\":\"web\"}"), "{yaml}");

    // Another manager changing replicas conflicts with the applier.
    let v3 = manifest_file(&server, "v3.yaml", &deployment(3, ""));
    let out = server.kubectl(&["apply", "--server-side", "--field-manager=ops", "-f", &v3]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"),
        "{stderr}"
    );
    // The label "ops" leaves out is no conflict: "kubectl" still owns it.
    let out = server.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "--force-conflicts",
        "-f",
        &v3,
    ]);
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    assert_eq!(
        server.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );

    // "kubectl" stops applying the label and replicas (which "ops" took):
    // the label, which nobody else owns, goes; replicas stay.
    let bare = manifest_file(
        &server,
        "bare.yaml",
        &deployment(3, "").replace("  replicas: 3\n", ""),
    );
    server.kubectl_ok(&["apply", "--server-side", "-f", &bare]);
    let labels = server.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels}"]);
    assert_eq!(labels, r#"{"app":"web"}"#);
    assert_eq!(
        server.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
}

#[tokio::test]
async fn openapi_v2_carries_merge_keys() {
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let doc: serde_json::Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "--raw", "/openapi/v2"])).unwrap();
    assert_eq!(doc["swagger"], "2.0");
    let containers = &doc["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
}

#[tokio::test]
async fn apply_conflicts_with_an_updater_and_upgrades_client_side_apply() {
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let v1 = manifest_file(&server, "v1.yaml", &deployment(1, ""));
    server.kubectl_ok(&["create", "-f", &v1]);
    assert_eq!(
        managers(&server),
        [("kubectl-create".into(), "Update".into())]
    );
    let v2 = manifest_file(&server, "v2.yaml", &deployment(2, ""));
    let out = server.kubectl(&["apply", "--server-side", "-f", &v2]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-create\" using apps/v1: .spec.replicas"
        ),
        "{stderr}"
    );
    server.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &v2]);
    assert_eq!(
        server.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
    server.kubectl_ok(&["delete", "deploy", "web"]);

    // Client-side apply, then server-side apply of the same manifest:
    // kubectl moves the client-side manager's fields to its applier (a JSON
    // patch of managedFields), so changing them afterwards is no conflict.
    let out = server.kubectl_ok(&["apply", "-f", &v1]);
    assert_eq!(out.trim(), "deployment.apps/web created");
    assert_eq!(
        managers(&server),
        [("kubectl-client-side-apply".into(), "Update".into())]
    );
    let out = server.kubectl_ok(&["apply", "--server-side", "-f", &v1]);
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    // kubectl keeps the last-applied annotation current as its own applier.
    assert_eq!(
        managers(&server),
        [
            ("kubectl".into(), "Apply".into()),
            ("kubectl-last-applied".into(), "Apply".into())
        ]
    );
    let out = server.kubectl_ok(&["apply", "--server-side", "-f", &v2]);
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    assert_eq!(
        server.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
    let owners = managers(&server);
    assert!(
        owners.contains(&("kubectl".into(), "Apply".into())),
        "{owners:?}"
    );
}

/// `kubectl scale` is recorded as upstream's scale handler records it: an
/// Update entry of the scale subresource owning `.spec.replicas` in the
/// workload's apiVersion (with no time), which the applier loses.
#[tokio::test]
async fn scale_writes_own_replicas_in_managed_fields() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let file = manifest_file(&server, "web.yaml", &deployment(2, ""));
    server.kubectl_ok(&["apply", "--server-side", "-f", &file]);
    assert_eq!(
        server.kubectl_ok(&["scale", "deploy", "web", "--replicas=3"]),
        "deployment.apps/web scaled\n"
    );
    let out = server.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entries = obj["metadata"]["managedFields"].as_array().unwrap();
    let scale: Vec<_> = entries
        .iter()
        .filter(|e| e["subresource"] == "scale")
        .collect();
    assert_eq!(
        scale,
        [&serde_json::json!({
            "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
            "manager": "kubectl",
            "operation": "Update",
            "subresource": "scale",
        })],
        "{out}"
    );
    let applier = entries.iter().find(|e| e["operation"] == "Apply").unwrap();
    assert!(
        applier["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "{applier}"
    );
    let out = server.kubectl(&["apply", "--server-side", "-f", &file]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            r#"conflict with "kubectl" with subresource "scale" using apps/v1: .spec.replicas"#
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
