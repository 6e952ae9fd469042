//! A highly available control plane: several `kubox server`s on one etcd
//! cluster share the cluster's secrets through the datastore, all serve the
//! API, elect one scheduler and controller manager, and survive losing a
//! server or an etcd member; a joined node follows them through its
//! client-side load balancer.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kubox_testkit::hollow::wait_nodes_ready;
use kubox_testkit::{EtcdCluster, EtcdProcess, HollowAgent, KuboxServer, eventually, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_kubox");
const TOKEN: &str = "a-shared-secret-for-the-test";

fn server_args<'a>(endpoints: &'a str, token: &'a str) -> Vec<&'a str> {
    vec![
        "--datastore",
        "etcd",
        "--etcd-endpoints",
        endpoints,
        "--token",
        token,
        "--disable-agent",
        "--disable-dns",
        // Shorter than upstream's 15 s so the test's 15 s for a takeover holds
        // with room on a loaded machine.
        "--leader-elect-lease-duration",
        "6s",
        "--leader-elect-renew-deadline",
        "4s",
        "--leader-elect-retry-period",
        "1s",
    ]
}

fn read(server: &KuboxServer, file: &str) -> Vec<u8> {
    std::fs::read(server.data_dir().join("pki").join(file)).expect("a pki file")
}

/// The `ip:port`s the `kubernetes` Endpoints list, sorted.
fn kubernetes_endpoints(server: &KuboxServer) -> Vec<String> {
    endpoints(server, "default", "kubernetes")
}

/// `ip ip .../port` lines as `ip:port`s, sorted.
fn ip_ports(lines: &[u8]) -> Vec<String> {
    let mut listed: Vec<String> = String::from_utf8_lossy(lines)
        .lines()
        .filter_map(|l| l.split_once('/'))
        .flat_map(|(ips, port)| {
            ips.split_whitespace()
                .map(|ip| format!("{ip}:{port}"))
                .collect::<Vec<_>>()
        })
        .collect();
    listed.sort();
    listed
}

/// The `ip:port`s Endpoints `namespace/name` lists, sorted.
fn endpoints(server: &KuboxServer, namespace: &str, name: &str) -> Vec<String> {
    let out = server.kubectl(&[
        "get",
        "endpoints",
        "-n",
        namespace,
        name,
        "-o",
        r#"jsonpath={range .subsets[*]}{range .addresses[*]}{.ip}{" "}{end}{"/"}{.ports[0].port}{"\n"}{end}"#,
    ]);
    ip_ports(&out.stdout)
}

fn addresses(servers: &[&KuboxServer]) -> Vec<String> {
    let mut a: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_with_one_token_share_the_cluster_secrets_and_a_wrong_token_is_refused() {
    let etcd = EtcdProcess::start().await;
    let endpoint = etcd.endpoint();
    let args = server_args(&endpoint, TOKEN);
    // Started together, they race to store the secrets: one wins.
    let (a, b) = tokio::join!(
        KuboxServer::start(BIN, &args),
        KuboxServer::start(BIN, &args)
    );
    assert_eq!(read(&a, "ca.crt"), read(&b, "ca.crt"));
    assert_eq!(read(&a, "ca.key"), read(&b, "ca.key"));
    assert_eq!(read(&a, "sa.key"), read(&b, "sa.key"));
    assert_ne!(read(&a, "server.crt"), read(&b, "server.crt"));
    // a's admin credentials work against b: one CA.
    let version = b.kubectl(&[
        "--kubeconfig",
        a.kubeconfig().to_str().unwrap(),
        "--server",
        &format!("https://127.0.0.1:{}", b.port()),
        "get",
        "namespace",
        "default",
        "-o",
        "name",
    ]);
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let want = addresses(&[&a, &b]);
    eventually(
        "both servers in the kubernetes endpoints",
        Duration::from_secs(30),
        || async { (kubernetes_endpoints(&a) == want).then_some(()) },
    )
    .await;
    let slices = a.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "jsonpath={.items[*].ports[0].port}",
    ]);
    let mut ports: Vec<&str> = slices.split_whitespace().collect();
    ports.sort();
    let mut want_ports = vec![a.port().to_string(), b.port().to_string()];
    want_ports.sort();
    assert_eq!(ports, want_ports);

    // The same datastore with another token: refused, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Command::new(BIN)
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--https-port",
            &free_port().to_string(),
            "--bind-address",
            "127.0.0.1",
        ])
        .args(server_args(&endpoint, "not-the-token"))
        .arg("--disable-ingress")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually(
        "the server with a wrong token to exit",
        Duration::from_secs(60),
        || {
            let status = wrong.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut wrong.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("cannot be decrypted with this --token"),
        "{stderr}"
    );
    assert!(!dir.path().join("admin.kubeconfig").exists());

    // A server that goes away leaves the endpoints once its lease expires.
    drop(b);
    let want = addresses(&[&a]);
    eventually(
        "the stopped server to leave the endpoints",
        Duration::from_secs(60),
        || async { (kubernetes_endpoints(&a) == want).then_some(()) },
    )
    .await;
}

