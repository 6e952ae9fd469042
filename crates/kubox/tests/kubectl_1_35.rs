//! The core journeys' commands with kubectl 1.35, a newer client than the
//! kubectl on PATH: its discovery, OpenAPI v3, server-side apply, watch and
//! streaming paths against a real `kubox server`, checked against the
//! output upstream prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kubox_testkit::{KUBECTL_1_35, KuboxServer};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn kubectl() -> &'static Path {
    let path = Path::new(KUBECTL_1_35);
    assert!(
        path.exists(),
        "{KUBECTL_1_35} is missing: scripts/test installs it"
    );
    path
}

/// `kubectl get pods -o wide`'s header, split at whitespace as [`rows`] splits it.
const WIDE_POD_HEADER: [&str; 11] = [
    "NAME",
    "READY",
    "STATUS",
    "RESTARTS",
    "AGE",
    "IP",
    "NODE",
    "NOMINATED",
    "NODE",
    "READINESS",
    "GATES",
];

fn k(server: &KuboxServer, args: &[&str]) -> String {
    server.kubectl_at_ok(kubectl(), args)
}

/// The whitespace-separated columns of each line of `kubectl args`.
fn rows(server: &KuboxServer, args: &[&str]) -> Vec<Vec<String>> {
    kubox_testkit::table_rows(&k(server, args))
}

fn write_manifest(server: &KuboxServer, name: &str, body: &str) -> String {
    let path = server.data_dir().join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: main
        image: busybox
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "echo hello from web; exec sleep 3600"]
"#;

#[tokio::test]
async fn kubectl_1_35_walks_the_core_journeys() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.import_busybox();

    let version = k(&server, &["version"]);
    assert!(version.contains("Client Version: v1.35."), "{version}");
    assert!(version.contains("Server Version: v1."), "{version}");

    let resources = rows(&server, &["api-resources"]);
    assert_eq!(
        resources[0],
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    for want in [
        ["pods", "po", "v1", "true", "Pod"],
        ["deployments", "deploy", "apps/v1", "true", "Deployment"],
        [
            "horizontalpodautoscalers",
            "hpa",
            "autoscaling/v2",
            "true",
            "HorizontalPodAutoscaler",
        ],
    ] {
        assert!(
            resources.iter().any(|r| r == &want),
            "api-resources lacks {want:?}: {resources:?}"
        );
    }

    let explained = k(&server, &["explain", "deployment.spec.strategy"]);
    assert!(
        explained.contains("FIELD: strategy <DeploymentStrategy>")
            && explained.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{explained}"
    );

    let manifest = write_manifest(&server, "web.yaml", DEPLOYMENT);
    assert_eq!(
        k(&server, &["apply", "--server-side", "-f", &manifest]),
        "deployment.apps/web serverside-applied\n"
    );
    let status = k(
        &server,
        &["rollout", "status", "deploy/web", "--timeout=120s"],
    );
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    let deploys = rows(&server, &["get", "deploy"]);
    assert_eq!(
        deploys[0],
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(deploys[1][..4], ["web", "2/2", "2", "2"]);
    let wide = rows(&server, &["get", "pods", "-o", "wide", "-l", "app=web"]);
    assert_eq!(wide[0], WIDE_POD_HEADER);
    assert_eq!(wide.len(), 3, "{wide:?}");
    for pod in &wide[1..] {
        assert_eq!(pod[1..4], ["1/1", "Running", "0"], "{pod:?}");
        assert_eq!(pod[6], "node", "{pod:?}");
    }
    let pod = wide[1][0].clone();

    let describe = k(&server, &["describe", "deploy", "web"]);
    for part in [
        "Name:                   web",
        "Replicas:               2 desired | 2 updated | 2 total | 2 available | 0 unavailable",
        "StrategyType:           RollingUpdate",
        "NewReplicaSet:",
    ] {
        assert!(
            describe.contains(part),
            "describe lacks {part:?}:\n{describe}"
        );
    }

    assert_eq!(k(&server, &["logs", &pod]), "hello from web\n");
    assert_eq!(
        k(&server, &["logs", "deploy/web", "--tail=1"]),
        "hello from web\n"
    );
    assert_eq!(k(&server, &["exec", &pod, "--", "echo", "hi"]), "hi\n");

    assert_eq!(
        k(
            &server,
            &["set", "image", "deploy/web", "main=busybox:latest"]
        ),
        "deployment.apps/web image updated\n"
    );
    let status = k(
        &server,
        &["rollout", "status", "deploy/web", "--timeout=120s"],
    );
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );
    let history = rows(&server, &["rollout", "history", "deploy/web"]);
    assert_eq!(history[1], ["REVISION", "CHANGE-CAUSE"], "{history:?}");
    assert_eq!(history[2..4], [["1", "<none>"], ["2", "<none>"]]);
    assert_eq!(
        k(&server, &["rollout", "undo", "deploy/web"]),
        "deployment.apps/web rolled back\n"
    );
}

