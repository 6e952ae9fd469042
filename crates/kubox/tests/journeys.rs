//! The seeds' journeys (../shared/spec/seed-features.md, J1–J37) as a user
//! walks them: real kubectl against a real `kubox server` with real
//! containers, checked the way a user reads the output (columns and
//! values, not ages).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(90);

async fn cluster() -> KuboxServer {
    KuboxServer::start(KUBOX, &["--node-name", "node"]).await
}

/// The whitespace-separated columns of each line of `kubectl args`.
fn rows(server: &KuboxServer, args: &[&str]) -> Vec<Vec<String>> {
    kubox_testkit::table_rows(&server.kubectl_ok(args))
}

/// The row of `kubectl args` whose first column starts with `name`.
fn row(server: &KuboxServer, args: &[&str], name: &str) -> Option<Vec<String>> {
    rows(server, args)
        .into_iter()
        .find(|r| r.first().is_some_and(|c| c.starts_with(name)))
}

fn jsonpath(server: &KuboxServer, args: &[&str], path: &str) -> String {
    let path = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &path]);
    server.kubectl_ok(&all)
}

/// Names of the pods labelled `app=<app>` that are Running and ready.
fn ready_pods(server: &KuboxServer, app: &str) -> Vec<String> {
    let out = server.kubectl_ok(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn await_ready_pods(server: &KuboxServer, app: &str, n: usize) -> Vec<String> {
    eventually(&format!("{n} ready pods of {app}"), TIMEOUT, || async {
        let pods = ready_pods(server, app);
        (pods.len() == n).then_some(pods)
    })
    .await
}

/// `redis-cli -h host -p port ping`'s answer, once it is PONG.
async fn redis_pong(what: &str, host: &str, port: u16) {
    eventually(&format!("PONG from redis {what}"), TIMEOUT, || async {
        let out = Command::new("redis-cli")
            .args(["-h", host, "-p", &port.to_string(), "ping"])
            .output()
            .expect("running redis-cli");
        (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
    })
    .await;
}

/// A background kubectl (port-forward, proxy), killed when dropped.
struct Background(Child);

impl Background {
    /// Starts `kubectl args` and returns it with the first line it prints.
    fn start(server: &KuboxServer, args: &[&str]) -> (Self, String) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting kubectl");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("reading kubectl's output");
        // Drained, as kubectl dies of a closed pipe when it prints
        // `Handling connection for ...`.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        (Self(child), line)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port in a line like `Forwarding from 127.0.0.1:39211 -> 6379` or
/// `Starting to serve on 127.0.0.1:39211`.
fn local_port(line: &str) -> u16 {
    let after = line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap_or_else(|| panic!("no local address in {line:?}"));
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// J7 (and J17): Redis as a Deployment, exposed as ClusterIP and NodePort,
/// reached through port-forward and the NodePort, scaled with Endpoints
/// following.
#[tokio::test]
async fn j7_redis_is_run_exposed_forwarded_and_scaled() {
    let server = cluster().await;
    server.build_example_images();
    assert_eq!(
        server.kubectl_ok(&[
            "create",
            "deployment",
            "redis",
            "--image=kubox.local/redis:7"
        ]),
        "deployment.apps/redis created\n"
    );
    let pod = await_ready_pods(&server, "redis", 1).await.remove(0);

    let all = rows(&server, &["get", "all"]);
    let find = |prefix: &str| {
        all.iter()
            .find(|r| r[0].starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in get all: {all:?}"))
            .clone()
    };
    assert_eq!(find(&format!("pod/{pod}"))[1..4], ["1/1", "Running", "0"]);
    assert_eq!(find("service/kubernetes")[1], "ClusterIP");
    let deploy = find("deployment.apps/redis");
    assert_eq!(deploy[1..4], ["1/1", "1", "1"]);
    let rs = find("replicaset.apps/redis-");
    assert_eq!(rs[1..4], ["1", "1", "1"]);
    let hash = rs[0]
        .trim_start_matches("replicaset.apps/redis-")
        .to_owned();

    let wide = rows(&server, &["get", "deploy", "redis", "-o", "wide"]);
    assert_eq!(
        wide[0],
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert_eq!(wide[1][..4], ["redis", "1/1", "1", "1"]);
    assert_eq!(wide[1][5..], ["redis", "kubox.local/redis:7", "app=redis"]);
    assert_eq!(
        rows(&server, &["get", "deploy", "-l", "app=redis", "-o", "wide"])[1][0],
        "redis"
    );
    let none = server.kubectl(&["get", "deploy", "-l", "app=test", "-o", "wide"]);
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&none.stderr),
        "No resources found in default namespace.\n"
    );
    let rs_wide = row(&server, &["get", "rs", "-o", "wide"], "redis-").unwrap();
    assert_eq!(
        rs_wide[5..],
        [
            "redis".to_owned(),
            "kubox.local/redis:7".to_owned(),
            format!("app=redis,pod-template-hash={hash}")
        ]
    );

    assert_eq!(
        server.kubectl_ok(&[
            "expose",
            "deploy/redis",
            "--port=6379",
            "--protocol=TCP",
            "--target-port=6379",
            "--name=redis-server"
        ]),
        "service/redis-server exposed\n"
    );
    let svc = row(&server, &["get", "svc", "-o", "wide"], "redis-server").unwrap();
    assert_eq!(svc[1], "ClusterIP");
    assert!(svc[2].starts_with("10.43."), "{svc:?}");
    assert_eq!(svc[3..5], ["<none>", "6379/TCP"]);
    assert_eq!(svc[6], "app=redis");

    let (forward, line) =
        Background::start(&server, &["port-forward", "svc/redis-server", ":6379"]);
    assert!(line.ends_with(" -> 6379\n"), "{line:?}");
    redis_pong("through port-forward", "127.0.0.1", local_port(&line)).await;
    drop(forward);

    assert_eq!(
        server.kubectl_ok(&[
            "expose",
            "deploy/redis",
            "--port=6379",
            "--protocol=TCP",
            "--target-port=6379",
            "--name=redis-server-nodeport",
            "--type=NodePort"
        ]),
        "service/redis-server-nodeport exposed\n"
    );
    let svc = row(
        &server,
        &["get", "service/redis-server-nodeport", "-o", "wide"],
        "redis-server-nodeport",
    )
    .unwrap();
    assert_eq!(svc[1], "NodePort");
    let node_port: u16 = svc[4]
        .strip_prefix("6379:")
        .and_then(|p| p.strip_suffix("/TCP"))
        .unwrap_or_else(|| panic!("PORT(S) {}", svc[4]))
        .parse()
        .unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    redis_pong("on its NodePort", "127.0.0.1", node_port).await;

    assert_eq!(
        server.kubectl_ok(&["scale", "deploy/redis", "--replicas=2"]),
        "deployment.apps/redis scaled\n"
    );
    let pods = await_ready_pods(&server, "redis", 2).await;
    assert!(pods.contains(&pod), "the first pod stays: {pods:?}");
    let ips: Vec<String> = pods
        .iter()
        .map(|p| jsonpath(&server, &["get", "pod", p], "{.status.podIP}"))
        .collect();
    eventually("the Endpoints to list both pods", TIMEOUT, || async {
        let ep = row(
            &server,
            &["get", "endpoints", "redis-server"],
            "redis-server",
        )?;
        let mut listed: Vec<&str> = ep[1].split(',').collect();
        listed.sort();
        let mut want: Vec<String> = ips.iter().map(|ip| format!("{ip}:6379")).collect();
        want.sort();
        (listed == want).then_some(())
    })
    .await;
}

/// J6 and J16: the node as kubectl shows it, output formats and explain.
#[tokio::test]
async fn j6_j16_nodes_output_formats_and_explain() {
    let server = cluster().await;
    server.import_busybox();
    server.run_sleeper("sleeper").await;
    for name in ["nodes", "node", "no"] {
        let got = rows(&server, &["get", name]);
        assert_eq!(got[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
        assert_eq!(got[1][..3], ["node", "Ready", "control-plane"]);
        assert!(got[1][4].starts_with("v1."), "{got:?}");
    }
    let wide = rows(&server, &["get", "nodes", "-o", "wide"]);
    assert_eq!(
        wide[0],
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    assert_eq!(wide[1][5..7], ["127.0.0.1", "<none>"]);
    let nodes: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "nodes", "-o", "json"])).unwrap();
    let info = &nodes["items"][0]["status"]["nodeInfo"];
    assert_eq!(info["operatingSystem"], "linux");
    assert_eq!(info["architecture"], "amd64");
    for field in [
        "kernelVersion",
        "kubeletVersion",
        "containerRuntimeVersion",
        "bootID",
        "machineID",
    ] {
        assert!(
            info[field].as_str().is_some_and(|v| !v.is_empty()),
            "nodeInfo.{field}: {info}"
        );
    }
    assert_eq!(
        jsonpath(&server, &["get", "nodes"], "{.items[*].metadata.name}"),
        "node"
    );

    let describe = server.kubectl_ok(&["describe", "node", "node"]);
    for part in [
        "Name:               node",
        "Roles:              control-plane",
        "Conditions:",
        "Ready ",
        "Capacity:",
        "Allocatable:",
        "System Info:",
        "Non-terminated Pods:",
        "sleeper",
    ] {
        assert!(
            describe.contains(part),
            "describe node lacks {part:?}:\n{describe}"
        );
    }

    let explain = server.kubectl_ok(&["explain", "node"]);
    assert!(explain.starts_with("KIND:"), "{explain}");
    for part in [
        "Node",
        "VERSION:",
        "v1",
        "DESCRIPTION:",
        "Node is a worker node in Kubernetes",
    ] {
        assert!(
            explain.contains(part),
            "explain node lacks {part:?}:\n{explain}"
        );
    }
    let resources = rows(&server, &["api-resources"]);
    assert_eq!(
        resources[0],
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    for want in [
        ["pods", "po", "v1", "true", "Pod"],
        ["nodes", "no", "v1", "false", "Node"],
        ["deployments", "deploy", "apps/v1", "true", "Deployment"],
    ] {
        assert!(
            resources.iter().any(|r| r == &want),
            "api-resources lacks {want:?}"
        );
    }
    let yaml = server.kubectl_ok(&["get", "pod", "sleeper", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Pod\n") && yaml.contains("  name: sleeper\n"),
        "{yaml}"
    );
    let named = server.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert_eq!(named, "pod/sleeper\n");
    let custom = rows(
        &server,
        &[
            "get",
            "pods",
            "-o",
            "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName",
        ],
    );
    assert_eq!(custom, [["NAME", "NODE"], ["sleeper", "node"]]);
}

/// J15 and J19: a deleted pod is replaced; an image that cannot be pulled
/// shows why and is fixed with `set image`; a Service whose targetPort
/// misses the container's port carries nothing until patched.
#[tokio::test]
async fn j15_j19_self_healing_and_troubleshooting() {
    let server = cluster().await;
    server.build_example_images();
    server.kubectl_ok(&[
        "create",
        "deployment",
        "redis",
        "--image=kubox.local/redis:7",
    ]);
    let first = await_ready_pods(&server, "redis", 1).await.remove(0);
    server.kubectl_ok(&["delete", "pod", &first, "--wait=false"]);
    let second = eventually("a replacement pod", TIMEOUT, || async {
        let pods = ready_pods(&server, "redis");
        pods.into_iter().find(|p| p != &first)
    })
    .await;
    assert!(second.starts_with("redis-"), "{second}");

    server.kubectl_ok(&[
        "create",
        "deployment",
        "broken",
        "--image=kubox.local/no-such-image:1",
    ]);
    let broken = eventually("the broken pod to stop pulling", TIMEOUT, || async {
        let r = row(&server, &["get", "pods", "-l", "app=broken"], "broken-")?;
        matches!(r[2].as_str(), "ErrImagePull" | "ImagePullBackOff").then(|| r[0].clone())
    })
    .await;
    eventually("pull failure events", TIMEOUT, || async {
        let events = server.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={broken}"),
        ]);
        (events.contains("Failed") && events.contains("kubox.local/no-such-image:1")).then_some(())
    })
    .await;
    let describe = server.kubectl_ok(&["describe", "pod", &broken]);
    assert!(describe.contains("Waiting"), "{describe}");
    server.kubectl_ok(&[
        "set",
        "image",
        "deploy/broken",
        "no-such-image=kubox.local/redis:7",
    ]);
    await_ready_pods(&server, "broken", 1).await;

    server.kubectl_ok(&[
        "expose",
        "deploy/redis",
        "--port=6379",
        "--target-port=6380",
        "--name=redis-wrong",
    ]);
    let ip = jsonpath(&server, &["get", "svc", "redis-wrong"], "{.spec.clusterIP}");
    eventually("the Endpoints on the wrong port", TIMEOUT, || async {
        let ep = row(&server, &["get", "endpoints", "redis-wrong"], "redis-wrong")?;
        ep[1].ends_with(":6380").then_some(())
    })
    .await;
    let refused = Command::new("redis-cli")
        .args(["-h", &ip, "-p", "6379", "ping"])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&refused.stdout).trim(), "PONG");
    let patch = json!({"spec": {"ports": [{"port": 6379, "targetPort": 6379}]}}).to_string();
    server.kubectl_ok(&["patch", "svc", "redis-wrong", "-p", &patch]);
    redis_pong("on the patched Service", &ip, 6379).await;
}

/// J25: the QoS class of pods by their requests and limits.
#[tokio::test]
async fn j25_qos_classes() {
    let server = cluster().await;
    let pod = |name: &str, resources: Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]}
        })
    };
    let limits = json!({"cpu": "100m", "memory": "64Mi"});
    server.apply_json(&pod("guaranteed", json!({"limits": limits})));
    server.apply_json(&pod("burstable", json!({"requests": {"memory": "32Mi"}})));
    server.apply_json(&pod("besteffort", json!({})));
    for (name, class) in [
        ("guaranteed", "Guaranteed"),
        ("burstable", "Burstable"),
        ("besteffort", "BestEffort"),
    ] {
        assert_eq!(
            jsonpath(&server, &["get", "po", name], "{.status.qosClass}"),
            class
        );
    }
    // Limits alone default the requests, which is what makes it Guaranteed.
    assert_eq!(
        jsonpath(
            &server,
            &["get", "po", "guaranteed"],
            "{.spec.containers[0].resources.requests.memory}"
        ),
        "64Mi"
    );
}

