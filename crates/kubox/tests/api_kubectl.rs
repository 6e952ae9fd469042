//! The API server against the real kubectl on PATH, with a real `kubox
//! server` started on a free port for each test.

use kubox_testkit::KuboxServer;

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn starts_with_the_builtin_namespaces_and_kubernetes_service() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let ns = server.kubectl_ok(&["get", "namespaces", "--no-headers"]);
    let mut names: Vec<(&str, &str)> = ns
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0], cols[1])
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("default", "Active"),
            ("kube-node-lease", "Active"),
            ("kube-public", "Active"),
            ("kube-system", "Active")
        ]
    );
    let svc = server.kubectl_ok(&["get", "svc", "kubernetes"]);
    let header: Vec<&str> = svc.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let row: Vec<&str> = svc.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["kubernetes", "ClusterIP", "10.43.0.1", "<none>", "443/TCP"]
    );
    assert!(server.data_dir().join("admin.kubeconfig").exists());
    for ns in ["default", "kube-system", "kube-public"] {
        let out = server.kubectl(&["delete", "namespace", ns]);
        assert_eq!(
            stderr(&out),
            format!(
                "Error from server (Forbidden): namespaces \"{ns}\" is forbidden: this namespace may not be deleted\n"
            )
        );
    }
}

fn write_manifest(server: &KuboxServer, name: &str, manifest: &str) -> String {
    let path = server.data_dir().join(name);
    std::fs::write(&path, manifest).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn configmap_lifecycle_through_kubectl() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let k = |args: &[&str]| server.kubectl_ok(args);
    let file = write_manifest(
        &server,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  a: \"1\"\n",
    );
    assert_eq!(k(&["create", "-f", &file]), "configmap/app created\n");
    assert_eq!(k(&["get", "cm", "app", "-o", "jsonpath={.data.a}"]), "1");
    assert_eq!(
        k(&["label", "cm", "app", "tier=web"]),
        "configmap/app labeled\n"
    );
    assert_eq!(
        k(&["annotate", "cm", "app", "owner=team-a"]),
        "configmap/app annotated\n"
    );
    assert_eq!(
        k(&["get", "cm", "-l", "tier=web", "-o", "name"]),
        "configmap/app\n"
    );
    // Every namespace also has kube-root-ca.crt (from the controller manager), unlabelled.
    let unlabelled = k(&["get", "cm", "-l", "tier!=web", "-o", "name"]);
    assert!(!unlabelled.contains("configmap/app"), "{unlabelled}");
    assert_eq!(
        k(&[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=app",
            "-o",
            "name"
        ]),
        "configmap/app\n"
    );
    assert_eq!(
        k(&[
            "patch",
            "cm",
            "app",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"b":"2"}}"#
        ]),
        "configmap/app patched\n"
    );
    assert_eq!(
        k(&[
            "patch",
            "cm",
            "app",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/data/a"}]"#
        ]),
        "configmap/app patched\n"
    );
    assert_eq!(
        k(&["patch", "cm", "app", "-p", r#"{"data":{"c":"3"}}"#]),
        "configmap/app patched\n"
    );
    assert_eq!(
        k(&["get", "cm", "app", "-o", "jsonpath={.data}"]),
        r#"{"b":"2","c":"3"}"#
    );
    let table = k(&["get", "cm", "app", "--show-labels"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[1], row[3]), ("app", "2", "tier=web"));
    assert_eq!(k(&["delete", "cm", "app"]), "configmap \"app\" deleted\n");
    let missing = server.kubectl(&["get", "cm", "app"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "Error from server (NotFound): configmaps \"app\" not found\n"
    );
}

#[tokio::test]
async fn bad_input_gets_upstream_errors() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let file = write_manifest(
        &server,
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Not_Valid\n",
    );
    let out = server.kubectl(&["create", "-f", &file]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"The Namespace "Not_Valid" is invalid: metadata.name: Invalid value: "Not_Valid": a lowercase RFC 1123 label must consist of"#),
        "{}",
        stderr(&out)
    );
    let dup = write_manifest(
        &server,
        "dup.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dup\n",
    );
    server.kubectl_ok(&["create", "-f", &dup]);
    let out = server.kubectl(&["create", "-f", &dup]);
    assert!(
        stderr(&out).contains("configmaps \"dup\" already exists"),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&["create", "-f", &dup, "-n", "nowhere"]);
    assert!(
        stderr(&out).contains("namespaces \"nowhere\" not found"),
        "{}",
        stderr(&out)
    );
    // Unknown fields, as kubectl's default strict field validation and its
    // `--validate=warn` see them: every path, into lists too.
    let typo = write_manifest(
        &server,
        "typo.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\n  namspace: x\nspec:\n  containers:\n  - name: c\n    image: busybox\n    volumeMount: []\n",
    );
    let out = server.kubectl(&["create", "-f", &typo]);
    assert!(
        stderr(&out).contains(r#"Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field "metadata.namspace", unknown field "spec.containers[0].volumeMount""#),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&["create", "-f", &typo, "--validate=warn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"Warning: unknown field "spec.containers[0].volumeMount""#),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&["get", "--raw", "/apis/nothing/v1/things"]);
    assert!(
        stderr(&out).contains("the server could not find the requested resource"),
        "{}",
        stderr(&out)
    );
}

/// The seeds' first step: `kubectl apply -f <dir>`, again, then after an edit.
#[tokio::test]
async fn apply_creates_then_leaves_unchanged_then_configures() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/go-multiroute/manifests"
    );
    let apply = |path: &str| {
        let out = server.kubectl(&["apply", "-f", path]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "apply writes no warnings");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        apply(dir),
        "configmap/go-multiroute created\ndeployment.apps/go-multiroute created\ningress.networking.k8s.io/go-multiroute created\nsecret/go-multiroute-v1 created\nservice/go-multiroute created\n"
    );
    assert_eq!(
        apply(dir),
        "configmap/go-multiroute unchanged\ndeployment.apps/go-multiroute unchanged\ningress.networking.k8s.io/go-multiroute unchanged\nsecret/go-multiroute-v1 unchanged\nservice/go-multiroute unchanged\n"
    );
    let edited = std::fs::read_to_string(format!("{dir}/deployment.yaml"))
        .unwrap()
        .replace("replicas: 2", "replicas: 3");
    let edited_path = server.data_dir().join("deployment.yaml");
    std::fs::write(&edited_path, edited).unwrap();
    assert_eq!(
        apply(edited_path.to_str().unwrap()),
        "deployment.apps/go-multiroute configured\n"
    );
    assert_eq!(
        server.kubectl_ok(&[
            "get",
            "deploy",
            "go-multiroute",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}"
        ]),
        "3 2"
    );
    let row = server.kubectl_ok(&["get", "ingress", "go-multiroute", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[0], cols[1], cols[2], cols[3]),
        ("go-multiroute", "nginx", "*", "80")
    );
    let replicas = || {
        server.kubectl_ok(&[
            "get",
            "deploy",
            "go-multiroute",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };
    let edit = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["edit", "deploy", "go-multiroute"])
        .env("KUBE_EDITOR", "sed -i s/replicas:\\ 3/replicas:\\ 4/")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&edit.stdout),
        "deployment.apps/go-multiroute edited\n",
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    assert_eq!(replicas(), "4");
    // kubectl diff is a dry-run patch: it shows the change and writes nothing.
    let diff = server.kubectl(&["diff", "-f", &format!("{dir}/deployment.yaml")]);
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(
        shown.contains("-  replicas: 4") && shown.contains("+  replicas: 2"),
        "{shown}"
    );
    assert_eq!(replicas(), "4");
}

