//! ServiceAccount tokens end to end, with a real `kubox server` and the
//! real kubectl: tokens from the TokenRequest API (`kubectl create token`)
//! authenticate as their ServiceAccount, bad ones are refused with 401,
//! legacy token Secrets are filled, the ServiceAccount admission plugin
//! defaults and mounts, and a pod's mounted token works from the host.

use std::process::{Command, Output};
use std::time::Duration;

use kubox_satoken::{Claims, Ref, SigningKey};
use kubox_testkit::{KuboxServer, Runtime, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(60);
const UNAUTHORIZED: &str = "error: You must be logged in to the server (Unauthorized)";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// kubectl with only a bearer token: no client certificate to fall back on.
fn with_token(server: &KuboxServer, token: &str, args: &[&str]) -> Output {
    let empty = server.data_dir().join("empty.kubeconfig");
    std::fs::write(&empty, "").unwrap();
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&empty)
        .arg(format!("--server=https://127.0.0.1:{}", server.port()))
        .arg(format!(
            "--certificate-authority={}",
            server.data_dir().join("pki/ca.crt").display()
        ))
        .arg(format!("--token={token}"))
        .args(args)
        .output()
        .expect("running kubectl")
}

fn whoami(server: &KuboxServer, token: &str) -> Output {
    with_token(server, token, &["auth", "whoami", "-o", "json"])
}