/// J13: versions, raw REST with the client certificate, `kubectl proxy`,
/// and NamespaceLifecycle's refusals.
#[tokio::test]
async fn j13_versions_raw_rest_proxy_and_admission() {
    let server = cluster().await;
    let version = server.kubectl_ok(&["version"]);
    assert!(version.contains("Client Version: v1."), "{version}");
    assert!(version.contains("Server Version: v1."), "{version}");

    let base = format!("https://127.0.0.1:{}", server.port());
    let anonymous = Command::new("curl")
        .args(["-sk", &format!("{base}/version")])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&anonymous.stdout).unwrap();
    assert_eq!(info["major"], "1");
    assert!(
        info["gitVersion"].as_str().unwrap().starts_with("v1."),
        "{info}"
    );
    assert_eq!(info["platform"], "linux/amd64");

    let dir = server.data_dir();
    for (field, file) in [
        (
            "{.clusters[0].cluster.certificate-authority-data}",
            "ca.crt",
        ),
        ("{.users[0].user.client-certificate-data}", "admin.crt"),
        ("{.users[0].user.client-key-data}", "admin.key"),
    ] {
        let b64 = jsonpath(&server, &["config", "view", "--raw"], field);
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let raw = Command::new("curl")
        .arg("-s")
        .arg("--cacert")
        .arg(dir.join("ca.crt"))
        .arg("--cert")
        .arg(dir.join("admin.crt"))
        .arg("--key")
        .arg(dir.join("admin.key"))
        .arg(format!("{base}/api/v1/namespaces"))
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(list["kind"], "NamespaceList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    for ns in ["default", "kube-public", "kube-system", "kube-node-lease"] {
        assert!(names.contains(&ns), "{names:?}");
    }

    let (proxy, line) = Background::start(&server, &["proxy", "--port=0"]);
    assert!(
        line.starts_with("Starting to serve on 127.0.0.1:"),
        "{line:?}"
    );
    let through = Command::new("curl")
        .args([
            "-s",
            &format!("http://127.0.0.1:{}/api/v1/namespaces", local_port(&line)),
        ])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&through.stdout).unwrap();
    assert_eq!(list["kind"], "NamespaceList");
    drop(proxy);

    let ns = rows(&server, &["get", "ns"]);
    assert_eq!(ns[0], ["NAME", "STATUS", "AGE"]);
    assert!(ns.iter().any(|r| r[..2] == ["default", "Active"]), "{ns:?}");
    for protected in ["kube-system", "kube-public", "default"] {
        let out = server.kubectl(&["delete", "ns", protected]);
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "Error from server (Forbidden): namespaces \"{protected}\" is forbidden: this namespace may not be deleted\n"
            )
        );
    }
}

