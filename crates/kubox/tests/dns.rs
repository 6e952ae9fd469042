//! Cluster DNS end to end: a real `kubox server` answering the cluster
//! domain from the Services and EndpointSlices made through kubectl, asked
//! with hickory's client over UDP and TCP, and from inside a pod through
//! the `kube-dns` Service as its resolv.conf names it.

use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use hickory_client::client::{Client, ClientHandle};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::tcp::TcpClientStream;
use hickory_proto::udp::UdpClientStream;
use kubox_testkit::{KuboxServer, eventually, free_port};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(60);

/// An upstream resolver that knows one answer: every A query gets 192.0.2.7.
fn fake_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true)
                .add_queries(query.queries().to_vec());
            for q in query.queries() {
                if q.query_type() == RecordType::A {
                    answer.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A::new(192, 0, 2, 7)),
                    ));
                }
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), from);
        }
    });
    addr
}

async fn udp_client(addr: SocketAddr) -> Client {
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::new())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let (client, bg) = Client::connect(stream).await.unwrap();
    tokio::spawn(bg);
    client
}

async fn tcp_client(addr: SocketAddr) -> Client {
    let (stream, sender) = TcpClientStream::new(
        addr,
        None,
        Some(Duration::from_secs(2)),
        TokioRuntimeProvider::new(),
    );
    let (client, bg) = Client::new(stream, sender, None).await.unwrap();
    tokio::spawn(bg);
    client
}

/// The response code and the answers' data as text (`A` records as their address).
async fn ask(
    client: &mut Client,
    name: &str,
    rtype: RecordType,
) -> (ResponseCode, Vec<String>, Message) {
    let response = client
        .query(Name::from_str(name).unwrap(), DNSClass::IN, rtype)
        .await
        .unwrap();
    let message = response.into_message();
    let mut answers: Vec<String> = message
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    answers.sort();
    (message.response_code(), answers, message)
}

fn apply(server: &KuboxServer, manifest: Value) {
    server.apply_json(&manifest);
}

