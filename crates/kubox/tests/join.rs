//! Nodes joining with tokens: bootstrap tokens authenticating as upstream's
//! (and expiring), `kubox token create`, and `kubox agent --server --token`
//! on other "hosts" (network namespaces on a bridge, `kubox_testkit::Hosts`):
//! the CA checked by the token's hash, the node certificate from an
//! auto-approved CertificateSigningRequest, kept across restarts and
//! renewed, a node name held by its first machine, and a cluster of three
//! nodes running one Deployment with Services and DNS across them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kubox_testkit::{Hosts, KuboxServer, eventually, import_busybox};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(90);

/// kubectl with no kubeconfig: the server and CA given, and a bearer token
/// when `token` is.
fn kubectl_as(server: &KuboxServer, token: Option<&str>, args: &[&str]) -> std::process::Output {
    // The admin kubeconfig names the address the server listens on, which
    // is not loopback when it is bound to a hosts' bridge.
    let admin = std::fs::read_to_string(server.data_dir().join("admin.kubeconfig")).unwrap();
    let url = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the admin kubeconfig names the server");
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", server.data_dir().join("none"))
        .arg(format!("--server={url}"))
        .arg(format!(
            "--certificate-authority={}",
            server.data_dir().join("pki/ca.crt").display()
        ));
    if let Some(token) = token {
        cmd.arg(format!("--token={token}"));
    }
    cmd.args(args).output().unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// kubeadm's documented way to compute `--discovery-token-ca-cert-hash`.
fn openssl_ca_hash(ca: &Path) -> String {
    let script = format!(
        "openssl x509 -pubkey -in {} | openssl pkey -pubin -outform der | sha256sum",
        ca.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    stdout(&out).split(' ').next().unwrap().to_owned()
}

fn token_create(server: &KuboxServer, ttl: &str) -> String {
    let out = Command::new(KUBOX)
        .args(["token", "create", "--ttl", ttl, "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "kubox token create: {}", stderr(&out));
    stdout(&out)
}

/// The bootstrap token (`<id>.<secret>`) of a join token.
fn bootstrap_part(join: &str) -> &str {
    join.rsplit_once("::").unwrap().1
}

#[tokio::test]
async fn bootstrap_tokens_authenticate_as_bootstrappers_until_they_expire() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let join = server.join_token().await;
    let mode = std::fs::metadata(server.data_dir().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ca_hash = openssl_ca_hash(&server.data_dir().join("pki/ca.crt"));
    assert!(
        join.starts_with(&format!("K10{ca_hash}::")),
        "{join} embeds the CA hash {ca_hash}"
    );

    // A made token: the bearer is system:bootstrap:<id>, a bootstrapper.
    let made = token_create(&server, "1h");
    assert!(made.starts_with(&format!("K10{ca_hash}::")), "{made}");
    let token = bootstrap_part(&made);
    let id = token.split('.').next().unwrap();
    let whoami = kubectl_as(&server, Some(token), &["auth", "whoami", "-o", "json"]);
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    let review: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"],
        format!("system:bootstrap:{id}")
    );
    // As upstream's bootstrap token authenticator: no uid, no extra.
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": format!("system:bootstrap:{id}"), "groups": ["system:bootstrappers", "system:authenticated"]})
    );
    let secret = server.kubectl_ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
        "-o",
        "jsonpath={.type} {.data.expiration}",
    ]);
    assert!(
        secret.starts_with("bootstrap.kubernetes.io/token "),
        "{secret}"
    );
    let can = |args: &[&str]| stdout(&kubectl_as(&server, Some(token), args));
    assert_eq!(
        can(&["auth", "can-i", "create", "certificatesigningrequests"]),
        "yes"
    );
    assert_eq!(
        can(&[
            "auth",
            "can-i",
            "create",
            "certificatesigningrequests",
            "--subresource=nodeclient"
        ]),
        "yes"
    );
    assert_eq!(can(&["auth", "can-i", "list", "pods", "-A"]), "no");

    // Anyone may read cluster-info, which names the CA; nothing else.
    let anonymous = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(server.data_dir().join("pki/ca.crt"))
            .arg(format!("https://127.0.0.1:{}{path}", server.port()))
            .output()
            .unwrap();
        stdout(&out)
    };
    let info = anonymous("/api/v1/namespaces/kube-public/configmaps/cluster-info");
    assert!(info.ends_with("\n200"), "{info}");
    assert!(info.contains("certificate-authority-data:"), "{info}");
    let secrets = anonymous("/api/v1/namespaces/kube-system/secrets");
    assert!(secrets.ends_with("\n403"), "{secrets}");

    // A wrong secret, or an unknown id: 401.
    let wrong = format!("{id}.0000000000000000");
    for bad in [wrong.as_str(), "zzzzzz.0123456789abcdef"] {
        let out = kubectl_as(&server, Some(bad), &["get", "--raw", "/api"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    }

    // An expired token is refused, and the token cleaner deletes it.
    let expired = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": "bootstrap-token-abc123", "namespace": "kube-system"},
        "stringData": {
            "token-id": "abc123", "token-secret": "0123456789abcdef",
            "usage-bootstrap-authentication": "true", "expiration": "2020-01-01T00:00:00Z",
        },
    });
    server.apply_json(&expired);
    let out = kubectl_as(
        &server,
        Some("abc123.0123456789abcdef"),
        &["get", "--raw", "/api"],
    );
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    eventually("the expired token is deleted", TIMEOUT, || async {
        let out = server.kubectl(&[
            "get",
            "secret",
            "-n",
            "kube-system",
            "bootstrap-token-abc123",
        ]);
        stderr(&out).contains("NotFound").then_some(())
    })
    .await;
    // The unexpired one stays.
    let kept = server.kubectl(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ]);
    assert!(kept.status.success());
}