fn pod_with(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]);
    spec["terminationGracePeriodSeconds"] = json!(1);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

async fn pending_because(server: &KuboxServer, pod: &str, reason: &str) {
    eventually(
        &format!("{pod} pending because {reason}"),
        TIMEOUT,
        || async {
            let events = server.kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason=FailedScheduling"),
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            events
                .contains(&format!("0/1 nodes are available: 1 {reason}."))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        jsonpath(server, &["get", "pod", pod], "{.status.phase}"),
        "Pending"
    );
}

async fn runs_on_node(server: &KuboxServer, pod: &str) {
    eventually(&format!("{pod} to run on the node"), TIMEOUT, || async {
        let r = row(server, &["get", "pod", pod, "-o", "wide"], pod)?;
        (r[2] == "Running" && r[6] == "node").then_some(())
    })
    .await;
}

/// §6.4–6.5 of the seeds: nodeSelector, and a taint with and without a
/// toleration, with the scheduler's reasons in the events.
#[tokio::test]
async fn node_selectors_and_taints_place_pods() {
    let server = cluster().await;
    server.import_busybox();
    server.apply_json(&pod_with(
        "ssd",
        json!({"nodeSelector": {"disktype": "ssd"}}),
    ));
    pending_because(
        &server,
        "ssd",
        "node(s) didn't match Pod's node affinity/selector",
    )
    .await;
    assert_eq!(
        server.kubectl_ok(&["label", "nodes", "node", "disktype=ssd"]),
        "node/node labeled\n"
    );
    runs_on_node(&server, "ssd").await;

    assert_eq!(
        server.kubectl_ok(&["taint", "nodes", "node", "dedicated=db:NoSchedule"]),
        "node/node tainted\n"
    );
    server.apply_json(&pod_with("plain", json!({})));
    pending_because(
        &server,
        "plain",
        "node(s) had untolerated taint {dedicated: db}",
    )
    .await;
    let toleration =
        json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
    server.apply_json(&pod_with("tolerant", json!({"tolerations": toleration})));
    runs_on_node(&server, "tolerant").await;
    assert_eq!(
        server.kubectl_ok(&["taint", "nodes", "node", "dedicated=db:NoSchedule-"]),
        "node/node untainted\n"
    );
    runs_on_node(&server, "plain").await;
    // NoSchedule leaves running pods alone.
    assert_eq!(
        jsonpath(&server, &["get", "pod", "ssd"], "{.status.phase}"),
        "Running"
    );
}

/// §5.8 of the seeds: blue-green by switching a Service's selector between
/// two Deployments of the example app, v1 and v2.
#[tokio::test]
async fn blue_green_by_switching_the_service_selector() {
    let server = cluster().await;
    server.build_example_images();
    for (colour, version) in [("blue", "v1"), ("green", "v2")] {
        server.apply_json(&json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": format!("web-{colour}")},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web", "colour": colour}},
                "template": {
                    "metadata": {"labels": {"app": "web", "colour": colour}},
                    "spec": {"containers": [{
                        "name": "web",
                        "image": format!("kubox.local/go-multiroute:{version}"),
                        // No routes are needed: every answer names the version.
                        "args": ["--config", "/etc/hostname"],
                        "ports": [{"containerPort": 3000}]
                    }]}
                }
            }
        }));
    }
    await_ready_pods(&server, "web", 2).await;
    server.apply_json(&json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web", "colour": "blue"}, "ports": [{"port": 80, "targetPort": 3000}]}
    }));
    let ip = jsonpath(&server, &["get", "svc", "web"], "{.spec.clusterIP}");
    let serves = |version: &'static str| {
        let ip = ip.clone();
        async move {
            eventually(
                &format!("the Service to answer from {version}"),
                TIMEOUT,
                || async {
                    let out = Command::new("curl")
                        .args(["-s", "--max-time", "2", &format!("http://{ip}/")])
                        .output()
                        .ok()?;
                    String::from_utf8_lossy(&out.stdout)
                        .starts_with(&format!("[{version}] "))
                        .then_some(())
                },
            )
            .await
        }
    };
    serves("v1").await;
    let patch = json!({"spec": {"selector": {"app": "web", "colour": "green"}}}).to_string();
    server.kubectl_ok(&["patch", "service", "web", "-p", &patch]);
    serves("v2").await;
}