#[tokio::test]
async fn cluster_dns_answers_from_services_and_forwards_the_rest() {
    let port = free_port();
    let upstream = fake_upstream();
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--dns-bind-address",
            "127.0.0.1",
            "--dns-port",
            &port.to_string(),
            "--dns-upstream",
            &upstream.to_string(),
        ],
    )
    .await;
    let dns: SocketAddr = ([127, 0, 0, 1], port).into();
    let cluster_dns = server.net().cluster_dns();

    // The addon's Service, as kubectl shows upstream's.
    let shown = eventually("the kube-dns Service", TIMEOUT, || async {
        let out = server.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "service",
            "-l",
            "k8s-app=kube-dns",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("kube-dns").then_some(text)
    })
    .await;
    let row = shown.lines().nth(1).unwrap();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        columns[..5],
        [
            "kube-dns",
            "ClusterIP",
            cluster_dns.as_str(),
            "<none>",
            "53/UDP,53/TCP"
        ],
        "{shown}"
    );
    let endpoints = server.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "endpoints",
        "kube-dns",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ]);
    assert_eq!(endpoints, dns.to_string());

    server.kubectl_ok(&["create", "namespace", "work"]);
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "saythx-redis", "namespace": "work"},
        "spec": {"selector": {"app": "redis"}, "ports": [{"name": "redis", "port": 6379}]}}),
    );
    let ip = server.kubectl_ok(&[
        "-n",
        "work",
        "get",
        "service",
        "saythx-redis",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let ip_number: std::net::Ipv4Addr = ip.parse().unwrap();
    assert!(
        ip_number.octets()[2] > 0,
        "{ip}: dynamic ClusterIPs stay out of the static band"
    );

    let mut udp = udp_client(dns).await;
    let (code, answers, message) = eventually("the Service's A record", TIMEOUT, || {
        let mut udp = udp.clone();
        async move {
            let got = ask(
                &mut udp,
                "saythx-redis.work.svc.cluster.local.",
                RecordType::A,
            )
            .await;
            (got.0 == ResponseCode::NoError && !got.1.is_empty()).then_some(got)
        }
    })
    .await;
    assert_eq!((code, answers), (ResponseCode::NoError, vec![ip.clone()]));
    assert_eq!(message.answers()[0].ttl(), 5);
    assert!(message.authoritative());
    assert_eq!(
        ask(
            &mut udp,
            "_redis._tcp.saythx-redis.work.svc.cluster.local.",
            RecordType::SRV
        )
        .await
        .1,
        ["0 100 6379 saythx-redis.work.svc.cluster.local."]
    );
    assert_eq!(
        ask(
            &mut udp,
            "saythx-redis.work.svc.cluster.local.",
            RecordType::SRV
        )
        .await
        .1,
        ["0 100 6379 saythx-redis.work.svc.cluster.local."]
    );
    let reverse = Name::from(std::net::IpAddr::V4(ip_number)).to_string();
    assert_eq!(
        ask(&mut udp, &reverse, RecordType::PTR).await.1,
        ["saythx-redis.work.svc.cluster.local."]
    );

    // Over TCP too.
    let mut tcp = tcp_client(dns).await;
    assert_eq!(
        ask(
            &mut tcp,
            "saythx-redis.work.svc.cluster.local.",
            RecordType::A
        )
        .await
        .1,
        [ip.as_str()]
    );

    // Unknown names in the zone: NXDOMAIN with the zone's SOA.
    let (code, answers, message) =
        ask(&mut udp, "nothing.work.svc.cluster.local.", RecordType::A).await;
    assert_eq!((code, answers.len()), (ResponseCode::NXDomain, 0));
    let soa = &message.name_servers()[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name().to_string(), "cluster.local.");

    // A headless Service whose endpoints are written by hand.
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "work"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
    );
    apply(
        &server,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db-1", "namespace": "work", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "hostname": "db-1", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.7"], "hostname": "db-2", "conditions": {"ready": false}},
        ]}),
    );
    let answers = eventually("the headless Service's endpoints", TIMEOUT, || {
        let mut udp = udp.clone();
        async move {
            let got = ask(&mut udp, "db.work.svc.cluster.local.", RecordType::A).await;
            (got.1.len() == 2).then_some(got.1)
        }
    })
    .await;
    assert_eq!(answers, ["10.42.0.5", "10.42.0.6"]);
    assert_eq!(
        ask(&mut udp, "db-1.db.work.svc.cluster.local.", RecordType::A)
            .await
            .1,
        ["10.42.0.6"]
    );
    assert_eq!(
        ask(&mut udp, "db-2.db.work.svc.cluster.local.", RecordType::A)
            .await
            .0,
        ResponseCode::NXDomain
    );
    assert_eq!(
        ask(
            &mut udp,
            "_pg._tcp.db.work.svc.cluster.local.",
            RecordType::SRV
        )
        .await
        .1,
        [
            "0 50 5432 db-0.db.work.svc.cluster.local.",
            "0 50 5432 db-1.db.work.svc.cluster.local."
        ]
    );
    assert_eq!(
        ask(&mut udp, "5.0.42.10.in-addr.arpa.", RecordType::PTR)
            .await
            .1,
        ["db-0.db.work.svc.cluster.local."]
    );

    // ExternalName: a CNAME, with the target's address from upstream.
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "search", "namespace": "work"},
        "spec": {"type": "ExternalName", "externalName": "www.example.test"}}),
    );
    let (_, answers, message) = eventually("the ExternalName's CNAME", TIMEOUT, || {
        let mut udp = udp.clone();
        async move {
            let got = ask(&mut udp, "search.work.svc.cluster.local.", RecordType::A).await;
            (!got.1.is_empty()).then_some(got)
        }
    })
    .await;
    assert_eq!(answers, ["192.0.2.7", "www.example.test."]);
    assert_eq!(message.answers()[0].record_type(), RecordType::CNAME);

    // Pods by address, and names outside the cluster forwarded.
    assert_eq!(
        ask(&mut udp, "10-42-0-9.work.pod.cluster.local.", RecordType::A)
            .await
            .1,
        ["10.42.0.9"]
    );
    let (code, answers, message) = ask(&mut udp, "elsewhere.example.test.", RecordType::A).await;
    assert_eq!(
        (code, answers),
        (ResponseCode::NoError, vec!["192.0.2.7".to_owned()])
    );
    assert!(!message.authoritative());

    // A deleted Service's names go with it.
    server.kubectl_ok(&["-n", "work", "delete", "service", "saythx-redis"]);
    eventually("the deleted Service's name is gone", TIMEOUT, || {
        let mut udp = udp.clone();
        async move {
            let got = ask(
                &mut udp,
                "saythx-redis.work.svc.cluster.local.",
                RecordType::A,
            )
            .await;
            (got.0 == ResponseCode::NXDomain).then_some(())
        }
    })
    .await;
    // Its address is no longer the cluster's: upstream (which has no PTR) answers.
    let (code, answers, message) = ask(&mut udp, &reverse, RecordType::PTR).await;
    assert_eq!((code, answers.len()), (ResponseCode::NoError, 0));
    assert!(!message.authoritative());
}