fn spawn_agent(
    hosts: &mut Hosts,
    i: usize,
    server: &KuboxServer,
    url: &str,
    token: &str,
    name: &str,
) {
    let host = hosts.host(i);
    let args = server.agent_join_args(url, token, host.ip(), name, host.data_dir());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host.spawn(Path::new(KUBOX), &args);
}

async fn log_says(hosts: &mut Hosts, i: usize, what: &str) {
    let host = hosts.host(i);
    eventually(
        &format!("host {i}'s log says {what:?}"),
        TIMEOUT,
        || async { host.log().contains(what).then_some(()) },
    )
    .await;
}

/// The CSRs: (requestor, condition as `kubectl get csr` shows it).
fn csrs(server: &KuboxServer) -> Vec<(String, String)> {
    let list: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "csr", "-o", "json"])).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|csr| {
            let mut condition: Vec<String> = csr["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["type"].as_str().unwrap().to_owned())
                .collect();
            if csr["status"]["certificate"].is_string() {
                condition.push("Issued".into());
            }
            if condition.is_empty() {
                condition.push("Pending".into());
            }
            (
                csr["spec"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                condition.join(","),
            )
        })
        .collect()
}

/// A server on the hosts' bridge, its node `node-a`.
async fn server_on(hosts: &Hosts, extra: &[&str]) -> (KuboxServer, String) {
    let gateway = hosts.gateway();
    let mut args = vec![
        "--node-name",
        "node-a",
        "--node-ip",
        &gateway,
        "--bind-address",
        &gateway,
    ];
    args.extend_from_slice(extra);
    let server = KuboxServer::start(KUBOX, &args).await;
    let url = format!("https://{gateway}:{}", server.port());
    (server, url)
}

