//! The built-in ingress controller end to end: the seeds' go-multiroute
//! manifests applied with kubectl, real pods behind Services, requests
//! through the ingress ports with a plain HTTP client (and rustls for TLS).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually, multiroute_spec};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(90);

/// A response: status, headers (lower-cased names) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let raw = String::from_utf8_lossy(raw);
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn request_text(host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text + "\r\n"
}

/// One request over plain HTTP to the ingress.
fn get(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(request_text(host, path, headers).as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).ok()?;
    parse(&raw)
}

/// Asks until the answer is `status` with `body`.
async fn answers(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
    body: &str,
) {
    eventually(
        &format!("{host}{path} {headers:?} answers {status} {body:?}"),
        TIMEOUT,
        || async {
            let reply = get(port, host, path, headers)?;
            (reply.status == status && reply.body.contains(body)).then_some(())
        },
    )
    .await;
}

fn hello(version: &str, route: &str) -> String {
    format!("[{version}] Hello, You are at /{route}, Got: {route}'s content\n")
}

const NOT_FOUND: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// The request gets the ingress's own 404 page, not a backend's.
fn not_found(port: u16, host: &str, path: &str, why: &str) {
    let reply = get(port, host, path, &[]).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (404, NOT_FOUND),
        "{why}"
    );
}

fn ingress(name: &str, annotations: Value, spec: Value) -> Value {
    let mut spec = spec;
    spec["ingressClassName"] = json!("nginx");
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    })
}

fn path(path: &str, path_type: &str, service: &str, port: Value) -> Value {
    json!({"path": path, "pathType": path_type,
           "backend": {"service": {"name": service, "port": port}}})
}

/// go-multiroute v2: one replica, its Service's port named `http`.
fn v2(server: &KuboxServer) {
    server.apply_json(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "go-multiroute-v2"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "go-multiroute-v2"}},
            "template": {
                "metadata": {"labels": {"app": "go-multiroute-v2"}},
                "spec": multiroute_spec("kubox.local/go-multiroute:v2", "go-multiroute"),
            },
        },
    }));
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "go-multiroute-v2"},
        "spec": {"selector": {"app": "go-multiroute-v2"},
                 "ports": [{"name": "http", "port": 3000, "targetPort": 3000}]},
    }));
}