fn user_of(server: &KuboxServer, token: &str) -> Value {
    let out = whoami(server, token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["status"]["userInfo"].clone()
}

fn refused(server: &KuboxServer, token: &str) -> bool {
    let out = whoami(server, token);
    !out.status.success() && text(&out.stderr).contains(UNAUTHORIZED)
}

fn create_token(server: &KuboxServer, args: &[&str]) -> String {
    let mut all = vec!["create", "token"];
    all.extend_from_slice(args);
    server.kubectl_ok(&all).trim().to_owned()
}

fn uid(server: &KuboxServer, kind: &str, name: &str) -> String {
    server.kubectl_ok(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"])
}

fn key(server: &KuboxServer) -> SigningKey {
    SigningKey::from_pem(&std::fs::read_to_string(server.data_dir().join("pki/sa.key")).unwrap())
        .unwrap()
}

/// Waits until `check` holds, as the authenticator reads the store anew.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(20), || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await
}

/// A server without a node, once the controller made the `default` ServiceAccount.
async fn start_api_only() -> KuboxServer {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    eventually("the default ServiceAccount", TIMEOUT, || async {
        server
            .kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
            .then_some(())
    })
    .await;
    server
}

#[tokio::test]
async fn tokens_from_the_token_request_api_authenticate_as_their_service_account() {
    let mut server = start_api_only().await;
    let token = create_token(&server, &["default"]);
    let user = user_of(&server, &token);
    assert_eq!(user["username"], "system:serviceaccount:default:default");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );

    // Authenticated, but granted nothing yet: 403 with upstream's words.
    let out = with_token(&server, &token, &["get", "pods"]);
    assert!(
        text(&out.stderr).contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{}",
        text(&out.stderr)
    );
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "sa-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    until("the binding to take effect", || {
        with_token(&server, &token, &["get", "pods"])
            .status
            .success()
    })
    .await;
    // ServiceAccounts may read the keys that verify their tokens.
    let discovery: Value = serde_json::from_slice(
        &with_token(
            &server,
            &token,
            &["get", "--raw", "/.well-known/openid-configuration"],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        discovery["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let jwks: Value = serde_json::from_slice(
        &with_token(&server, &token, &["get", "--raw", "/openid/v1/jwks"]).stdout,
    )
    .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");

    // The lifetime asked for, within upstream's bounds.
    let two_hours = create_token(&server, &["default", "--duration=2h"]);
    let (iat, exp) = kubox_satoken::lifetime(&two_hours).unwrap();
    assert_eq!(exp - iat, 7200);
    let out = server.kubectl(&["create", "token", "default", "--duration=5m"]);
    assert!(
        text(&out.stderr).contains("may not specify a duration less than 10 minutes"),
        "{}",
        text(&out.stderr)
    );
    let out = server.kubectl(&["create", "token", "nobody"]);
    assert!(
        text(&out.stderr).contains(r#"serviceaccounts "nobody" not found"#),
        "{}",
        text(&out.stderr)
    );

    // Garbage, another audience, an expired token: 401, never 500.
    assert!(refused(&server, "garbage"));
    assert!(refused(&server, &format!("{token}x")));
    assert!(refused(
        &server,
        &create_token(&server, &["default", "--audience=vault"])
    ));
    let account = Ref {
        name: "default".into(),
        uid: uid(&server, "sa", "default"),
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let issuer = kubox_satoken::DEFAULT_ISSUER;
    let expired = Claims::bound(
        issuer,
        vec![issuer.into()],
        "default",
        account.clone(),
        None,
        now - 7200,
        3600,
    );
    assert!(refused(&server, &key(&server).sign(&expired).unwrap()));
    let valid = Claims::bound(
        issuer,
        vec![issuer.into()],
        "default",
        account,
        None,
        now,
        3600,
    );
    assert!(
        !refused(&server, &key(&server).sign(&valid).unwrap()),
        "the same claims, unexpired, are good"
    );

    // A token dies with its ServiceAccount, and with the object it is bound to.
    server.kubectl_ok(&["create", "serviceaccount", "bot"]);
    let bot = create_token(&server, &["bot"]);
    assert_eq!(
        user_of(&server, &bot)["username"],
        "system:serviceaccount:default:bot"
    );
    server.kubectl_ok(&["delete", "serviceaccount", "bot"]);
    until("the deleted account's token to be refused", || {
        refused(&server, &bot)
    })
    .await;
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "anchor",
        "--from-literal=a=1",
    ]);
    let anchored = create_token(
        &server,
        &[
            "default",
            "--bound-object-kind=Secret",
            "--bound-object-name=anchor",
        ],
    );
    assert!(!refused(&server, &anchored));
    server.kubectl_ok(&["delete", "secret", "anchor"]);
    until("the unbound token to be refused", || {
        refused(&server, &anchored)
    })
    .await;

    // The signing key outlives a restart, and so do its tokens.
    server.restart().await;
    assert_eq!(
        user_of(&server, &token)["username"],
        "system:serviceaccount:default:default"
    );
}

#[tokio::test]
async fn legacy_token_secrets_are_filled_and_authenticate() {
    let server = start_api_only().await;
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "default-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
    }));
    let secret: Value = eventually(
        "the token controller to fill the Secret",
        TIMEOUT,
        || async {
            let secret: Value = serde_json::from_str(&server.kubectl_ok(&[
                "get",
                "secret",
                "default-token",
                "-o",
                "json",
            ]))
            .unwrap();
            secret["data"]["token"].is_string().then_some(secret)
        },
    )
    .await;
    use base64::Engine;
    let decode = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][k].as_str().unwrap())
            .map(|b| text(&b))
            .unwrap()
    };
    assert_eq!(decode("namespace"), "default");
    assert_eq!(
        decode("ca.crt"),
        std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap()
    );
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        uid(&server, "sa", "default")
    );
    let token = decode("token");
    assert_eq!(
        user_of(&server, &token)["username"],
        "system:serviceaccount:default:default"
    );
    server.kubectl_ok(&["delete", "secret", "default-token"]);
    until("the deleted Secret's token to be refused", || {
        refused(&server, &token)
    })
    .await;
}

fn pod(name: &str, extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "initContainers": [{"name": "init", "image": "busybox", "command": ["true"]}],
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    pod
}

fn pod_spec(server: &KuboxServer, name: &str) -> Value {
    serde_json::from_str::<Value>(&server.kubectl_ok(&["get", "pod", name, "-o", "json"])).unwrap()
        ["spec"]
        .clone()
}