/// Waits until `path` on the Service `ip:3000` answers `want` six times in
/// a row, so every pod behind it does.
async fn all_answer(ip: &str, path: &str, want: &str) {
    eventually(
        &format!("{path} on {ip} to answer {want:?}"),
        TIMEOUT,
        || async {
            (0..6)
                .all(|_| {
                    Command::new("curl")
                        .args(["-s", "--max-time", "2", &format!("http://{ip}:3000{path}")])
                        .output()
                        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == want)
                })
                .then_some(())
        },
    )
    .await;
}

/// J1: the go-multiroute manifests applied from a directory, updated with
/// `set image`, rolled back with `rollout undo`; then the versioned
/// ConfigMap practice of §1.9: a new ConfigMap name rolls the Deployment,
/// and undo brings the old configuration back.
#[tokio::test]
async fn j1_go_multiroute_is_deployed_updated_and_rolled_back() {
    let server = cluster().await;
    server.build_example_images();
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/go-multiroute/manifests");
    let applied = server.kubectl_ok(&["apply", "-f", manifests.to_str().unwrap()]);
    for line in [
        "configmap/go-multiroute created",
        "deployment.apps/go-multiroute created",
        "secret/go-multiroute-v1 created",
        "service/go-multiroute created",
    ] {
        assert!(applied.contains(line), "{applied}");
    }
    await_ready_pods(&server, "go-multiroute", 2).await;
    let deploy = row(&server, &["get", "deploy"], "go-multiroute").unwrap();
    assert_eq!(deploy[1..4], ["2/2", "2", "2"]);
    let ip = jsonpath(
        &server,
        &["get", "svc", "go-multiroute"],
        "{.spec.clusterIP}",
    );
    let route1 = |version: &str, content: &str| {
        format!("[{version}] Hello, You are at /route1, Got: {content}\n")
    };
    all_answer(&ip, "/route1", &route1("v1", "route1's content")).await;
    all_answer(
        &ip,
        "/connect_db",
        "[v1] connected to db with password \"pass123\"\n",
    )
    .await;

    // The seed's pipeline pushes the new version and deploys what it
    // pushed, pinned (§1.6) by the digest the push reported.
    let registry = kubox_testkit::Registry::start().await;
    let digest = server.push_image(
        "kubox.local/go-multiroute:v2",
        &registry,
        "leigg/go_multiroute:v2",
    );
    let pinned = format!("{}/leigg/go_multiroute:v2@{digest}", registry.host());
    assert_eq!(
        server.kubectl_ok(&[
            "set",
            "image",
            "deploy/go-multiroute",
            &format!("go-multiroute={pinned}"),
        ]),
        "deployment.apps/go-multiroute image updated\n"
    );
    let status = server.kubectl_ok(&["rollout", "status", "deploy/go-multiroute", "--timeout=90s"]);
    assert!(
        status.ends_with("deployment \"go-multiroute\" successfully rolled out\n"),
        "{status}"
    );
    all_answer(&ip, "/route1", &route1("v2", "route1's content")).await;
    // Once the old pods have gone, both run what the registry holds.
    eventually("both pods run the pushed digest", TIMEOUT, || async {
        let images = jsonpath(
            &server,
            &["get", "pods", "-l", "app=go-multiroute"],
            "{.items[*].status.containerStatuses[0].imageID}",
        );
        let images: Vec<&str> = images.split_whitespace().collect();
        (images.len() == 2 && images.iter().all(|i| i.ends_with(&format!("@{digest}"))))
            .then_some(())
    })
    .await;
    let history = rows(&server, &["rollout", "history", "deploy/go-multiroute"]);
    assert_eq!(history[0], ["deployment.apps/go-multiroute"]);
    assert_eq!(history[1], ["REVISION", "CHANGE-CAUSE"]);
    assert_eq!(history[2..], [["1", "<none>"], ["2", "<none>"]]);

    assert_eq!(
        server.kubectl_ok(&["rollout", "undo", "deploy/go-multiroute"]),
        "deployment.apps/go-multiroute rolled back\n"
    );
    server.kubectl_ok(&["rollout", "status", "deploy/go-multiroute", "--timeout=90s"]);
    all_answer(&ip, "/route1", &route1("v1", "route1's content")).await;

    server.apply_json(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "go-multiroute-2"},
        "data": {"config.yml": "routes:\n  /route1: \"the second configuration\"\n"}
    }));
    let patch = json!({"spec": {"template": {"spec": {"volumes": [
        {"name": "config", "configMap": {"name": "go-multiroute-2"}}
    ]}}}})
    .to_string();
    server.kubectl_ok(&["patch", "deploy/go-multiroute", "-p", &patch]);
    server.kubectl_ok(&["rollout", "status", "deploy/go-multiroute", "--timeout=90s"]);
    all_answer(&ip, "/route1", &route1("v1", "the second configuration")).await;
    server.kubectl_ok(&["rollout", "undo", "deploy/go-multiroute"]);
    server.kubectl_ok(&["rollout", "status", "deploy/go-multiroute", "--timeout=90s"]);
    all_answer(&ip, "/route1", &route1("v1", "route1's content")).await;
}