/// What `nslookup NAME` prints inside the pod, once it answers.
async fn nslookup_in(server: &KuboxServer, pod: &str, name: &str, expect: &str) -> String {
    eventually(&format!("nslookup {name} in {pod}"), TIMEOUT, || async {
        let out = server.kubectl(&["exec", pod, "--", "nslookup", name]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(expect).then_some(text)
    })
    .await
}

#[tokio::test]
async fn pods_resolve_services_through_kube_dns() {
    // Loopback node address: cluster DNS listens on the pod bridge, where
    // the kube-dns Service can forward pods' queries.
    let server = KuboxServer::start(KUBOX, &[]).await;
    server.import_busybox();
    server.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = server.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    server.run_sleeper("client").await;

    let resolv = server.kubectl_ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    let conf = kubox_dns::ResolvConf::parse(&resolv);
    assert_eq!(
        conf.nameservers,
        [server
            .net()
            .cluster_dns()
            .parse::<std::net::IpAddr>()
            .unwrap()],
        "{resolv}"
    );
    assert_eq!(
        conf.searches[..3],
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ],
        "{resolv}"
    );
    assert_eq!(conf.options, ["ndots:5"], "{resolv}");

    let full = nslookup_in(&server, "client", "web.default.svc.cluster.local", &ip).await;
    assert!(full.contains("web.default.svc.cluster.local"), "{full}");
    // The short name, through the search list.
    nslookup_in(&server, "client", "web", &ip).await;
    nslookup_in(&server, "client", "kubernetes.default", "10.43.0.1").await;
    let missing = server.kubectl(&[
        "exec",
        "client",
        "--",
        "nslookup",
        "nothing.default.svc.cluster.local",
    ]);
    let text = String::from_utf8_lossy(&missing.stdout).into_owned()
        + &String::from_utf8_lossy(&missing.stderr);
    assert!(text.contains("NXDOMAIN"), "{text}");

    // A named pod under a subdomain, resolving only by its dnsConfig.
    server.apply_json(&json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "named"},
        "spec": {"hostname": "web-0", "subdomain": "sub", "dnsPolicy": "None",
                 "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["my.example"],
                               "options": [{"name": "ndots", "value": "2"}]},
                 "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                 "command": ["sleep", "3600"]}]}}));
    let pod_ip = eventually("the named pod runs", TIMEOUT, || async {
        let out = server.kubectl(&[
            "get",
            "pod",
            "named",
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.strip_prefix("Running ").map(str::to_owned)
    })
    .await;
    assert_eq!(
        server.kubectl_ok(&["exec", "named", "--", "cat", "/etc/resolv.conf"]),
        "search my.example\nnameserver 192.0.2.53\noptions ndots:2\n"
    );
    let hosts = server.kubectl_ok(&["exec", "named", "--", "cat", "/etc/hosts"]);
    assert!(
        hosts
            .lines()
            .any(|l| l == format!("{pod_ip}\tweb-0.sub.default.svc.cluster.local\tweb-0")),
        "{hosts}"
    );
}
