//! Security end to end with a real `kubox server`, kubectl, etcdctl and
//! openssl: Secrets encrypted at rest (read back from the raw SQLite file
//! and from etcd), key rotation with `kubox secrets reencrypt`, and a server
//! that refuses to start on a bad key file.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kubox_testkit::{EtcdProcess, KuboxServer, eventually, free_port, kubectl_as};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte the embedded store keeps: the database file and its WAL.
fn sqlite_bytes(data_dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for file in ["db/state.db", "db/state.db-wal"] {
        if let Ok(bytes) = std::fs::read(data_dir.join(file)) {
            all.extend(bytes);
        }
    }
    all
}

fn etcd_value(etcd: &EtcdProcess, key: &str) -> Vec<u8> {
    let out = Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "get",
            key,
            "--print-value-only",
        ])
        .output()
        .expect("running etcdctl");
    assert!(
        out.status.success(),
        "etcdctl get {key}: {}",
        text(&out.stderr)
    );
    out.stdout
}

fn secret_value(server: &KuboxServer, name: &str) -> String {
    let out = server.kubectl_ok(&["get", "secret", name, "-o", "jsonpath={.data.password}"]);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out.trim())
        .expect("base64 secret data");
    text(&bytes)
}

fn key(byte: u8, len: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(vec![byte; len])
}

fn config(providers: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
    )
}

fn aesgcm(name: &str, secret: &str) -> String {
    format!(
        "      - aesgcm:\n          keys:\n            - name: {name}\n              secret: {secret}\n"
    )
}

#[tokio::test]
async fn secrets_are_encrypted_in_the_sqlite_file_by_default() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let marker = "plaintext-password-4f1c9";
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        &format!("--from-literal=password={marker}"),
    ]);
    // A ConfigMap is not encrypted: it shows the scan would see plaintext.
    let cm_marker = "configmap-value-8d2e7";
    server.kubectl_ok(&[
        "create",
        "configmap",
        "plain",
        &format!("--from-literal=k={cm_marker}"),
    ]);

    // Served decrypted, by GET and by the watch cache's LIST.
    assert_eq!(secret_value(&server, "db"), marker);
    let listed = server.kubectl_ok(&["get", "secrets", "-o", "name"]);
    assert!(listed.contains("secret/db"), "{listed}");

    let config = std::fs::read_to_string(server.data_dir().join("pki/encryption-config.yaml"))
        .expect("the generated encryption configuration");
    assert!(config.contains("kind: EncryptionConfiguration"), "{config}");
    assert!(config.contains("secretbox:"), "{config}");

    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(marker);
    eventually(
        "the configmap in the raw store",
        Duration::from_secs(10),
        || async { contains(&sqlite_bytes(server.data_dir()), cm_marker.as_bytes()).then_some(()) },
    )
    .await;
    let raw = sqlite_bytes(server.data_dir());
    assert!(
        !contains(&raw, marker.as_bytes()),
        "the secret's plaintext is in state.db"
    );
    assert!(
        !contains(&raw, encoded.as_bytes()),
        "the secret's base64 is in state.db"
    );
    assert!(
        contains(&raw, b"k8s:enc:secretbox:v1:key1:"),
        "no secretbox-encrypted value in state.db"
    );
}

/// Runs `kubox server` that is expected to refuse to start; its stderr.
async fn refused_start(data_dir: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(KUBOX)
        .arg("server")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--https-port", &free_port().to_string()])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--disable-agent",
            "--disable-ingress",
        ])
        .args(["--disable-dns"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubox server");
    let status = eventually("the server to give up", Duration::from_secs(30), || {
        let status = child.try_wait().expect("waiting for the server");
        async move { status }
    })
    .await;
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    assert!(!status.success(), "the server exited 0: {stderr}");
    stderr
}

#[tokio::test]
async fn a_bad_key_file_stops_the_server() {
    let mut server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=x",
    ]);
    server.kill();
    let dir = server.data_dir().to_owned();
    let path = dir.join("pki/encryption-config.yaml");
    let good = std::fs::read_to_string(&path).expect("the generated configuration");
    let secret_line = good
        .lines()
        .find(|l| l.trim_start().starts_with("secret:"))
        .expect("a secret line")
        .to_owned();
    // A key that is not base64, one of the wrong length, and one that is
    // valid but not the one the stored Secrets were written with.
    let refused_with = |secret: String| {
        std::fs::write(
            &path,
            good.replace(&secret_line, &format!("              secret: {secret}")),
        )
        .unwrap();
        refused_start(&dir, &[])
    };
    let err = refused_with("not*base64".into()).await;
    assert!(
        err.contains("encryption-config.yaml") && err.contains("secrets must be base64 encoded"),
        "{err}"
    );
    let err = refused_with(key(1, 8)).await;
    assert!(
        err.contains("secret is not of the expected length, got 8, expected one of [32]"),
        "{err}"
    );
    let err = refused_with(key(2, 32)).await;
    assert!(
        err.contains("cannot decrypt /registry/secrets/default/s1"),
        "{err}"
    );

    // Not a configuration at all.
    std::fs::write(&path, "{{{").unwrap();
    let err = refused_start(&dir, &[]).await;
    assert!(err.contains("error while parsing file"), "{err}");

    // The right file again: the server starts and serves the Secret.
    std::fs::write(&path, &good).unwrap();
    server.restart().await;
    server.kubectl_ok(&["get", "secret", "s1"]);
}