/// §6.9 of the seeds: a PodDisruptionBudget holds `kubectl drain` back
/// once evicting another pod would leave fewer than minAvailable.
#[tokio::test]
async fn a_disruption_budget_holds_a_drain_back() {
    let server = cluster().await;
    server.import_busybox();
    server.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
        "--",
        "sleep",
        "3600",
    ]);
    await_ready_pods(&server, "web", 2).await;
    server.kubectl_ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=1",
    ]);
    eventually("the budget to allow one disruption", TIMEOUT, || async {
        let r = row(&server, &["get", "pdb", "web"], "web")?;
        (r[1..4] == ["1", "N/A", "1"]).then_some(())
    })
    .await;

    // The Eviction's deleteOptions carry the grace period to the pod.
    let drain = server.kubectl(&[
        "drain",
        "node",
        "--ignore-daemonsets",
        "--grace-period=1",
        "--timeout=15s",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr),
    );
    assert!(!drain.status.success(), "{out}{err}");
    assert!(out.contains("node/node cordoned"), "{out}");
    assert_eq!(out.matches(" evicted").count(), 1, "one pod goes: {out}");
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    let r = row(&server, &["get", "pdb", "web"], "web").unwrap();
    assert_eq!(r[3], "0", "{r:?}");
    assert_eq!(ready_pods(&server, "web").len(), 1);
    let node = row(&server, &["get", "nodes"], "node").unwrap();
    assert_eq!(node[1], "Ready,SchedulingDisabled");

    server.kubectl_ok(&["uncordon", "node"]);
    await_ready_pods(&server, "web", 2).await;

    // maxUnavailable counts against the Deployment's scale.
    server.kubectl_ok(&["delete", "pdb", "web"]);
    server.kubectl_ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--max-unavailable=1",
    ]);
    eventually(
        "the budget from the Deployment's scale",
        TIMEOUT,
        || async {
            let r = row(&server, &["get", "pdb", "web"], "web")?;
            (r[1..4] == ["N/A", "1", "1"]).then_some(())
        },
    )
    .await;
    assert_eq!(
        jsonpath(&server, &["get", "pdb", "web"], "{.status.expectedPods}"),
        "2"
    );
}