#[tokio::test]
async fn agents_join_with_a_token_checked_against_the_ca_and_keep_their_names() {
    let mut hosts = Hosts::new(2);
    let (server, url) = server_on(&hosts, &[]).await;
    let join = server.join_token().await;
    let token = bootstrap_part(&join).to_owned();

    // A server whose CA is not the token's is never trusted.
    let other_ca = format!("K10{}::{token}", "0".repeat(64));
    spawn_agent(&mut hosts, 0, &server, &url, &other_ca, "node-b");
    log_says(&mut hosts, 0, "refusing to trust").await;
    log_says(&mut hosts, 0, "retrying in 2s").await;
    assert!(
        csrs(&server).is_empty(),
        "nothing was asked of an unverified server"
    );

    // The right CA but a wrong token: 401, retried.
    let hash = join.split("::").next().unwrap();
    let id = token.split('.').next().unwrap();
    let wrong = format!("{hash}::{id}.0000000000000000");
    spawn_agent(&mut hosts, 0, &server, &url, &wrong, "node-b");
    log_says(&mut hosts, 0, "401 Unauthorized").await;

    // The server's token: the node joins as system:node:node-b.
    spawn_agent(&mut hosts, 0, &server, &url, &join, "node-b");
    server.wait_node_ready("node-b").await;
    let kubeconfig = hosts.host(0).data_dir().join("agent/node.kubeconfig");
    let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let whoami = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&whoami), "system:node:node-b", "{}", stderr(&whoami));
    assert_eq!(
        csrs(&server),
        vec![(
            format!("system:bootstrap:{id}"),
            "Approved,Issued".to_owned()
        )]
    );

    // Restarted, it reuses its certificate: no new request.
    spawn_agent(&mut hosts, 0, &server, &url, &join, "node-b");
    log_says(&mut hosts, 0, "reusing the node's certificate").await;
    server.wait_node_ready("node-b").await;
    assert_eq!(csrs(&server).len(), 1);

    // Another machine claiming node-b is refused.
    spawn_agent(&mut hosts, 1, &server, &url, &join, "node-b");
    log_says(&mut hosts, 1, "already registered by another machine").await;
    assert!(csrs(&server).iter().any(|(_, c)| c == "Denied"));

    // An expired token: 401 too.
    let short = token_create(&server, "1s");
    eventually("the short token expires", TIMEOUT, || async {
        let out = kubectl_as(
            &server,
            Some(bootstrap_part(&short)),
            &["get", "--raw", "/api"],
        );
        stderr(&out).contains("Unauthorized").then_some(())
    })
    .await;
    spawn_agent(&mut hosts, 1, &server, &url, &short, "node-c");
    log_says(&mut hosts, 1, "401 Unauthorized").await;
}

/// A node client certificate request for `node` with a new key, as a
/// bootstrapping kubelet sends it.
fn node_csr(name: &str, node: &str) -> Value {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-keyout", "node.key", "-subj"])
        .arg(format!("/O=system:nodes/CN=system:node:{node}"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl req: {}", stderr(&out));
    json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&out.stdout),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    })
}

/// The CSR's Approved or Denied condition, once it has one.
async fn csr_decision(server: &KuboxServer, name: &str) -> String {
    let what = format!("CSR {name} decided");
    eventually(&what, TIMEOUT, || async {
        let out = server.kubectl_ok(&[
            "get",
            "csr",
            name,
            "-o",
            "jsonpath={.status.conditions[*].type}",
        ]);
        (!out.is_empty()).then_some(out)
    })
    .await
}

#[tokio::test]
async fn of_two_machines_claiming_one_new_name_at_once_one_is_denied() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    // One kubectl sends both, one right after the other.
    let files: Vec<String> = ["first", "second"]
        .iter()
        .map(|name| {
            let file = server.data_dir().join(format!("{name}.json"));
            std::fs::write(&file, node_csr(name, "twin").to_string()).unwrap();
            file.display().to_string()
        })
        .collect();
    server.kubectl_ok(&["create", "-f", &files[0], "-f", &files[1]]);
    let mut decisions = vec![
        csr_decision(&server, "first").await,
        csr_decision(&server, "second").await,
    ];
    decisions.sort();
    assert_eq!(decisions, ["Approved", "Denied"]);
    let claim = ["get", "secret", "-n", "kube-system", "twin.node-key.kubox"];

    // The node registers: it owns its claim, and its deletion drops it,
    // so another machine may take the name.
    server.apply_json(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "twin"}}));
    let uid = server.kubectl_ok(&["get", "node", "twin", "-o", "jsonpath={.metadata.uid}"]);
    let mut owned = claim.to_vec();
    owned.extend(["-o", "jsonpath={.metadata.ownerReferences[*].uid}"]);
    eventually("the Node owns its claim", TIMEOUT, || async {
        (server.kubectl_ok(&owned) == uid).then_some(())
    })
    .await;
    server.apply_json(&node_csr("third", "twin"));
    assert_eq!(csr_decision(&server, "third").await, "Denied");
    server.kubectl_ok(&["delete", "node", "twin"]);
    eventually("the claim is deleted with its Node", TIMEOUT, || async {
        stderr(&server.kubectl(&claim))
            .contains("NotFound")
            .then_some(())
    })
    .await;
    server.apply_json(&node_csr("fourth", "twin"));
    assert_eq!(csr_decision(&server, "fourth").await, "Approved");

    // A Node registered without a claim (the server's own, an agent given
    // a kubeconfig) is not handed to a joining machine.
    server.apply_json(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "own"}}));
    server.apply_json(&node_csr("fifth", "own"));
    assert_eq!(csr_decision(&server, "fifth").await, "Denied");
}