#[tokio::test]
async fn secrets_in_etcd_are_encrypted_and_keys_rotate() {
    let etcd = EtcdProcess::start().await;
    let config_dir = tempfile::tempdir().unwrap();
    let file = config_dir.path().join("encryption.yaml");
    let (key1, key2) = (key(7, 32), key(9, 16));
    std::fs::write(&file, config(&aesgcm("key1", &key1))).unwrap();
    let endpoint = etcd.endpoint();
    let file_arg = file.to_str().unwrap();
    let mut server = KuboxServer::start(
        KUBOX,
        &[
            "--disable-agent",
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
            "--encryption-provider-config",
            file_arg,
        ],
    )
    .await;
    let marker = "etcd-secret-value-91ab3";
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        &format!("--from-literal=password={marker}"),
    ]);
    let stored = etcd_value(&etcd, "/registry/secrets/default/db");
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "{}",
        text(&stored)
    );
    assert!(!contains(&stored, marker.as_bytes()), "plaintext in etcd");
    // Other resources stay as they were.
    let ns = etcd_value(&etcd, "/registry/namespaces/default");
    assert!(ns.starts_with(b"{"), "{}", text(&ns));

    // Rotation, step 1: the new key first, the old one still there to read.
    std::fs::write(
        &file,
        config(&format!(
            "{}{}",
            aesgcm("key2", &key2),
            aesgcm("key1", &key1)
        )),
    )
    .unwrap();
    server.restart().await;
    assert_eq!(secret_value(&server, "db"), marker);
    let stored = etcd_value(&etcd, "/registry/secrets/default/db");
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "{}",
        text(&stored)
    );

    // Step 2: rewrite every Secret under the new key.
    let out = Command::new(KUBOX)
        .args(["secrets", "reencrypt", "--kubeconfig"])
        .arg(server.kubeconfig())
        .output()
        .expect("running kubox secrets reencrypt");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("secrets re-encrypted"),
        "{}",
        text(&out.stdout)
    );
    let stored = etcd_value(&etcd, "/registry/secrets/default/db");
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key2:"),
        "{}",
        text(&stored)
    );

    // Step 3: the old key goes; everything still reads.
    std::fs::write(&file, config(&aesgcm("key2", &key2))).unwrap();
    server.restart().await;
    assert_eq!(secret_value(&server, "db"), marker);
    let watched = server.kubectl_ok(&["get", "secrets", "-A", "-o", "name"]);
    assert!(watched.contains("secret/db"), "{watched}");
}

fn audit_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l}: {e}")))
        .collect()
}