/// Reads `program get pods -w -o wide`'s lines as they come.
struct Watch {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watch {
    fn start(server: &KuboxServer, program: &Path) -> Self {
        let mut child = Command::new(program)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .args(["get", "pods", "-w", "-o", "wide", "--request-timeout=60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The columns of the next line printed.
    fn next(&self) -> Vec<String> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from kubectl get -w");
        line.split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl get -w -o wide` prints the wide header, then a wide row for each
/// change as it happens, with both kubectl releases.
#[tokio::test]
async fn get_watch_wide_prints_rows_as_events_arrive() {
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    // No controller manager makes the default ServiceAccount.
    server.kubectl_ok(&["create", "serviceaccount", "default"]);
    for (i, program) in [Path::new("kubectl"), kubectl()].into_iter().enumerate() {
        let name = format!("w{i}");
        let watch = Watch::start(&server, program);
        // Bound to a node that never runs it, so only this test changes it.
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},
            "spec":{{"nodeName":"elsewhere","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
        );
        let path = write_manifest(&server, &format!("{name}.json"), &pod);
        server.kubectl_ok(&["create", "-f", &path]);
        assert_eq!(watch.next(), WIDE_POD_HEADER, "{program:?}");
        let added = watch.next();
        assert_eq!(
            added[..4],
            [name.as_str(), "0/1", "Pending", "0"],
            "{program:?}"
        );
        assert_eq!(
            added[5..],
            ["<none>", "elsewhere", "<none>", "<none>"],
            "{program:?}"
        );
        server.kubectl_ok(&["delete", "pod", &name, "--wait=false"]);
        let terminating = watch.next();
        assert_eq!(
            terminating[..3],
            [name.as_str(), "0/1", "Terminating"],
            "{program:?}"
        );
        assert_eq!(terminating[6], "elsewhere", "{program:?}");
        server.kubectl_ok(&["delete", "pod", &name, "--force", "--grace-period=0"]);
        let deleted = watch.next();
        assert_eq!(
            deleted[..3],
            [name.as_str(), "0/1", "Terminating"],
            "{program:?}"
        );
    }
}

/// `kubectl diff` (a server-side dry run: exit 1 with a diff, 0 without),
/// `edit` through a scripted editor (and an edit the server rejects),
/// `-o jsonpath`, `-o custom-columns` and server-side apply conflicts, with
/// kubectl 1.35 and the kubectl on PATH alike.
#[tokio::test]
async fn diff_edit_output_formats_and_apply_conflicts_in_both_kubectls() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    for (ns, program) in [("k132", Path::new("kubectl")), ("k135", kubectl())] {
        let run = |args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            server.kubectl_at(program, &all)
        };
        let ok = |args: &[&str]| {
            let out = run(args);
            assert!(
                out.status.success(),
                "{program:?} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        server.kubectl_at_ok(program, &["create", "namespace", ns]);
        let cm = |name: &str, a: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  a: \"{a}\"\n"
            )
        };
        let file = write_manifest(&server, &format!("{ns}-app.yaml"), &cm("app", "1"));
        assert_eq!(ok(&["apply", "-f", &file]), "configmap/app created\n");
        let same = run(&["diff", "-f", &file]);
        assert_eq!(same.status.code(), Some(0), "{program:?}");
        assert_eq!(String::from_utf8_lossy(&same.stdout), "");
        let file = write_manifest(&server, &format!("{ns}-app.yaml"), &cm("app", "2"));
        let changed = run(&["diff", "-f", &file]);
        assert_eq!(changed.status.code(), Some(1), "{program:?}");
        let shown = String::from_utf8_lossy(&changed.stdout);
        assert!(
            shown.contains("-  a: \"1\"") && shown.contains("+  a: \"2\""),
            "{shown}"
        );
        let jsonpath = ["get", "cm", "app", "-o", "jsonpath={.data.a}"];
        assert_eq!(ok(&jsonpath), "1", "diff writes nothing");

        let edit = |name: &str, script: &str| {
            std::process::Command::new(program)
                .arg("--kubeconfig")
                .arg(server.kubeconfig())
                .args(["-n", ns, "edit", "cm", name])
                .env("KUBE_EDITOR", script)
                .output()
                .unwrap()
        };
        let out = edit("app", r#"sed -i s/\"1\"/\"3\"/"#);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "configmap/app edited\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ok(&jsonpath), "3");
        // An edit the server rejects: kubectl reopens the file with the
        // error, and gives up when the second edit changes nothing more.
        let frozen = write_manifest(
            &server,
            &format!("{ns}-frozen.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\nimmutable: true\ndata:\n  a: \"1\"\n",
        );
        ok(&["apply", "-f", &frozen]);
        let out = edit("frozen", r#"sed -i s/\"1\"/\"2\"/"#);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program:?}: {err}");
        assert!(
            err.contains("error: configmaps \"frozen\" is invalid")
                && err.contains("A copy of your changes has been stored to")
                && err.contains("error: Edit cancelled, no valid changes were saved."),
            "{program:?}: {err}"
        );
        assert_eq!(
            ok(&["get", "cm", "frozen", "-o", "jsonpath={.data.a}"]),
            "1"
        );

        assert_eq!(
            kubox_testkit::table_rows(&ok(&[
                "get",
                "cm",
                "app",
                "frozen",
                "-o",
                "custom-columns=NAME:.metadata.name,A:.data.a,IMMUTABLE:.immutable"
            ])),
            [
                ["NAME", "A", "IMMUTABLE"],
                ["app", "3", "<none>"],
                ["frozen", "1", "true"]
            ]
        );

        let ssa = write_manifest(&server, &format!("{ns}-ssa.yaml"), &cm("ssa", "4"));
        let applied = ["apply", "--server-side", "-f", ssa.as_str()];
        assert_eq!(ok(&applied), "configmap/ssa serverside-applied\n");
        ok(&["patch", "cm", "ssa", "-p", r#"{"data":{"a":"5"}}"#]);
        let out = run(&applied);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program:?}");
        assert!(
            err.contains(r#"conflict with "kubectl-patch" using v1: .data.a"#),
            "{program:?}: {err}"
        );
        let mut forced = applied.to_vec();
        forced.push("--force-conflicts");
        assert_eq!(ok(&forced), "configmap/ssa serverside-applied\n");
        assert_eq!(ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "4");
    }
}