fn tls_client(root: &rcgen::Certificate, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTPS request with SNI `host`; the negotiated ALPN protocol and the reply.
async fn get_tls(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
    host: &str,
    path: &str,
) -> std::io::Result<(Option<Vec<u8>>, Option<Reply>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        return Ok((alpn, h2_get(tls, host, path).await));
    }
    tls.write_all(request_text(host, path, &[]).as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok((alpn, parse(&raw)))
}

/// One HTTP/2 request (no Host header: the authority names the host).
async fn h2_get<IO>(io: IO, host: &str, path: &str) -> Option<Reply>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Empty};
    let io = hyper_util::rt::TokioIo::new(io);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = http::Request::get(format!("https://{host}{path}"))
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some(Reply {
        status,
        headers: Vec::new(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[tokio::test]
async fn ingress_routes_the_seeds_manifests_hosts_tls_and_canaries() {
    let (server, http, https) =
        KuboxServer::start_with_ingress(KUBOX, &["--node-name", "node"]).await;
    server.build_example_images();

    // J2: the seeds' manifests unchanged (class `nginx`); only /route1 is routed.
    let manifests =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/go-multiroute/manifests");
    server.kubectl_ok(&["apply", "-f", manifests.to_str().unwrap()]);
    answers(
        http,
        "127.0.0.1",
        "/route1",
        &[],
        200,
        &hello("v1", "route1"),
    )
    .await;
    not_found(http, "127.0.0.1", "/route2", "no rule names /route2");
    let shown = eventually(
        "kubectl get ingress shows the node address",
        TIMEOUT,
        || async {
            let out = server.kubectl_ok(&["get", "ingress", "go-multiroute", "--no-headers"]);
            out.contains("127.0.0.1").then_some(out)
        },
    )
    .await;
    let columns: Vec<&str> = shown.split_whitespace().collect();
    assert_eq!(
        columns[..5],
        ["go-multiroute", "nginx", "*", "127.0.0.1", "80"],
        "{shown}"
    );
    let class = server.kubectl_ok(&["get", "ingressclass", "kubox", "-o", "json"]);
    let class: Value = serde_json::from_str(&class).unwrap();
    assert_eq!(class["spec"]["controller"], "kubox.io/ingress-controller");
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );

    let service = eventually("the kubox-ingress Service", TIMEOUT, || async {
        let out = server.kubectl(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kubox-ingress",
            "--no-headers",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert!(
        service.contains("ClusterIP") && service.contains("80/TCP,443/TCP"),
        "{service}"
    );
    let slice = server.kubectl_ok(&[
        "get",
        "endpointslice",
        "-n",
        "kube-system",
        "kubox-ingress",
        "-o",
        "json",
    ]);
    let slice: Value = serde_json::from_str(&slice).unwrap();
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], http);

    // Hosts: exact, wildcard (one label), by port name; a rewrite; 503s.
    v2(&server);
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
        "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]},
    }));
    server.apply_json(&ingress("hosts", json!({}), json!({"rules": [
        {"host": "v2.example.test", "http": {"paths": [path("/route1", "Exact", "go-multiroute-v2", json!({"name": "http"}))]}},
        {"host": "*.wild.test", "http": {"paths": [path("/", "Prefix", "go-multiroute-v2", json!({"number": 3000}))]}},
        {"host": "empty.test", "http": {"paths": [path("/", "Prefix", "empty", json!({"number": 80}))]}},
        {"host": "missing.test", "http": {"paths": [path("/", "Prefix", "nowhere", json!({"number": 80}))]}},
    ]})));
    server.apply_json(&ingress(
        "rewrite",
        json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
        json!({"rules": [{"host": "rewrite.test", "http": {"paths": [
            path("/app(/|$)(.*)", "ImplementationSpecific", "go-multiroute", json!({"number": 3000}))]}}]}),
    ));
    answers(
        http,
        "v2.example.test",
        "/route1",
        &[],
        200,
        &hello("v2", "route1"),
    )
    .await;
    not_found(
        http,
        "v2.example.test",
        "/route1/more",
        "Exact is the whole path",
    );
    answers(
        http,
        "a.wild.test:8080",
        "/route2",
        &[],
        200,
        &hello("v2", "route2"),
    )
    .await;
    not_found(
        http,
        "a.b.wild.test",
        "/route2",
        "a wildcard covers one label",
    );
    answers(
        http,
        "rewrite.test",
        "/app/route2",
        &[],
        200,
        &hello("v1", "route2"),
    )
    .await;
    for host in ["empty.test", "missing.test"] {
        let reply = get(http, host, "/", &[]).unwrap();
        assert_eq!(reply.status, 503, "{host}: {}", reply.body);
        assert!(reply.body.contains("503 Service Temporarily Unavailable"));
    }

    eventually(
        "a Warning Event names the missing Service",
        TIMEOUT,
        || async {
            let events = server.kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=hosts",
            ]);
            events
                .contains(r#"service "default/nowhere" not found"#)
                .then_some(())
        },
    )
    .await;

    // Endpoints are followed as pods go and come.
    server.kubectl_ok(&["scale", "deployment", "go-multiroute-v2", "--replicas=0"]);
    answers(http, "v2.example.test", "/route1", &[], 503, "503").await;
    server.kubectl_ok(&["scale", "deployment", "go-multiroute-v2", "--replicas=1"]);
    answers(
        http,
        "v2.example.test",
        "/route1",
        &[],
        200,
        &hello("v2", "route1"),
    )
    .await;

    // TLS from a kubernetes.io/tls Secret, chosen by SNI, HTTP/2 by ALPN,
    // and plain HTTP redirected.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["secure.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (
        server.data_dir().join("secure.crt"),
        server.data_dir().join("secure.key"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    server.kubectl_ok(&[
        "create",
        "secret",
        "tls",
        "secure-tls",
        &format!("--cert={}", cert_file.display()),
        &format!("--key={}", key_file.display()),
    ]);
    server.apply_json(&ingress("secure", json!({}), json!({
        "tls": [{"hosts": ["secure.test"], "secretName": "secure-tls"}],
        "rules": [{"host": "secure.test", "http": {"paths": [path("/", "Prefix", "go-multiroute", json!({"number": 3000}))]}}],
    })));
    let h1 = tls_client(&cert, &[b"http/1.1"]);
    let reply = eventually("HTTPS with the Secret's certificate", TIMEOUT, || async {
        get_tls(https, &h1, "secure.test", "/route1").await.ok()?.1
    })
    .await;
    assert_eq!((reply.status, reply.body), (200, hello("v1", "route1")));
    let h2 = tls_client(&cert, &[b"h2", b"http/1.1"]);
    let (alpn, reply) = get_tls(https, &h2, "secure.test", "/route2").await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let reply = reply.expect("an HTTP/2 response");
    assert_eq!((reply.status, reply.body), (200, hello("v1", "route2")));
    assert!(
        get_tls(https, &h1, "other.test", "/").await.is_err(),
        "other names get the default certificate, which the client does not trust"
    );
    let redirect = get(http, "secure.test", "/route1?x=1", &[]).unwrap();
    assert_eq!(redirect.status, 308);
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://secure.test:{https}/route1?x=1").as_str())
    );

    // Canary: by header (always/never, then an exact value), then by weight.
    let canary = |annotations: Value| {
        let mut all = json!({"nginx.ingress.kubernetes.io/canary": "true",
                             "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary"});
        all.as_object_mut()
            .unwrap()
            .extend(annotations.as_object().unwrap().clone());
        ingress(
            "canary",
            all,
            json!({"rules": [{"http": {"paths": [
            path("/route1", "Prefix", "go-multiroute-v2", json!({"number": 3000}))]}}]}),
        )
    };
    server.apply_json(&canary(json!({})));
    answers(
        http,
        "127.0.0.1",
        "/route1",
        &[("X-Canary", "always")],
        200,
        &hello("v2", "route1"),
    )
    .await;
    let versions = |headers: &[(&str, &str)], n: usize| {
        let mut v2 = 0;
        for _ in 0..n {
            let reply = get(http, "127.0.0.1", "/route1", headers).unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
            if reply.body.starts_with("[v2]") {
                v2 += 1;
            }
        }
        v2
    };
    assert_eq!(versions(&[("X-Canary", "always")], 20), 20);
    assert_eq!(versions(&[("X-Canary", "never")], 20), 0);
    assert_eq!(versions(&[], 20), 0);
    server.apply_json(&canary(
        json!({"nginx.ingress.kubernetes.io/canary-by-header-value": "v2"}),
    ));
    answers(
        http,
        "127.0.0.1",
        "/route1",
        &[("X-Canary", "v2")],
        200,
        &hello("v2", "route1"),
    )
    .await;
    assert_eq!(versions(&[("X-Canary", "v2")], 20), 20);
    assert_eq!(
        versions(&[("X-Canary", "always")], 20),
        0,
        "only the exact value"
    );
    server.apply_json(&canary(
        json!({"nginx.ingress.kubernetes.io/canary-weight": "20"}),
    ));
    answers(
        http,
        "127.0.0.1",
        "/route1",
        &[],
        200,
        &hello("v2", "route1"),
    )
    .await;
    let share = versions(&[], 2000);
    assert!(
        (300..=500).contains(&share),
        "{share} of 2000 went to the canary, not 20% ± 5%"
    );
}