/// The holder of Lease kube-system/`name`, read through `server`.
fn holder(server: &KuboxServer, name: &str) -> Option<String> {
    let out = server.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        name,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let h = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !h.is_empty()).then_some(h)
}

/// Which of `servers` logged becoming leader as `identity`.
fn server_of(servers: &[KuboxServer], identity: &str) -> Option<usize> {
    servers.iter().position(|s| {
        std::fs::read_to_string(s.data_dir().join("server.log"))
            .is_ok_and(|log| log.contains(identity))
    })
}

fn ready_replicas(server: &KuboxServer, name: &str) -> String {
    let out = server.kubectl(&[
        "get",
        "deployment",
        name,
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_survives_losing_its_leader_and_an_etcd_member() {
    let mut etcd = EtcdCluster::start(3).await;
    let endpoints = etcd.endpoints();
    let args = server_args(&endpoints, TOKEN);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(KuboxServer::start(BIN, &args).await);
    }
    let all: Vec<&KuboxServer> = servers.iter().collect();
    let want = addresses(&all);
    eventually(
        "all servers in the kubernetes endpoints",
        Duration::from_secs(30),
        || async { (kubernetes_endpoints(&servers[2]) == want).then_some(()) },
    )
    .await;

    // Who leads both singletons; the node joins through that server, so
    // killing it also makes the node fail over.
    let (scheduler, controllers) =
        eventually("leaders elected", Duration::from_secs(60), || async {
            Some((
                holder(&servers[0], "kube-scheduler")?,
                holder(&servers[0], "kube-controller-manager")?,
            ))
        })
        .await;
    let leader = server_of(&servers, &controllers).expect("the controller manager's server");
    let other = (leader + 1) % 3;
    let hollow_log = servers[other].data_dir().join("hollow.log");
    let mut agent = Some(HollowAgent::start(
        std::path::Path::new(BIN),
        &servers[leader].kubeconfig(),
        2,
        &hollow_log,
    ));
    wait_nodes_ready(&servers[other], 2).await;
    servers[other].kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    eventually("2 replicas ready", Duration::from_secs(60), || async {
        (ready_replicas(&servers[other], "web") == "2").then_some(())
    })
    .await;

    // A writer creates ConfigMaps through its own load balancer, starting
    // at the leader, and remembers every create the API acknowledged.
    let (client, _, _balanced) =
        kubox_client::failover::connect_balanced(&servers[leader].kubeconfig())
            .await
            .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(format!("write-{i}"));
                if api.create(&PostParams::default(), &cm).await.is_ok() {
                    acked.lock().unwrap().push(format!("write-{i}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually(
        "some writes acknowledged",
        Duration::from_secs(30),
        || async { (acked.lock().unwrap().len() >= 5).then_some(()) },
    )
    .await;

    servers[leader].kill();
    let killed = Instant::now();
    let survivor = &servers[other];
    survivor.kubectl_ok(&["scale", "deployment", "web", "--replicas=4"]);
    for (lease, old) in [
        ("kube-scheduler", &scheduler),
        ("kube-controller-manager", &controllers),
    ] {
        eventually(
            &format!("another {lease} leader"),
            Duration::from_secs(15),
            || async {
                holder(survivor, lease)
                    .filter(|h| h != old && server_of(&servers, h).is_some_and(|s| s != leader))
                    .map(drop)
            },
        )
        .await;
    }
    eprintln!("new leaders acting {:?} after the kill", killed.elapsed());
    eventually(
        "the scaled deployment to converge",
        Duration::from_secs(60),
        || async { (ready_replicas(survivor, "web") == "4").then_some(()) },
    )
    .await;
    let before = acked.lock().unwrap().len();
    eventually(
        "writes acknowledged after the kill",
        Duration::from_secs(30),
        || async { (acked.lock().unwrap().len() >= before + 5).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let stored = survivor.kubectl_ok(&["get", "configmaps", "-o", "name"]);
    let acked = acked.lock().unwrap().clone();
    for name in &acked {
        assert!(
            stored.contains(&format!("configmap/{name}\n")),
            "acknowledged {name} is missing"
        );
    }
    eprintln!("{} acknowledged writes, all stored", acked.len());
    // The dead server leaves the endpoints.
    let live: Vec<&KuboxServer> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, s)| s)
        .collect();
    let want = addresses(&live);
    eventually(
        "the killed server to leave the endpoints",
        Duration::from_secs(60),
        || async { (kubernetes_endpoints(survivor) == want).then_some(()) },
    )
    .await;

    // One etcd member down: the quorum of two keeps taking writes.
    etcd.kill(0);
    for i in 0..5 {
        eventually(
            "a write with one etcd member down",
            Duration::from_secs(30),
            || async {
                survivor
                    .kubectl(&["create", "configmap", &format!("quorum-{i}")])
                    .status
                    .success()
                    .then_some(())
            },
        )
        .await;
    }

    // Everything stops and starts again: the same state comes back.
    agent.take();
    for server in &mut servers {
        server.kill();
    }
    etcd.restart(0).await;
    for server in &mut servers {
        server.restart().await;
    }
    let first = &servers[0];
    let stored = first.kubectl_ok(&["get", "configmaps", "-o", "name"]);
    for name in acked
        .iter()
        .chain(&(0..5).map(|i| format!("quorum-{i}")).collect::<Vec<_>>())
    {
        assert!(
            stored.contains(&format!("configmap/{name}\n")),
            "{name} is gone after the restart"
        );
    }
    let replicas = first.kubectl_ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "4");
    assert_eq!(read(first, "ca.crt"), read(&servers[leader], "ca.crt"));
    let _agent = HollowAgent::start(
        std::path::Path::new(BIN),
        &first.kubeconfig(),
        2,
        &hollow_log,
    );
    wait_nodes_ready(first, 2).await;
    eventually(
        "the deployment ready again",
        Duration::from_secs(90),
        || async { (ready_replicas(first, "web") == "4").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_server_cluster_migrates_from_sqlite_to_etcd() {
    let mut server = KuboxServer::start(BIN, &["--disable-agent", "--disable-dns"]).await;
    server.kubectl_ok(&["create", "configmap", "kept", "--from-literal=key=value"]);
    server.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ]);
    server.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let objects = |s: &KuboxServer| {
        s.kubectl_ok(&[
            "get",
            "configmaps,deployments,services,serviceaccounts,namespaces,clusterroles",
            "-A",
            "-o",
            "custom-columns=KIND:.kind,NS:.metadata.namespace,NAME:.metadata.name,UID:.metadata.uid",
            "--sort-by=.metadata.uid",
        ])
    };
    eventually(
        "the deployment's ReplicaSet",
        Duration::from_secs(60),
        || async {
            server
                .kubectl_ok(&["get", "replicasets", "-o", "name"])
                .starts_with("replicaset.apps/web-")
                .then_some(())
        },
    )
    .await;
    let before = objects(&server);
    let service_ip =
        server.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    server.kill();

    let etcd = EtcdProcess::start().await;
    let endpoint = etcd.endpoint();
    let migrate = |dir: &std::path::Path| {
        Command::new(BIN)
            .args(["datastore", "migrate", "--data-dir"])
            .arg(dir)
            .args(["--etcd-endpoints", &endpoint])
            .output()
            .unwrap()
    };
    let out = migrate(server.data_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied"));
    // Twice is refused: etcd is no longer empty.
    let again = migrate(server.data_dir());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a cluster"));

    server
        .restart_with(&[
            "--disable-agent",
            "--disable-dns",
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
        ])
        .await;
    assert_eq!(objects(&server), before);
    assert_eq!(
        server.kubectl_ok(&["get", "configmap", "kept", "-o", "jsonpath={.data.key}"]),
        "value"
    );
    assert_eq!(
        server.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]),
        service_ip
    );
    // The cluster goes on on etcd: its allocator still knows the taken address.
    let taken = server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "clash",
        "--tcp=80:80",
        &format!("--clusterip={service_ip}"),
    ]);
    assert!(!taken.status.success());
}

/// The IPs `status.loadBalancer.ingress` of Ingress `name` lists, sorted.
fn ingress_ips(server: &KuboxServer, name: &str) -> Vec<String> {
    let out = server.kubectl(&[
        "get",
        "ingress",
        name,
        "-o",
        "jsonpath={.status.loadBalancer.ingress[*].ip}",
    ]);
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ips.sort();
    ips
}

/// The `ip:port`s the `kube-dns` EndpointSlices list, sorted.
fn dns_slices(server: &KuboxServer) -> Vec<String> {
    let out = server.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        "kube-system",
        "-l",
        "kubernetes.io/service-name=kube-dns",
        "-o",
        r#"jsonpath={range .items[*]}{range .endpoints[*]}{.addresses[0]}{" "}{end}{"/"}{.ports[0].port}{"\n"}{end}"#,
    ]);
    ip_ports(&out.stdout)
}