#[tokio::test]
async fn admission_defaults_the_service_account_and_mounts_its_token() {
    let server = start_api_only().await;
    server.apply_json(&pod("plain", json!({})));
    let spec = pod_spec(&server, "plain");
    assert_eq!(spec["serviceAccountName"], "default");
    let volume = &spec["volumes"][0];
    let name = volume["name"].as_str().unwrap();
    assert!(
        name.starts_with("kube-api-access-") && name.len() == 21,
        "{name}"
    );
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    assert_eq!(
        volume["projected"]["sources"][1]["configMap"]["name"],
        "kube-root-ca.crt"
    );
    for list in ["initContainers", "containers"] {
        assert_eq!(
            spec[list][0]["volumeMounts"],
            json!([{"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]),
            "{list}"
        );
    }

    let missing = pod("orphan", json!({"serviceAccountName": "nobody"}));
    let path = server.data_dir().join("orphan.json");
    std::fs::write(&path, missing.to_string()).unwrap();
    let out = server.kubectl(&["create", "-f", path.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains(r#"pods "orphan" is forbidden: error looking up service account default/nobody: serviceaccount "nobody" not found"#),
        "{}",
        text(&out.stderr)
    );

    // No token for a pod that turns automounting off, or whose account does.
    server.apply_json(&pod(
        "quiet",
        json!({"automountServiceAccountToken": false}),
    ));
    assert!(pod_spec(&server, "quiet")["volumes"].is_null());
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "shy"},
        "automountServiceAccountToken": false,
    }));
    server.apply_json(&pod("shy", json!({"serviceAccountName": "shy"})));
    assert!(pod_spec(&server, "shy")["volumes"].is_null());
    // The pod's own choice wins over its account's.
    server.apply_json(&pod(
        "bold",
        json!({"serviceAccountName": "shy", "automountServiceAccountToken": true}),
    ));
    assert_eq!(
        pod_spec(&server, "bold")["volumes"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn a_pods_mounted_token_authenticates_from_the_host() {
    let server = KuboxServer::start(KUBOX, &Runtime::Embedded.server_args()).await;
    server.import_busybox();
    server.run_sleeper("sleeper").await;
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let read =
        |file: &str| server.kubectl_ok(&["exec", "sleeper", "--", "cat", &format!("{dir}/{file}")]);
    let token = read("token");
    assert_eq!(read("namespace"), "default");
    assert_eq!(
        read("ca.crt"),
        std::fs::read_to_string(server.data_dir().join("pki/ca.crt")).unwrap()
    );
    let (iat, exp) = kubox_satoken::lifetime(&token).unwrap();
    assert_eq!(exp - iat, 3607);
    assert_eq!(
        user_of(&server, &token)["username"],
        "system:serviceaccount:default:default"
    );
    let env = server.kubectl_ok(&["exec", "sleeper", "--", "env"]);
    assert!(
        env.contains("KUBERNETES_SERVICE_HOST=") && env.contains("KUBERNETES_SERVICE_PORT=443"),
        "{env}"
    );
    // The mount is read-only.
    let out = server.kubectl(&[
        "exec",
        "sleeper",
        "--",
        "sh",
        "-c",
        &format!("echo x > {dir}/token"),
    ]);
    assert!(!out.status.success());
    // The token is bound to the pod: it goes with it.
    server.kubectl_ok(&["delete", "pod", "sleeper", "--wait=true"]);
    until("the deleted pod's token to be refused", || {
        refused(&server, &token)
    })
    .await;
}

/// `kubectl auth whoami` shows upstream's uid and extra: a ServiceAccount's
/// UID, its token's ID and the pod the token is bound to; a client
/// certificate's SHA-256 fingerprint and no uid.
#[tokio::test]
async fn whoami_shows_the_uid_and_extra_of_each_credential() {
    let server = start_api_only().await;
    let account = uid(&server, "sa", "default");
    let token = create_token(&server, &["default"]);
    let jti = key(&server).claims(&token).unwrap().jti.unwrap();
    assert_eq!(
        user_of(&server, &token),
        json!({
            "username": "system:serviceaccount:default:default",
            "uid": account,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [format!("JTI={jti}")]},
        })
    );

    server.apply_json(&pod("bound", json!({})));
    let pod_uid = uid(&server, "pod", "bound");
    let bound = create_token(
        &server,
        &[
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=bound",
        ],
    );
    let jti = key(&server).claims(&bound).unwrap().jti.unwrap();
    assert_eq!(
        user_of(&server, &bound)["extra"],
        json!({
            "authentication.kubernetes.io/credential-id": [format!("JTI={jti}")],
            "authentication.kubernetes.io/pod-name": ["bound"],
            "authentication.kubernetes.io/pod-uid": [pod_uid],
        })
    );

    let fingerprint = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(server.data_dir().join("pki/admin.crt"))
        .output()
        .unwrap();
    let hex = text(&fingerprint.stdout)
        .trim()
        .rsplit_once('=')
        .unwrap()
        .1
        .replace(':', "")
        .to_lowercase();
    let admin: Value =
        serde_json::from_str(&server.kubectl_ok(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(
        admin["status"]["userInfo"],
        json!({
            "username": "kubox-admin",
            "groups": ["system:masters", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [format!("X509SHA256={hex}")]},
        })
    );
}