const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: None
    nonResourceURLs: ["/readyz*", "/healthz*", "/livez*"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets"]
    omitStages: [RequestReceived]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["configmaps"]
  - level: Metadata
    userGroups: ["system:masters"]
"#;

#[tokio::test]
async fn the_audit_log_records_requests_by_policy() {
    let config_dir = tempfile::tempdir().unwrap();
    let policy = config_dir.path().join("policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY).unwrap();
    let log = config_dir.path().join("audit/audit.log");
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--disable-agent",
            "--audit-policy-file",
            policy.to_str().unwrap(),
            "--audit-log-path",
            log.to_str().unwrap(),
        ],
    )
    .await;
    server.kubectl_ok(&[
        "create",
        "configmap",
        "audited",
        "--from-literal=color=blue",
    ]);
    assert!(
        !server
            .kubectl(&["get", "secret", "nothere"])
            .status
            .success()
    );
    assert!(
        !server
            .kubectl(&["get", "pods", "--as=jane"])
            .status
            .success()
    );
    let bogus = token_kubeconfig(&server, config_dir.path(), "bogus");
    let out = kubectl_as(&bogus, &["get", "configmaps"]);
    assert!(
        text(&out.stderr).contains("Unauthorized"),
        "{}",
        text(&out.stderr)
    );
    server.kubectl_ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1",
    ]);

    let events = eventually(
        "the watch's end in the audit log",
        Duration::from_secs(20),
        || async {
            let events = audit_events(&log);
            events
                .iter()
                .any(|e| e["verb"] == "watch" && e["stage"] == "ResponseComplete")
                .then_some(events)
        },
    )
    .await;
    for e in &events {
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        for field in [
            "auditID",
            "requestURI",
            "verb",
            "stage",
            "requestReceivedTimestamp",
            "stageTimestamp",
        ] {
            assert!(e[field].is_string(), "{field} missing: {e}");
        }
        assert!(
            !e["requestURI"].as_str().unwrap().starts_with("/readyz"),
            "{e}"
        );
    }

    // The create, at RequestResponse: both objects, both stages, one auditID.
    let id = events
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["name"] == "audited")
        .map(|e| e["auditID"].clone())
        .expect("the configmap's create");
    let create: Vec<&serde_json::Value> = events.iter().filter(|e| e["auditID"] == id).collect();
    let stages: Vec<&str> = create
        .iter()
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["RequestReceived", "ResponseComplete"],
        "{create:?}"
    );
    assert_eq!(create[0]["auditID"], create[1]["auditID"]);
    let done = create[1];
    assert_eq!(done["level"], "RequestResponse");
    assert_eq!(done["user"]["username"], "kubox-admin");
    assert!(
        done["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&"system:masters".into())
    );
    assert_eq!(done["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert!(
        done["userAgent"].as_str().unwrap().starts_with("kubectl"),
        "{done}"
    );
    assert_eq!(done["objectRef"]["namespace"], "default");
    assert_eq!(done["objectRef"]["apiVersion"], "v1");
    assert_eq!(done["responseStatus"]["code"], 201);
    assert_eq!(done["requestObject"]["data"]["color"], "blue");
    assert_eq!(done["responseObject"]["metadata"]["name"], "audited");
    assert_eq!(
        done["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(create[0].get("responseStatus").is_none(), "{}", create[0]);

    // The Secret, at Metadata with RequestReceived omitted: no bodies.
    let secret: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "secrets" && e["objectRef"]["name"] == "nothere")
        .collect();
    assert_eq!(secret.len(), 1, "{secret:?}");
    assert_eq!(secret[0]["stage"], "ResponseComplete");
    assert_eq!(secret[0]["level"], "Metadata");
    assert_eq!(secret[0]["responseStatus"]["code"], 404);
    assert_eq!(secret[0]["responseStatus"]["reason"], "NotFound");
    assert!(secret[0].get("responseObject").is_none() && secret[0].get("requestObject").is_none());

    // Impersonated and refused: the real user, the impersonated one, the reason.
    let refused = events
        .iter()
        .find(|e| e["impersonatedUser"]["username"] == "jane" && e["stage"] == "ResponseComplete")
        .expect("the impersonated request");
    assert_eq!(refused["user"]["username"], "kubox-admin");
    assert_eq!(refused["responseStatus"]["code"], 403);
    assert_eq!(
        refused["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert_eq!(refused["objectRef"]["resource"], "pods");

    // Refused credentials: by the policy, as no user, one ResponseStarted
    // event (upstream's WithFailedAuthenticationAudit).
    let unauthorized: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 401)
        .collect();
    assert!(!unauthorized.is_empty(), "no 401 audited");
    for e in &unauthorized {
        assert_eq!(e["stage"], "ResponseStarted", "{e}");
        assert_eq!(e["user"], serde_json::json!({}), "{e}");
        assert_eq!(e["level"], "RequestResponse", "{e}");
        assert_eq!(e["objectRef"]["resource"], "configmaps", "{e}");
        assert_eq!(
            e["responseStatus"]["message"],
            "Authentication failed, attempted: bearer"
        );
        let id = &e["auditID"];
        assert_eq!(events.iter().filter(|o| &o["auditID"] == id).count(), 1);
    }

    // The watch: started, then complete when it ended.
    let watch: Vec<&str> = events
        .iter()
        .filter(|e| {
            e["verb"] == "watch"
                && e["requestURI"]
                    .as_str()
                    .unwrap()
                    .contains("timeoutSeconds=1")
        })
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        watch,
        ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    );
}

/// A kubeconfig with the server and CA of `server` and a bearer token only.
fn token_kubeconfig(server: &KuboxServer, dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{token}.kubeconfig"));
    let file = path.to_str().unwrap();
    let ca = server.data_dir().join("pki/ca.crt");
    let url = format!("https://127.0.0.1:{}", server.port());
    for args in [
        vec![
            "config",
            "set-cluster",
            "k",
            "--server",
            &url,
            "--certificate-authority",
            ca.to_str().unwrap(),
        ],
        vec!["config", "set-credentials", "t", "--token", token],
        vec![
            "config",
            "set-context",
            "k",
            "--cluster",
            "k",
            "--user",
            "t",
        ],
        vec!["config", "use-context", "k"],
    ] {
        let out = Command::new("kubectl")
            .args(&args)
            .args(["--kubeconfig", file])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    path
}

#[tokio::test]
async fn static_tokens_authenticate_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "s3cr3t-t0ken,alice,1001,\"dev,ops\"\nother,bob,1002\n",
    )
    .unwrap();
    let server = KuboxServer::start(
        KUBOX,
        &[
            "--disable-agent",
            "--token-auth-file",
            tokens.to_str().unwrap(),
        ],
    )
    .await;
    let alice = token_kubeconfig(&server, dir.path(), "s3cr3t-t0ken");
    let out = kubectl_as(&alice, &["auth", "whoami", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    assert_eq!(review["status"]["userInfo"]["uid"], "1001");
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        serde_json::json!(["dev", "ops", "system:authenticated"])
    );
    // Known but granted nothing: RBAC's refusal names the token's user.
    let out = kubectl_as(&alice, &["get", "pods"]);
    assert!(
        text(&out.stderr).contains("User \"alice\" cannot list resource \"pods\""),
        "{}",
        text(&out.stderr)
    );
    let wrong = token_kubeconfig(&server, dir.path(), "not-in-the-file");
    let out = kubectl_as(&wrong, &["get", "pods"]);
    assert!(
        text(&out.stderr).contains("Unauthorized"),
        "{}",
        text(&out.stderr)
    );
}

/// `openssl s_client` to the server with one protocol version.
fn handshake(server: &KuboxServer, version: &str) -> Output {
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", server.port()),
            version,
        ])
        // Let the client offer old versions, so the refusal is the server's.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl")
}