/// Events expire after the event TTL, as upstream stores them under leases.
#[tokio::test]
async fn events_expire_after_their_ttl() {
    let server = KuboxServer::start(KUBOX, &["--event-ttl", "2s"]).await;
    let event = r#"{"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "Started", "message": "Started container", "type": "Normal"}"#;
    let path = write_manifest(&server, "event.json", event);
    server.kubectl_ok(&["create", "-f", &path]);
    let listed = server.kubectl_ok(&["get", "events", "-o", "name"]);
    assert_eq!(listed, "event/e1\n");
    kubox_testkit::eventually(
        "the event to expire",
        std::time::Duration::from_secs(30),
        || {
            let out = server.kubectl(&["get", "events", "-o", "name"]);
            async move { (out.status.success() && out.stdout.is_empty()).then_some(()) }
        },
    )
    .await;
}

/// kubectl's typed commands send protobuf bodies.
#[tokio::test]
async fn typed_kubectl_commands_send_protobuf() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let k = |args: &[&str]| server.kubectl_ok(args);
    assert_eq!(
        k(&["create", "namespace", "work"]),
        "namespace/work created\n"
    );
    assert_eq!(
        k(&[
            "create",
            "configmap",
            "app",
            "-n",
            "work",
            "--from-literal=a=1",
            "--from-literal=b=2"
        ]),
        "configmap/app created\n"
    );
    assert_eq!(
        k(&["get", "cm", "app", "-n", "work", "-o", "jsonpath={.data}"]),
        r#"{"a":"1","b":"2"}"#
    );
    assert_eq!(
        k(&[
            "create",
            "secret",
            "generic",
            "db",
            "-n",
            "work",
            "--from-literal=db_pass=pass123"
        ]),
        "secret/db created\n"
    );
    assert_eq!(
        k(&[
            "get",
            "secret",
            "db",
            "-n",
            "work",
            "-o",
            "jsonpath={.data.db_pass}"
        ]),
        "cGFzczEyMw=="
    );
    assert_eq!(
        k(&[
            "create",
            "deployment",
            "web",
            "-n",
            "work",
            "--image=busybox:1.36",
            "--replicas=2"
        ]),
        "deployment.apps/web created\n"
    );
    let d: serde_json::Value =
        serde_json::from_str(&k(&["get", "deploy", "web", "-n", "work", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(
        k(&["scale", "deploy", "web", "-n", "work", "--replicas=3"]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(
        k(&[
            "get",
            "deploy",
            "web",
            "-n",
            "work",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}"
        ]),
        "3 2"
    );
    let scale: serde_json::Value = serde_json::from_str(&k(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/work/deployments/web/scale",
    ]))
    .unwrap();
    assert_eq!(
        (
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["selector"].as_str()
        ),
        (Some("Scale"), Some(3), Some("app=web"))
    );
    // An IngressRule embeds its IngressRuleValue, as Go's inline field.
    assert_eq!(
        k(&[
            "create",
            "ingress",
            "web",
            "-n",
            "work",
            "--rule=x.example/api*=web:80"
        ]),
        "ingress.networking.k8s.io/web created\n"
    );
    let ing: serde_json::Value =
        serde_json::from_str(&k(&["get", "ingress", "web", "-n", "work", "-o", "json"])).unwrap();
    assert_eq!(
        ing["spec"]["rules"][0],
        serde_json::json!({"host": "x.example", "http": {"paths": [{
            "path": "/api", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}},
        }]}})
    );
    let out = server.kubectl(&["scale", "deploy", "web", "-n", "work", "--replicas=-1"]);
    assert!(!out.status.success());
    let out = server.kubectl(&["create", "namespace", "Not_Valid"]);
    assert!(
        stderr(&out).contains(
            r#"The Namespace "Not_Valid" is invalid: metadata.name: Invalid value: "Not_Valid""#
        ),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&["create", "configmap", "x", "-n", "nowhere"]);
    assert_eq!(
        stderr(&out),
        "error: failed to create configmap: namespaces \"nowhere\" not found\n"
    );
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let k = |args: &[&str]| server.kubectl_ok(args);
    k(&["create", "deployment", "redis", "--image=redis:7"]);
    assert_eq!(
        k(&[
            "expose",
            "deployment",
            "redis",
            "--port=6379",
            "--name=redis-server"
        ]),
        "service/redis-server exposed\n"
    );
    let ip = k(&[
        "get",
        "svc",
        "redis-server",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
    let row = k(&["get", "svc", "redis-server", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[1], cols[2], cols[3], cols[4]),
        ("ClusterIP", ip.as_str(), "<none>", "6379/TCP")
    );

    assert_eq!(
        k(&[
            "expose",
            "deployment",
            "redis",
            "--port=6379",
            "--type=NodePort",
            "--name=redis-np"
        ]),
        "service/redis-np exposed\n"
    );
    let port: i64 = k(&[
        "get",
        "svc",
        "redis-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ])
    .parse()
    .unwrap();
    assert!((30000..=32767).contains(&port), "{port}");
    let ports = k(&[
        "get",
        "svc",
        "redis-np",
        "-o",
        "jsonpath={.spec.ports[0].port}",
    ]);
    assert_eq!(ports, "6379");

    assert_eq!(
        k(&[
            "create",
            "service",
            "nodeport",
            "fixed",
            "--tcp=80:8080",
            "--node-port=30080"
        ]),
        "service/fixed created\n"
    );
    let out = server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "again",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    assert!(
        stderr(&out).contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&[
        "create",
        "service",
        "nodeport",
        "low",
        "--tcp=80:8080",
        "--node-port=80",
    ]);
    assert!(
        stderr(&out).contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "taken",
        "--tcp=80:80",
        "--clusterip=10.43.0.1",
    ]);
    assert!(
        stderr(&out).contains("failed to allocate IP 10.43.0.1: provided IP is already allocated"),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "outside",
        "--tcp=80:80",
        "--clusterip=10.99.0.5",
    ]);
    assert!(stderr(&out).contains("the provided IP (10.99.0.5) is not in the valid range. The range of valid IPs is 10.43.0.0/16"), "{}", stderr(&out));
    // Deleting a Service frees its port for the next one.
    k(&["delete", "svc", "fixed"]);
    assert_eq!(
        k(&[
            "create",
            "service",
            "nodeport",
            "again",
            "--tcp=80:8080",
            "--node-port=30080"
        ]),
        "service/again created\n"
    );
    let headless = k(&[
        "create",
        "service",
        "clusterip",
        "hl",
        "--clusterip=None",
        "--tcp=80:80",
    ]);
    assert_eq!(headless, "service/hl created\n");
    assert_eq!(
        k(&["get", "svc", "hl", "-o", "jsonpath={.spec.clusterIP}"]),
        "None"
    );
}

/// `kubectl get -w` prints the current objects, then each change as it happens.
#[tokio::test]
async fn kubectl_get_watch_prints_changes() {
    use std::io::{BufRead, BufReader};
    // No controller manager: it would publish kube-root-ca.crt meanwhile.
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let mut watch = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args([
            "get",
            "configmaps",
            "-w",
            "--no-headers",
            "--request-timeout=30s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("a line from kubectl get -w")
    };
    // No ConfigMaps exist yet, so the first line is the one created here.
    server.kubectl_ok(&["create", "configmap", "watched", "--from-literal=a=1"]);
    let first = next();
    assert!(
        first.starts_with("watched ") && first.split_whitespace().nth(1) == Some("1"),
        "{first}"
    );
    server.kubectl_ok(&["patch", "cm", "watched", "-p", r#"{"data":{"b":"2"}}"#]);
    let second = next();
    assert!(
        second.starts_with("watched ") && second.split_whitespace().nth(1) == Some("2"),
        "{second}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test]
async fn auth_whoami_and_can_i() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let whoami = server.kubectl_ok(&["auth", "whoami"]);
    let lines: Vec<Vec<&str>> = whoami
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["ATTRIBUTE", "VALUE"]);
    assert_eq!(lines[1], ["Username", "kubox-admin"]);
    assert_eq!(
        lines[2],
        ["Groups", "[system:masters", "system:authenticated]"]
    );
    assert_eq!(
        server.kubectl_ok(&["auth", "can-i", "create", "deployments", "-n", "default"]),
        "yes\n"
    );
    // Without a binding, another user may not.
    let out = server.kubectl(&["auth", "can-i", "list", "pods", "--as", "backend"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no\n");
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn tables_and_output_formats() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let yaml = server.kubectl_ok(&["get", "ns", "default", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Namespace") && yaml.contains("kubernetes.io/metadata.name: default"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "ns", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"].as_array().unwrap().len(), 4);
    let all = server.kubectl_ok(&["get", "svc", "-A", "-o", "wide"]);
    let header: Vec<&str> = all.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    let list_ns = metrics
        .lines()
        .find(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"verb="LIST""#)
                && l.contains(r#"resource="namespaces""#)
                && l.contains(r#"code="200""#)
        })
        .unwrap_or_else(|| panic!("no LIST namespaces counter in {metrics}"));
    assert!(
        list_ns.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0,
        "{list_ns}"
    );
    assert!(
        metrics.contains("# TYPE apiserver_request_duration_seconds histogram"),
        "{metrics}"
    );
    let explained = server.kubectl_ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        explained.contains("FIELD: strategy <DeploymentStrategy>"),
        "{explained}"
    );
    assert!(
        explained.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{explained}"
    );
    let versions = server.kubectl_ok(&["api-versions"]);
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
    ] {
        assert!(versions.lines().any(|l| l == gv), "{gv} in {versions}");
    }
}
