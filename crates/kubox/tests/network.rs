//! The cluster network end to end: real pods on the pod network, real
//! Services programmed by the proxy, real traffic, on one node and on two
//! (the second in a network namespace of its own, like a second host).
//! Every address involved is on this machine: pod, service and node
//! addresses live in namespaces these tests (or the agents) make.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use kubox_testkit::{KuboxServer, TestNet, eventually, free_port, import_busybox, node};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(60);
/// A Service without endpoints rejects at once; a dropped SYN would leave
/// the client waiting for its connect timeout (a minute or more), so this
/// tells them apart even on a loaded machine.
const REFUSED_AT_ONCE: Duration = Duration::from_secs(5);

fn apply(server: &KuboxServer, manifest: &Value) {
    let file = server.data_dir().join(format!(
        "{}-{}.json",
        manifest["kind"].as_str().unwrap(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&file, manifest.to_string()).unwrap();
    server.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
}

fn get(server: &KuboxServer, kind: &str, name: &str) -> Value {
    serde_json::from_str(&server.kubectl_ok(&["get", kind, name, "-o", "json"])).unwrap()
}

/// A busybox httpd answering its own name on port 8080 (named `http`),
/// ready once it listens. As PID 1 it ignores SIGTERM, so a deleted one
/// keeps serving through its grace period: traffic must leave it by the
/// proxy's doing alone.
fn web_pod(name: &str, labels: Value, node: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", format!("echo {name} > /tmp/index.html && exec httpd -f -p 8080 -h /tmp")],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
        },
    })
}

fn sleeper(name: &str, labels: Value, node: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    })
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