#[tokio::test]
async fn a_joined_node_renews_its_certificate_before_it_expires() {
    let mut hosts = Hosts::new(1);
    let (server, url) = server_on(&hosts, &["--cluster-signing-duration", "20s"]).await;
    let join = server.join_token().await;
    spawn_agent(&mut hosts, 0, &server, &url, &join, "node-b");
    server.wait_node_ready("node-b").await;
    log_says(&mut hosts, 0, "the node's certificate is renewed").await;
    eventually(
        "a renewal approved for the node itself",
        TIMEOUT,
        || async {
            csrs(&server)
                .iter()
                .any(|(who, c)| who == "system:node:node-b" && c == "Approved,Issued")
                .then_some(())
        },
    )
    .await;
    // Past the first certificate's end, the node still reports.
    let log = hosts.host(0).log();
    assert!(log.contains("restarting the node's components"), "{log}");
    server.wait_node_ready("node-b").await;
    let lease_renewed = || {
        server.kubectl_ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "node-b",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let before = lease_renewed();
    eventually(
        "the node's lease is renewed after rotation",
        TIMEOUT,
        || async { (lease_renewed() != before).then_some(()) },
    )
    .await;
}

/// A busybox httpd answering its pod's name on 8080.
fn web_deployment(replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                }]},
            },
        },
    })
}

#[tokio::test]
async fn three_nodes_run_a_deployment_with_services_and_dns_across_them() {
    let mut hosts = Hosts::new(2);
    let (server, url) = server_on(&hosts, &[]).await;
    server.import_busybox();
    let join = server.join_token().await;
    for (i, name) in [(0, "node-b"), (1, "node-c")] {
        let dir = hosts.host(i).data_dir().to_owned();
        import_busybox(Path::new(KUBOX), &dir, "docker.io/library/busybox:latest");
        spawn_agent(&mut hosts, i, &server, &url, &join, name);
    }
    for name in ["node-a", "node-b", "node-c"] {
        server.wait_node_ready(name).await;
    }
    server.apply_json(&web_deployment(6));
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    server.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=180s"]);
    let pods: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "json"]))
            .unwrap();
    let mut nodes: Vec<(String, String)> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap().to_owned(),
                p["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    nodes.sort();
    for node in ["node-a", "node-b", "node-c"] {
        assert!(
            nodes.iter().any(|(n, _)| n == node),
            "no pod on {node}: {nodes:?}"
        );
    }
    // From a pod on node-c, by the Service's DNS name, every pod answers,
    // whichever node it runs on.
    let client = &nodes.iter().find(|(n, _)| n == "node-c").unwrap().1;
    let names: Vec<&str> = nodes.iter().map(|(_, p)| p.as_str()).collect();
    let mut seen: Vec<String> = Vec::new();
    eventually(
        "every pod answers web.default.svc from node-c",
        Duration::from_secs(180),
        || {
            let out = server.kubectl(&[
                "exec",
                client,
                "--",
                "timeout",
                "3",
                "wget",
                "-qO-",
                "http://web.default.svc.cluster.local/",
            ]);
            let body = stdout(&out);
            if !body.is_empty() && !seen.contains(&body) {
                seen.push(body);
            }
            let done = names.iter().all(|n| seen.iter().any(|s| s == n));
            async move { done.then_some(()) }
        },
    )
    .await;

    // node-c leaves: drained (its pods start elsewhere), deleted, and its
    // machine cleaned with `kubox agent --uninstall`.
    server.kubectl_ok(&["drain", "node-c", "--ignore-daemonsets", "--timeout=120s"]);
    eventually(
        "six ready pods off node-c",
        Duration::from_secs(180),
        || async {
            let pods: Value = serde_json::from_str(
                &server.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "json"]),
            )
            .ok()?;
            let items = pods["items"].as_array()?;
            let ready = items
                .iter()
                .filter(|p| p["spec"]["nodeName"] != "node-c")
                .filter(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            (ready == 6 && items.iter().all(|p| p["spec"]["nodeName"] != "node-c")).then_some(())
        },
    )
    .await;
    hosts.host(1).kill();
    server.kubectl_ok(&["delete", "node", "node-c"]);
    let dir = hosts.host(1).data_dir().to_owned();
    let mut uninstall = vec![
        "agent".to_owned(),
        "--uninstall".into(),
        "--data-dir".into(),
    ];
    uninstall.push(dir.display().to_string());
    uninstall.extend(server.net().args());
    let uninstall: Vec<&str> = uninstall.iter().map(String::as_str).collect();
    hosts.host(1).spawn(Path::new(KUBOX), &uninstall);
    eventually("kubox agent --uninstall finishes", TIMEOUT, || {
        let done = hosts.host(1).exited();
        async move { done.then_some(()) }
    })
    .await;
    let log = hosts.host(1).log();
    assert!(
        log.contains("node network and credentials removed"),
        "{log}"
    );
    assert!(!dir.join("agent/node.kubeconfig").exists());
    let bridge = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", hosts.host(1).netns()))
        .args(["ip", "link", "show", &server.net().bridge()])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "the pod bridge is gone");
    // The machine joins again afresh under its old name.
    spawn_agent(&mut hosts, 1, &server, &url, &join, "node-c");
    server.wait_node_ready("node-c").await;
}