/// Whether the cluster DNS at `addr` answers for the `kubernetes` Service.
async fn answers(addr: &str) -> bool {
    use hickory_client::client::{Client, ClientHandle};
    use hickory_proto::rr::{DNSClass, Name, RecordType};
    let stream = hickory_proto::udp::UdpClientStream::builder(
        addr.parse().unwrap(),
        hickory_proto::runtime::TokioRuntimeProvider::new(),
    )
    .with_timeout(Some(Duration::from_secs(2)))
    .build();
    let Ok((mut client, bg)) = Client::connect(stream).await else {
        return false;
    };
    tokio::spawn(bg);
    let name = Name::from_ascii("kubernetes.default.svc.cluster.local.").unwrap();
    client
        .query(name, DNSClass::IN, RecordType::A)
        .await
        .is_ok_and(|r| !r.answers().is_empty())
}

/// Three servers, each with cluster DNS and an ingress controller on its
/// own loopback address: the `kube-dns` endpoints and an Ingress's status
/// list every live server, and lose a killed one once its lease expires,
/// also when it was the one elected to write the Ingress status.
#[tokio::test(flavor = "multi_thread")]
async fn kube_dns_endpoints_and_ingress_status_follow_the_live_servers() {
    let etcd = EtcdProcess::start().await;
    let endpoint = etcd.endpoint();
    let mut servers = Vec::new();
    let mut dns = Vec::new();
    for i in 0..3 {
        let ip = format!("127.0.0.{}", i + 2);
        let port = free_port().to_string();
        let mut args: Vec<&str> = server_args(&endpoint, TOKEN)
            .into_iter()
            .filter(|a| *a != "--disable-dns")
            .collect();
        args.extend(["--node-ip", &ip, "--dns-port", &port]);
        // One cluster, one kube-dns ClusterIP: the first server's.
        let cluster_dns = servers.first().map(|s: &KuboxServer| s.net().cluster_dns());
        if let Some(cluster_dns) = &cluster_dns {
            args.extend(["--cluster-dns", cluster_dns]);
        }
        let (server, _, _) = KuboxServer::start_with_ingress(BIN, &args).await;
        servers.push(server);
        dns.push(format!("{ip}:{port}"));
    }
    let ips = |dns: &[String]| -> Vec<String> {
        dns.iter()
            .map(|a| a.split(':').next().unwrap().to_owned())
            .collect()
    };
    servers[0].apply_json(&serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "ingressClassName": "kubox",
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
        },
    }));
    eventually(
        "every server's DNS in the kube-dns endpoints",
        Duration::from_secs(60),
        || async {
            (endpoints(&servers[1], "kube-system", "kube-dns") == dns
                && dns_slices(&servers[1]) == dns)
                .then_some(())
        },
    )
    .await;
    for addr in &dns {
        assert!(answers(addr).await, "the DNS at {addr} does not answer");
    }
    eventually(
        "every server's address in the Ingress status",
        Duration::from_secs(60),
        || async { (ingress_ips(&servers[1], "web") == ips(&dns)).then_some(()) },
    )
    .await;

    // The server writing the Ingress status goes: another takes over, and
    // drops it from the status as from the kube-dns endpoints.
    let writer = holder(&servers[0], "kubox-ingress").expect("an elected status writer");
    let killed = server_of(&servers, &writer).expect("the status writer's server");
    servers[killed].kill();
    let started = Instant::now();
    dns.remove(killed);
    let survivor = &servers[(killed + 1) % 3];
    eventually(
        "the killed server to leave the Ingress status",
        Duration::from_secs(60),
        || async { (ingress_ips(survivor, "web") == ips(&dns)).then_some(()) },
    )
    .await;
    eventually(
        "the killed server to leave the kube-dns endpoints",
        Duration::from_secs(60),
        || async {
            (endpoints(survivor, "kube-system", "kube-dns") == dns && dns_slices(survivor) == dns)
                .then_some(())
        },
    )
    .await;
    eprintln!("the killed server left both after {:?}", started.elapsed());
}