/// Waits until the pod is Ready and returns its address.
async fn ready_ip(server: &KuboxServer, name: &str) -> String {
    eventually(&format!("pod {name} ready"), TIMEOUT, || async {
        let out = server.kubectl(&["get", "pod", name, "-o", "json"]);
        let pod: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = pod["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = pod["status"]["podIP"].as_str()?.to_owned();
        ready.then_some(ip)
    })
    .await
}

fn cluster_ip(server: &KuboxServer, svc: &str) -> String {
    get(server, "service", svc)["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The body of `GET /` at `addr`, over HTTP/1.0.
fn http(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body.trim().to_owned())
}

/// Asks `addr` until every one of `names` has answered.
async fn all_answer(what: &str, addr: &str, names: &[&str]) {
    let mut seen: Vec<String> = Vec::new();
    eventually(what, TIMEOUT, || {
        if let Ok(body) = http(addr)
            && !seen.contains(&body)
        {
            seen.push(body);
        }
        let done = names.iter().all(|n| seen.iter().any(|s| s == n));
        async move { done.then_some(()) }
    })
    .await;
}

/// What `wget -qO- URL` prints from inside a pod (a failure prints nothing).
fn wget_in(server: &KuboxServer, pod: &str, url: &str) -> String {
    let out = server.kubectl(&["exec", pod, "--", "timeout", "3", "wget", "-qO-", url]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Asks `url` from inside `pod` until every one of `names` has answered.
async fn all_answer_in(server: &KuboxServer, pod: &str, url: &str, names: &[&str]) {
    let mut seen: Vec<String> = Vec::new();
    eventually(
        &format!("{names:?} answer {url} from {pod}"),
        TIMEOUT,
        || {
            let body = wget_in(server, pod, url);
            if !seen.contains(&body) {
                seen.push(body);
            }
            let done = names.iter().all(|n| seen.iter().any(|s| s == n));
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// The pod's network namespace file, under its node's data directory.
fn netns_of(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("agent/pods").join(uid).join("ns/net")
}

/// A UDP socket bound inside the network namespace at `netns`: the test
/// answers for a pod, since busybox has no UDP server. Each datagram is
/// answered with `reply`.
fn udp_echo_in(netns: PathBuf, port: u16, reply: &'static str) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if &buf[..n] == b"quit" {
                return;
            }
            let _ = socket.send_to(reply.as_bytes(), from);
        }
    });
    rx.recv().unwrap();
    thread
}

#[tokio::test]
async fn pods_and_services_carry_traffic_on_one_node() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.import_busybox();
    apply(
        &server,
        &web_pod("a", json!({"app": "web", "name": "a"}), None),
    );
    apply(
        &server,
        &web_pod("b", json!({"app": "web", "name": "b"}), None),
    );
    apply(&server, &sleeper("client", json!({"app": "client"}), None));
    apply(&server, &sleeper("udp", json!({"app": "udp"}), None));
    let ip_a = ready_ip(&server, "a").await;
    let ip_b = ready_ip(&server, "b").await;
    ready_ip(&server, "client").await;
    let net: ipnet::Ipv4Net = server.net().cluster_cidr().parse().unwrap();
    for ip in [&ip_a, &ip_b] {
        assert!(
            net.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{ip} in {net}"
        );
    }
    assert_ne!(ip_a, ip_b);

    // Pod to pod, and the node to a pod.
    assert_eq!(
        wget_in(&server, "client", &format!("http://{ip_b}:8080/")),
        "b"
    );
    assert_eq!(http(&format!("{ip_a}:8080")).unwrap(), "a");

    // A NodePort Service whose targetPort is the pods' port name.
    apply(
        &server,
        &service(
            "web",
            json!({"type": "NodePort", "selector": {"app": "web"},
                   "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
        ),
    );
    let web = cluster_ip(&server, "web");
    let mut expected = [format!("{ip_a}:8080"), format!("{ip_b}:8080")];
    expected.sort();
    let shown = expected.join(",");
    eventually("kubectl get endpoints lists both pods", TIMEOUT, || async {
        let out = server.kubectl_ok(&["get", "endpoints", "web"]);
        out.contains(&shown).then_some(())
    })
    .await;
    let described = server.kubectl_ok(&["describe", "service", "web"]);
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Endpoints:") && l.contains(&shown)),
        "{described}"
    );
    let slices = server.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io",
        "-o",
        "json",
    ]);
    let slices: Value = serde_json::from_str(&slices).unwrap();
    let slice = &slices["items"][0];
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["name"], "web");
    assert!(
        slice["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
            .is_string()
    );
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);

    // Through the ClusterIP, both pods answer: from a pod and from the node.
    all_answer_in(&server, "client", &format!("http://{web}/"), &["a", "b"]).await;
    all_answer(
        "both pods through the ClusterIP",
        &format!("{web}:80"),
        &["a", "b"],
    )
    .await;
    // The NodePort, on loopback and on another address of the node.
    let svc = get(&server, "service", "web");
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    all_answer(
        "the NodePort on 127.0.0.1",
        &format!("127.0.0.1:{node_port}"),
        &["a", "b"],
    )
    .await;
    let gateway = kubox_net::gateway(
        &get(&server, "node", "node")["spec"]["podCIDR"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    all_answer(
        "the NodePort on the bridge's address",
        &format!("{gateway}:{node_port}"),
        &["a", "b"],
    )
    .await;

    // Hairpin: a pod reaching itself through its own Service.
    apply(
        &server,
        &service(
            "self",
            json!({"selector": {"name": "a"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        ),
    );
    let own = cluster_ip(&server, "self");
    all_answer_in(&server, "a", &format!("http://{own}/"), &["a"]).await;

    // Session affinity: once it answered, the same pod answers every time.
    apply(
        &server,
        &service(
            "sticky",
            json!({"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}},
                   "ports": [{"port": 80, "targetPort": 8080}]}),
        ),
    );
    let sticky = format!("{}:80", cluster_ip(&server, "sticky"));
    let first = eventually("the sticky service answers", TIMEOUT, || async {
        http(&sticky).ok()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            http(&sticky).unwrap(),
            first,
            "ClientIP affinity keeps one pod"
        );
    }

    // No endpoints: refused at once, from the node and from a pod.
    apply(
        &server,
        &service(
            "empty",
            json!({"selector": {"app": "nothing"}, "ports": [{"port": 80}]}),
        ),
    );
    let empty = format!("{}:80", cluster_ip(&server, "empty"));
    // Until its rules are in, the address is an unallocated one (dropped).
    eventually("the empty service refuses", TIMEOUT, || async {
        matches!(http(&empty), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
            .then_some(())
    })
    .await;
    let started = Instant::now();
    let err = http(&empty).unwrap_err();
    let refused = started.elapsed();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(refused < REFUSED_AT_ONCE, "refused after {refused:?}");
    let out = server.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("time wget -qO- http://{empty}/"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    let real = stderr
        .lines()
        .find_map(|l| l.strip_prefix("real\t0m "))
        .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time in {stderr}"));
    assert!(
        real < REFUSED_AT_ONCE.as_secs_f64(),
        "a pod waited {real}s to be refused"
    );

    // UDP: datagrams through a ClusterIP reach the pod and come back.
    apply(
        &server,
        &service(
            "dns",
            json!({"selector": {"app": "udp"},
            "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}),
        ),
    );
    let udp_uid = get(&server, "pod", "udp")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let echo = udp_echo_in(netns_of(server.data_dir(), &udp_uid), 5353, "pong");
    let dns = format!("{}:53", cluster_ip(&server, "dns"));
    let client = UdpSocket::bind("0.0.0.0:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    eventually("a UDP answer through the ClusterIP", TIMEOUT, || {
        let _ = client.send_to(b"ping", &dns);
        let mut buf = [0u8; 16];
        let got = client.recv(&mut buf).ok().map(|n| buf[..n].to_vec());
        async move { (got.as_deref() == Some(b"pong")).then_some(()) }
    })
    .await;
    let _ = UdpSocket::bind("0.0.0.0:0").unwrap().send_to(
        b"quit",
        format!(
            "{}:5353",
            get(&server, "pod", "udp")["status"]["podIP"]
                .as_str()
                .unwrap()
        ),
    );
    echo.join().unwrap();

    // A LoadBalancer gets the node's address; a second on the same port waits.
    let lb_port = 28080;
    apply(
        &server,
        &service(
            "lb",
            json!({"type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [{"port": lb_port, "targetPort": 8080}]}),
        ),
    );
    eventually("EXTERNAL-IP is the node's address", TIMEOUT, || async {
        let out = server.kubectl_ok(&["get", "service", "lb"]);
        let row = out.lines().nth(1)?.split_whitespace().nth(3)?.to_owned();
        (row == "127.0.0.1").then_some(())
    })
    .await;
    all_answer(
        "the load balancer's address",
        &format!("127.0.0.1:{lb_port}"),
        &["a", "b"],
    )
    .await;
    apply(
        &server,
        &service(
            "lb-same-port",
            json!({"type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [{"port": lb_port, "targetPort": 8080}]}),
        ),
    );
    apply(
        &server,
        &service(
            "lb-other-port",
            json!({"type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [{"port": lb_port + 1, "targetPort": 8080}]}),
        ),
    );
    eventually(
        "the later load balancer gets its address",
        TIMEOUT,
        || async {
            get(&server, "service", "lb-other-port")["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(drop)
        },
    )
    .await;
    let out = server.kubectl_ok(&["get", "service", "lb-same-port"]);
    assert!(
        out.contains("<pending>"),
        "a port taken by an older balancer: {out}"
    );
}

#[tokio::test]
async fn connections_through_a_service_outlive_a_server_restart() {
    let mut server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.import_busybox();
    apply(&server, &web_pod("web", json!({"app": "web"}), None));
    apply(
        &server,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "echo", "labels": {"app": "echo"}},
            "spec": {"containers": [{
                "name": "echo", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["nc", "-ll", "-p", "7000", "-e", "cat"],
                "readinessProbe": {"tcpSocket": {"port": 7000}, "periodSeconds": 1},
            }]},
        }),
    );
    ready_ip(&server, "web").await;
    ready_ip(&server, "echo").await;
    apply(
        &server,
        &service(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        ),
    );
    apply(
        &server,
        &service(
            "echo",
            json!({"selector": {"app": "echo"}, "ports": [{"port": 7000}]}),
        ),
    );
    let web = format!("{}:80", cluster_ip(&server, "web"));
    let echo: SocketAddr = format!("{}:7000", cluster_ip(&server, "echo"))
        .parse()
        .unwrap();
    all_answer("the web Service answers", &web, &["web"]).await;
    let echoes = |conn: &mut TcpStream, line: &[u8]| {
        conn.write_all(line)?;
        let mut back = vec![0; line.len()];
        conn.read_exact(&mut back)?;
        Ok::<_, std::io::Error>(back == line)
    };
    let mut conn = eventually("the echo Service answers", TIMEOUT, || async {
        let mut conn = TcpStream::connect_timeout(&echo, Duration::from_secs(2)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        echoes(&mut conn, b"before\n").ok()?.then_some(conn)
    })
    .await;

    // New connections keep being made while the server is down and while
    // it comes back: the rules in the kernel carry them throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = std::thread::spawn({
        let (stop, web) = (stop.clone(), web.clone());
        move || {
            let mut failures = Vec::new();
            let mut tries = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tries += 1;
                match http(&web) {
                    Ok(body) if body == "web" => {}
                    other => failures.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (tries, failures)
        }
    });
    let log = server.data_dir().join("server.log");
    let full_syncs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("service rules written")
            .count()
    };
    let before = full_syncs();
    server.restart().await;
    // The window closes once the new proxy has rewritten its whole table.
    eventually(
        "the restarted proxy rewrites its rules",
        TIMEOUT,
        || async { (full_syncs() > before).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, failures) = prober.join().unwrap();
    assert!(tries > 10, "only {tries} connections were tried");
    assert!(
        failures.is_empty(),
        "{} of {tries} new connections failed across the restart: {failures:?}",
        failures.len()
    );
    assert!(
        echoes(&mut conn, b"after the restart\n").unwrap(),
        "the connection made before the restart no longer echoes"
    );
}

#[tokio::test]
async fn a_deleted_pods_address_leaves_the_rules_within_a_second() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.import_busybox();
    apply(&server, &web_pod("stays", json!({"app": "web"}), None));
    apply(&server, &web_pod("goes", json!({"app": "web"}), None));
    ready_ip(&server, "stays").await;
    ready_ip(&server, "goes").await;
    apply(
        &server,
        &service(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        ),
    );
    let web = format!("{}:80", cluster_ip(&server, "web"));
    all_answer("both pods", &web, &["stays", "goes"]).await;
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let deleted = Instant::now();
    pods.delete("goes", &DeleteParams::default()).await.unwrap();
    let deadline = deleted + Duration::from_secs(1);
    let mut last_seen = None;
    let mut after_deadline = 0;
    while Instant::now() < deadline + Duration::from_secs(1) {
        // The deleted pod goes on serving through its grace period.
        match http(&web).as_deref() {
            Ok("goes") => last_seen = Some(deleted.elapsed()),
            Ok("stays") if Instant::now() > deadline => after_deadline += 1,
            _ => {}
        }
    }
    if let Some(at) = last_seen {
        assert!(
            at < Duration::from_secs(1),
            "the deleted pod still got traffic {at:?} after its deletion"
        );
    }
    assert!(
        after_deadline >= 20,
        "only {after_deadline} answers after the deadline"
    );
    let out = server.kubectl_ok(&[
        "get",
        "pod",
        "goes",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(
        !out.is_empty(),
        "the pod was still terminating, so still serving, throughout"
    );
}

#[tokio::test]
async fn nodes_get_ranges_of_their_own_and_cluster_ips_are_checked() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    for n in ["n1", "n2", "n3"] {
        apply(
            &server,
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}),
        );
    }
    let range = |n: &'static str| {
        let server = &server;
        move || async move {
            let out = server.kubectl(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
            let r = String::from_utf8_lossy(&out.stdout).into_owned();
            (!r.is_empty()).then_some(r)
        }
    };
    let mut ranges = Vec::new();
    for n in ["n1", "n2", "n3"] {
        ranges.push(eventually("a podCIDR", TIMEOUT, range(n)).await);
    }
    let cidr: ipnet::Ipv4Net = server.net().cluster_cidr().parse().unwrap();
    for r in &ranges {
        let r: ipnet::Ipv4Net = r.parse().unwrap();
        assert_eq!(r.prefix_len(), 24);
        assert!(cidr.contains(&r), "{r} in {cidr}");
    }
    let mut unique = ranges.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ranges:?}");
    let n2 = get(&server, "node", "n2");
    assert_eq!(n2["spec"]["podCIDRs"][0], n2["spec"]["podCIDR"]);
    // A node's range is free again once the node is gone.
    server.kubectl_ok(&["delete", "node", "n2"]);
    apply(
        &server,
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n4"}}),
    );
    assert_eq!(
        eventually("n4's range", TIMEOUT, range("n4")).await,
        ranges[1]
    );

    // ClusterIPs: outside the range, or taken.
    let refused = |manifest: Value| {
        let file = server.data_dir().join("refused.json");
        std::fs::write(&file, manifest.to_string()).unwrap();
        let out = server.kubectl(&["create", "-f", file.to_str().unwrap()]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(service(
        "outside",
        json!({"clusterIP": "10.44.0.5", "ports": [{"port": 80}]}),
    ));
    assert!(
        stderr.contains("The Service \"outside\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.44.0.5\"}: failed to allocate IP 10.44.0.5: the provided IP (10.44.0.5) is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
        "{stderr}"
    );
    let stderr = refused(service(
        "taken",
        json!({"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}),
    ));
    assert!(
        stderr.contains("failed to allocate IP 10.43.0.1: provided IP is already allocated"),
        "{stderr}"
    );
    // The kubernetes Service points at the API server.
    let endpoints = server.kubectl_ok(&["get", "endpoints", "kubernetes"]);
    assert!(
        endpoints.contains(&format!("127.0.0.1:{}", server.port())),
        "{endpoints}"
    );
}

#[tokio::test]
async fn the_proxy_restores_its_table_and_uninstall_removes_the_network() {
    let server =
        KuboxServer::start(KUBOX, &["--node-name", "node", "--proxy-sync-period", "1s"]).await;
    let table = format!("{}-proxy", server.net().nft_prefix());
    let bridge = server.net().bridge();
    let exists = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap()
            .status
            .success()
    };
    eventually("the proxy's table", TIMEOUT, || async {
        exists(&["nft", "list", "table", "ip", &table]).then_some(())
    })
    .await;
    eventually("the bridge", TIMEOUT, || async {
        exists(&["ip", "link", "show", &bridge]).then_some(())
    })
    .await;
    assert!(exists(&["nft", "delete", "table", "ip", &table]));
    let back = Instant::now();
    eventually("the table back", Duration::from_secs(10), || async {
        let out = Command::new("nft")
            .args(["list", "table", "ip", &table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .contains("10.43.0.1 . tcp . 443")
            .then_some(())
    })
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "restored after {:?}",
        back.elapsed()
    );
    let pods_table = format!("{}-pods", server.net().nft_prefix());
    drop(server);
    for args in [
        vec!["nft", "list", "table", "ip", table.as_str()],
        vec!["nft", "list", "table", "ip", pods_table.as_str()],
        vec!["ip", "link", "show", bridge.as_str()],
        vec!["ip", "link", "show", &format!("{bridge}-vx")],
    ] {
        assert!(!exists(&args), "{args:?} is still there");
    }
}

/// A second node: a network namespace joined to this one by a veth pair
/// (one L2 segment), with `kubox agent` running inside it.
struct SecondNode {
    netns: String,
    host_link: String,
    dir: tempfile::TempDir,
    agent: Option<Child>,
    _names: TestNet,
}

impl SecondNode {
    /// The namespace and link, before any server starts; the node's own
    /// address is `.2` and this namespace's `.1` of `subnet()`.
    fn prepare() -> Self {
        let names = TestNet::claim();
        let node = Self {
            netns: format!("kbxn{}", names.slot()),
            host_link: format!("kbxv{}", names.slot()),
            dir: tempfile::tempdir().unwrap(),
            agent: None,
            _names: names,
        };
        let peer = format!("kbxw{}", node._names.slot());
        let _ = Command::new("ip")
            .args(["netns", "del", &node.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &node.host_link])
            .output();
        let (host_ip, node_ip) = (
            format!("{}.1/24", node.subnet()),
            format!("{}.2/24", node.subnet()),
        );
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", &node.netns],
            vec![
                "ip",
                "link",
                "add",
                &node.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            vec!["ip", "link", "set", &peer, "netns", &node.netns],
            vec!["ip", "addr", "add", &host_ip, "dev", &node.host_link],
            vec!["ip", "link", "set", &node.host_link, "up"],
            vec![
                "ip",
                "-n",
                &node.netns,
                "addr",
                "add",
                &node_ip,
                "dev",
                &peer,
            ],
            vec!["ip", "-n", &node.netns, "link", "set", &peer, "up"],
            vec!["ip", "-n", &node.netns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new(step[0]).args(&step[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{step:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        node
    }

    fn subnet(&self) -> String {
        format!("192.168.{}", 100 + self._names.slot())
    }

    fn host_ip(&self) -> String {
        format!("{}.1", self.subnet())
    }

    fn node_ip(&self) -> String {
        format!("{}.2", self.subnet())
    }

    /// Starts `kubox agent` in the namespace, as node `name` of `server`'s
    /// cluster. nsenter changes only the network namespace (`ip netns exec`
    /// would also remount /sys, hiding the cgroup hierarchies runc needs).
    fn start_agent(&mut self, server: &KuboxServer, name: &str) {
        import_busybox(
            Path::new(KUBOX),
            self.dir.path(),
            "docker.io/library/busybox:latest",
        );
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(KUBOX)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--node-name", name, "--node-ip", &self.node_ip()])
            .args(["--agent-port", &free_port().to_string()])
            .args(server.net().args())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }
}

impl Drop for SecondNode {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        node::release(self.dir.path());
        // Its bridge, veths, VXLAN device and tables go with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

#[tokio::test]
async fn pods_on_two_nodes_reach_each_other_and_services_span_both() {
    let mut second = SecondNode::prepare();
    let host_ip = second.host_ip();
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--node-name",
            "node-a",
            "--node-ip",
            &host_ip,
            "--bind-address",
            &host_ip,
        ],
    )
    .await;
    server.import_busybox();
    second.start_agent(&server, "node-b");
    eventually("node-b ready with a range", TIMEOUT, || async {
        let out = server.kubectl(&["get", "node", "node-b", "-o", "json"]);
        let node: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (ready && node["spec"]["podCIDR"].is_string()).then_some(())
    })
    .await;
    apply(
        &server,
        &web_pod("a", json!({"app": "web"}), Some("node-a")),
    );
    apply(
        &server,
        &web_pod("b", json!({"app": "web"}), Some("node-b")),
    );
    apply(
        &server,
        &sleeper("client", json!({"app": "client"}), Some("node-a")),
    );
    let ip_a = ready_ip(&server, "a").await;
    let ip_b = ready_ip(&server, "b").await;
    ready_ip(&server, "client").await;
    let range = |n: &str| -> ipnet::Ipv4Net {
        get(&server, "node", n)["spec"]["podCIDR"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(range("node-a").contains(&ip_a.parse::<std::net::Ipv4Addr>().unwrap()));
    assert!(range("node-b").contains(&ip_b.parse::<std::net::Ipv4Addr>().unwrap()));

    // Across nodes, both ways, and from node-a itself.
    assert_eq!(
        eventually("client reaches b on node-b", TIMEOUT, || async {
            let body = wget_in(&server, "client", &format!("http://{ip_b}:8080/"));
            (!body.is_empty()).then_some(body)
        })
        .await,
        "b"
    );
    assert_eq!(wget_in(&server, "b", &format!("http://{ip_a}:8080/")), "a");
    assert_eq!(http(&format!("{ip_b}:8080")).unwrap(), "b");

    // One Service over pods on both nodes, from a pod on either node.
    apply(
        &server,
        &service(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        ),
    );
    let web = cluster_ip(&server, "web");
    all_answer_in(&server, "client", &format!("http://{web}/"), &["a", "b"]).await;
    all_answer_in(&server, "b", &format!("http://{web}/"), &["a", "b"]).await;
}