fn deployment_in(ns: &str, name: &str, image: &str, args: &[&str]) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image, "args": args}]}
            }
        }
    })
}

fn service_in(ns: &str, name: &str, port: u16, node_port: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "selector": {"app": name},
            "ports": [{"port": port, "targetPort": port}]
        }
    })
}

/// J10: the multi-tier SayThx in its own namespace; the tiers find each
/// other by Service name through cluster DNS, the frontend is reached on
/// its NodePort, and a tier scales.
#[tokio::test]
async fn j10_saythx_tiers_find_each_other_by_name() {
    let server = cluster().await;
    server.build_example_images();
    assert_eq!(
        server.kubectl_ok(&["create", "namespace", "work"]),
        "namespace/work created\n"
    );
    let image = "kubox.local/saythx:1.0";
    for manifest in [
        deployment_in("work", "saythx-redis", "kubox.local/redis:7", &[]),
        service_in("work", "saythx-redis", 6379, false),
        deployment_in("work", "saythx-backend", image, &["backend"]),
        service_in("work", "saythx-backend", 8080, false),
        deployment_in("work", "saythx-work", image, &["work"]),
        deployment_in("work", "saythx-frontend", image, &["frontend"]),
        service_in("work", "saythx-frontend", 80, true),
    ] {
        server.apply_json(&manifest);
    }
    eventually("every tier to be ready", TIMEOUT, || async {
        let deploys = rows(&server, &["get", "deploy", "-n", "work"]);
        (deploys.len() == 5 && deploys[1..].iter().all(|r| r[1] == "1/1")).then_some(())
    })
    .await;
    let svc = row(&server, &["get", "svc", "-n", "work"], "saythx-frontend").unwrap();
    let node_port = svc[4]
        .strip_prefix("80:")
        .and_then(|p| p.strip_suffix("/TCP"))
        .unwrap()
        .to_owned();
    let base = format!("http://127.0.0.1:{node_port}");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    eventually("the frontend's page on its NodePort", TIMEOUT, || async {
        curl(&[&format!("{base}/")])
            .contains("Say Thanks")
            .then_some(())
    })
    .await;
    // The frontend finds the backend, and the backend redis, by name.
    eventually(
        "the backend's ranking through the frontend",
        TIMEOUT,
        || async {
            (curl(&[&format!("{base}/api/v1/list")]) == r#"{"HonorDatas":null}"#).then_some(())
        },
    )
    .await;
    curl(&["-d", "name=kubox", &format!("{base}/api/v1/submit")]);
    eventually("the worker to count the thank-you", TIMEOUT, || async {
        (curl(&[&format!("{base}/api/v1/list")])
            == r#"{"HonorDatas":[{"Name":"kubox","Score":1}]}"#)
            .then_some(())
    })
    .await;

    server.kubectl_ok(&[
        "scale",
        "deploy/saythx-backend",
        "-n",
        "work",
        "--replicas=2",
    ]);
    eventually("two backends", TIMEOUT, || async {
        let r = row(&server, &["get", "deploy", "-n", "work"], "saythx-backend")?;
        (r[1] == "2/2").then_some(())
    })
    .await;
    assert_eq!(
        curl(&[&format!("{base}/api/v1/list")]),
        r#"{"HonorDatas":[{"Name":"kubox","Score":1}]}"#
    );
}

/// `helm args` against the server's cluster, with Helm's own state in the
/// test's data directory; its stdout once it succeeds.
fn helm_ok(server: &KuboxServer, args: &[&str]) -> String {
    let home = server.data_dir().join("helm");
    let out = Command::new("helm")
        .args(args)
        .env("KUBECONFIG", server.kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// J12: SayThx as a Helm chart (examples/saythx): create, template,
/// install and reach it the way its NOTES say, upgrade, roll back,
/// package and uninstall, with stock Helm 3.
#[tokio::test]
async fn j12_saythx_chart_is_installed_with_helm() {
    let server = cluster().await;
    server.build_example_images();
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/saythx");
    let scratch = server.data_dir().join("charts");
    std::fs::create_dir_all(&scratch).unwrap();
    let scratch = scratch.to_str().unwrap();

    let created = Command::new("helm")
        .args(["create", "saythx"])
        .current_dir(scratch)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&created.stdout),
        "Creating saythx\n"
    );
    for file in [
        "Chart.yaml",
        "values.yaml",
        ".helmignore",
        "templates/NOTES.txt",
    ] {
        assert!(
            std::path::Path::new(scratch)
                .join("saythx")
                .join(file)
                .exists(),
            "helm create made no {file}"
        );
    }

    let rendered = helm_ok(&server, &["template", "saythx", chart]);
    assert!(rendered.contains("name: saythx-backend\n  namespace: work\n"));
    assert!(rendered.contains("type: NodePort"));

    let installed = helm_ok(&server, &["install", "saythx", chart]);
    for line in [
        "NAME: saythx",
        "NAMESPACE: default",
        "STATUS: deployed",
        "REVISION: 1",
        "  export NODE_PORT=$(kubectl get --namespace work -o jsonpath=\"{.spec.ports[0].nodePort}\" services saythx-frontend)",
    ] {
        assert!(
            installed.lines().any(|l| l == line),
            "no {line:?} in {installed}"
        );
    }
    eventually("every tier to be ready", TIMEOUT, || async {
        let deploys = rows(&server, &["get", "deploy", "-n", "work"]);
        (deploys.len() == 5 && deploys[1..].iter().all(|r| r[1] == "1/1")).then_some(())
    })
    .await;

    // The NOTES' commands, as the guide runs them.
    let node_port = jsonpath(
        &server,
        &["get", "--namespace", "work", "services", "saythx-frontend"],
        "{.spec.ports[0].nodePort}",
    );
    let node_ip = jsonpath(
        &server,
        &["get", "nodes", "--namespace", "work"],
        "{.items[0].status.addresses[0].address}",
    );
    let url = format!("http://{node_ip}:{node_port}");
    eventually(
        "the frontend's page at the NOTES' address",
        TIMEOUT,
        || async {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "5", &url])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .contains("Say Thanks")
                .then_some(())
        },
    )
    .await;

    let releases = helm_ok(&server, &["list"]);
    let release = releases.lines().nth(1).unwrap_or_default();
    assert!(
        release.starts_with("saythx")
            && release.contains("deployed")
            && release.contains("saythx-0.1.0"),
        "helm list: {releases}"
    );

    helm_ok(
        &server,
        &["upgrade", "saythx", chart, "--set", "backend.replicas=2"],
    );
    eventually("two backends after the upgrade", TIMEOUT, || async {
        let r = row(&server, &["get", "deploy", "-n", "work"], "saythx-backend")?;
        (r[1] == "2/2").then_some(())
    })
    .await;
    assert_eq!(
        helm_ok(&server, &["rollback", "saythx", "1"]),
        "Rollback was a success! Happy Helming!\n"
    );
    eventually("one backend after the rollback", TIMEOUT, || async {
        let r = row(&server, &["get", "deploy", "-n", "work"], "saythx-backend")?;
        (r[1] == "1/1" && r[2] == "1").then_some(())
    })
    .await;
    let history = helm_ok(&server, &["history", "saythx"]);
    assert_eq!(history.lines().count(), 4, "helm history: {history}");

    assert_eq!(
        helm_ok(&server, &["package", chart, "-d", scratch]),
        format!("Successfully packaged chart and saved it to: {scratch}/saythx-0.1.0.tgz\n")
    );

    assert_eq!(
        helm_ok(&server, &["uninstall", "saythx"]),
        "release \"saythx\" uninstalled\n"
    );
    eventually("the chart's namespace to go", TIMEOUT, || async {
        let out = server.kubectl(&["get", "namespace", "work"]);
        (!out.status.success()).then_some(())
    })
    .await;
    assert_eq!(helm_ok(&server, &["list", "-q"]), "");
}