#[tokio::test]
async fn only_tls_1_2_and_later_are_served() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    for old in ["-tls1", "-tls1_1"] {
        let out = handshake(&server, old);
        assert!(
            !out.status.success(),
            "{old} accepted: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stdout).contains("Cipher is (NONE)")
                || text(&out.stdout).contains("Cipher    : 0000"),
            "{old}: {}",
            text(&out.stdout)
        );
    }
    for new in ["-tls1_2", "-tls1_3"] {
        let out = handshake(&server, new);
        assert!(
            out.status.success(),
            "{new} refused: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// The serial number and expiry of the certificate a new TLS connection to
/// the server is given.
fn presented_certificate(server: &KuboxServer) -> String {
    let hello = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", server.port()),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let out = kubox_testkit::output_with_input(
        Command::new("openssl").args(["x509", "-noout", "-serial", "-enddate"]),
        &hello.stdout,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn rotated_certificates_are_served_without_a_restart() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let before = presented_certificate(&server);
    let old_kubeconfig = server.data_dir().join("old-admin.kubeconfig");
    std::fs::copy(server.kubeconfig(), &old_kubeconfig).unwrap();

    // A watch whose connection was made before the rotation.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["get", "configmaps", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut await_line = |wanted: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !seen.iter().any(|l| l == wanted) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(e) => panic!("the watch never printed {wanted} ({e}); it printed {seen:?}"),
            }
        }
    };
    server.kubectl_ok(&["create", "configmap", "before"]);
    await_line("configmap/before");

    let rotate = Command::new(KUBOX)
        .args(["certs", "rotate", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    let log = text(&rotate.stderr);
    assert!(log.contains("server: renewed"), "{log}");
    assert!(log.contains("admin: renewed"), "{log}");

    let after = eventually(
        "a new connection to get the new certificate",
        Duration::from_secs(20),
        || {
            let now = presented_certificate(&server);
            let changed = now != before;
            async move { changed.then_some(now) }
        },
    )
    .await;
    assert!(after.contains("serial="), "{after}");
    assert_ne!(
        std::fs::read(server.kubeconfig()).unwrap(),
        std::fs::read(&old_kubeconfig).unwrap(),
        "the admin kubeconfig keeps its old certificate"
    );
    // The new admin certificate, and the old one (still valid: same CA).
    server.kubectl_ok(&["create", "configmap", "after"]);
    let old = kubectl_as(
        &old_kubeconfig,
        &["get", "configmap", "after", "-o", "name"],
    );
    assert!(old.status.success(), "{}", text(&old.stderr));
    await_line("configmap/after");
    watch.kill().unwrap();
    watch.wait().unwrap();
}