#[tokio::test]
async fn a_node_cut_off_has_its_pods_replaced_and_stops_them_when_it_returns() {
    let mut hosts = Hosts::new(1);
    let (server, url) = server_on(&hosts, &["--node-monitor-grace-period=10s"]).await;
    server.import_busybox();
    let join = server.join_token().await;
    let dir = hosts.host(0).data_dir().to_owned();
    import_busybox(Path::new(KUBOX), &dir, "docker.io/library/busybox:latest");
    spawn_agent(&mut hosts, 0, &server, &url, &join, "node-b");
    server.wait_node_ready("node-a").await;
    server.wait_node_ready("node-b").await;
    // Its pods tolerate an unreachable node for 5 s rather than 300 s; all
    // start on node-b.
    server.kubectl_ok(&["cordon", "node-a"]);
    let mut deployment = web_deployment(2);
    deployment["spec"]["template"]["spec"]["tolerations"] = json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
    ]);
    // httpd, the containers' PID 1, ignores SIGTERM: each stop waits out
    // the grace period.
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(5);
    server.apply_json(&deployment);
    server.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=180s"]);
    server.kubectl_ok(&["uncordon", "node-a"]);
    let per_pod = kubox_testkit::node::containers(&dir).len() / 2;
    assert!(per_pod > 0);
    // (name, node, terminating, ready) of the Deployment's pods.
    let pods = || -> Vec<(String, String, bool, bool)> {
        let list: Value = serde_json::from_str(
            &server.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "json"]),
        )
        .unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["metadata"]["deletionTimestamp"].is_string(),
                    ready,
                )
            })
            .collect()
    };

    hosts.host(0).set_link(false);
    eventually(
        "node-b's pods replaced on node-a",
        Duration::from_secs(180),
        || async {
            let on_a = pods()
                .iter()
                .filter(|(_, node, terminating, ready)| node == "node-a" && !terminating && *ready)
                .count();
            (on_a == 2).then_some(())
        },
    )
    .await;

    hosts.host(0).set_link(true);
    server.wait_node_ready("node-b").await;
    eventually(
        "node-b stops the replaced pods",
        Duration::from_secs(180),
        || async {
            let left_on_b = pods()
                .iter()
                .filter(|(_, node, ..)| node == "node-b")
                .count();
            (left_on_b == 0 && kubox_testkit::node::containers(&dir).is_empty()).then_some(())
        },
    )
    .await;
}