/// The cluster's objects as `kind/name/uid` lines, with what says where
/// they run and are reached: Pods' nodes, Services' ClusterIPs, Deployments'
/// replicas, ConfigMaps' data. Sorted.
fn cluster_state(server: &KuboxServer) -> Vec<String> {
    let out = server.kubectl_ok(&[
        "get",
        "deployments,replicasets,pods,services,configmaps",
        "-o",
        r#"jsonpath={range .items[*]}{.kind}/{.metadata.name}/{.metadata.uid} {.spec.nodeName}{.spec.clusterIP}{.spec.replicas}{.data}{"\n"}{end}"#,
    ]);
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Every server and every etcd member stopped gracefully (SIGTERM), as a
/// shutdown of all hosts, and started again: the cluster comes back as it
/// was, the same objects, the Deployment's pods running where they ran, its
/// Service at its ClusterIP with all of them as endpoints.
#[tokio::test(flavor = "multi_thread")]
async fn the_whole_cluster_stopped_gracefully_comes_back_with_its_state() {
    let mut etcd = EtcdCluster::start(3).await;
    let members = etcd.endpoints();
    let args = server_args(&members, TOKEN);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(KuboxServer::start(BIN, &args).await);
    }
    let hollow_log = servers[0].data_dir().join("hollow.log");
    let bin = std::path::Path::new(BIN);
    let agent = HollowAgent::start(bin, &servers[0].kubeconfig(), 2, &hollow_log);
    wait_nodes_ready(&servers[1], 2).await;
    servers[1].kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ]);
    servers[1].kubectl_ok(&["expose", "deployment", "web", "--port=80"]);
    servers[1].kubectl_ok(&["create", "configmap", "settings", "--from-literal=k=v"]);
    eventually("3 replicas ready", Duration::from_secs(60), || async {
        (ready_replicas(&servers[1], "web") == "3").then_some(())
    })
    .await;
    let serving = eventually(
        "the web Service's endpoints",
        Duration::from_secs(30),
        || async {
            let e = endpoints(&servers[2], "default", "web");
            (e.len() == 3).then_some(e)
        },
    )
    .await;
    let before = cluster_state(&servers[1]);

    drop(agent);
    for server in &mut servers {
        let status = server.stop().await.expect("a running server");
        assert!(status.success(), "a server stopped with {status}");
    }
    etcd.stop().await;
    etcd.start_stopped().await;
    for server in &mut servers {
        server.restart().await;
    }
    assert_eq!(cluster_state(&servers[2]), before);
    // It works as before, too: a scaled Deployment gets a new pod running
    // beside the three it had, and the Service all four as endpoints.
    let _agent = HollowAgent::start(bin, &servers[0].kubeconfig(), 2, &hollow_log);
    servers[2].kubectl_ok(&["scale", "deployment", "web", "--replicas=4"]);
    eventually(
        "the scaled deployment ready after the restart",
        Duration::from_secs(90),
        || async { (ready_replicas(&servers[2], "web") == "4").then_some(()) },
    )
    .await;
    let now = eventually(
        "the web Service's endpoints with the new pod",
        Duration::from_secs(30),
        || async {
            let e = endpoints(&servers[2], "default", "web");
            (e.len() == 4).then_some(e)
        },
    )
    .await;
    assert!(
        serving.iter().all(|e| now.contains(e)),
        "{serving:?} are not all still in {now:?}"
    );
}
