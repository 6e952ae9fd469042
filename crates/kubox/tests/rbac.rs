//! RBAC end to end, with a real `kubox server` and the real kubectl,
//! openssl and curl on PATH: the seeds' user journey (J9), the default
//! policy (J8), anonymous requests (J13), access reviews, impersonation,
//! escalation prevention and ClusterRole aggregation; the Node authorizer
//! and NodeRestriction admission with a node's certificate.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually, kubectl_as};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Server without a node: these tests need the API only.
async fn start() -> KuboxServer {
    KuboxServer::start(KUBOX, &["--disable-agent"]).await
}

async fn until_ok(kubeconfig: &Path, args: &[&str]) -> String {
    eventually(
        "the new binding to take effect",
        Duration::from_secs(10),
        || async {
            let out = kubectl_as(kubeconfig, args);
            out.status.success().then(|| text(&out.stdout))
        },
    )
    .await
}

const BACKEND_ROLE: &str = r#"
kind: Role
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  namespace: work
  name: backend-role
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
kind: RoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: backend-rolebinding
  namespace: work
subjects:
- kind: User
  name: backend
  apiGroup: ""
roleRef:
  kind: Role
  name: backend-role
  apiGroup: ""
"#;

#[tokio::test]
async fn a_user_signed_with_openssl_gets_only_what_a_role_binding_grants() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    server.kubectl_ok(&["create", "namespace", "work"]);
    // The seeds' commands, signing with the cluster CA as kubeadm's.
    let ca = server.data_dir().join("pki");
    let (ca_crt, ca_key) = (ca.join("ca.crt"), ca.join("ca.key"));
    run("openssl", &["genrsa", "-out", "backend.key", "2048"], d);
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            "backend.key",
            "-out",
            "backend.csr",
            "-subj",
            "/CN=backend/O=dev",
        ],
        d,
    );
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "backend.csr",
            "-CA",
            ca_crt.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            "backend.crt",
            "-days",
            "365",
        ],
        d,
    );
    let config = d.join("config");
    std::fs::copy(server.kubeconfig(), &config).unwrap();
    let cfg = config.to_str().unwrap();
    let crt = d.join("backend.crt");
    let key = d.join("backend.key");
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-credentials",
            "backend",
            &format!("--client-certificate={}", crt.display()),
            &format!("--client-key={}", key.display()),
        ],
        d,
    );
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-context",
            "backend-context",
            "--cluster=kubox",
            "--namespace=work",
            "--user=backend",
        ],
        d,
    );
    let as_backend = |args: &[&str]| {
        let mut all = vec!["--context=backend-context"];
        all.extend_from_slice(args);
        kubectl_as(&config, &all)
    };

    let out = as_backend(&["get", "pods"]);
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): pods is forbidden: User \"backend\" cannot list resource \"pods\" in API group \"\" in the namespace \"work\"\n"
    );
    let whoami = text(&as_backend(&["auth", "whoami"]).stdout);
    assert!(
        whoami.contains("backend") && whoami.contains("[dev system:authenticated]"),
        "{whoami}"
    );

    let manifest = d.join("backend.yaml");
    std::fs::write(&manifest, BACKEND_ROLE).unwrap();
    server.kubectl_ok(&["create", "-f", manifest.to_str().unwrap()]);
    let binding = server.kubectl_ok(&[
        "get",
        "rolebinding",
        "backend-rolebinding",
        "-n",
        "work",
        "-o",
        "jsonpath={.roleRef.apiGroup} {.subjects[0].apiGroup}",
    ]);
    assert_eq!(
        binding,
        "rbac.authorization.k8s.io rbac.authorization.k8s.io"
    );

    let pods = until_ok(&config, &["--context=backend-context", "get", "pods"]).await;
    assert_eq!(pods, "");
    assert_eq!(
        text(&as_backend(&["get", "ns"]).stderr),
        "Error from server (Forbidden): namespaces is forbidden: User \"backend\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope\n"
    );
    assert_eq!(
        text(&as_backend(&["get", "deploy"]).stderr),
        "Error from server (Forbidden): deployments.apps is forbidden: User \"backend\" cannot list resource \"deployments\" in API group \"apps\" in the namespace \"work\"\n"
    );
    assert_eq!(
        server.kubectl_ok(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "-n",
            "work",
            "--as=backend"
        ]),
        "yes\n"
    );
    let no = server.kubectl(&[
        "auth",
        "can-i",
        "list",
        "deploy",
        "-n",
        "work",
        "--as=backend",
    ]);
    assert_eq!(
        (text(&no.stdout).as_str(), no.status.code()),
        ("no\n", Some(1))
    );
    // The rules as the user sees them.
    let list = text(&as_backend(&["auth", "can-i", "--list"]).stdout);
    let pods_row = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_default();
    assert!(pods_row.contains("[get list watch]"), "{list}");
    // Deleting the binding takes the access away again.
    server.kubectl_ok(&["delete", "rolebinding", "backend-rolebinding", "-n", "work"]);
    eventually("access to be revoked", Duration::from_secs(10), || async {
        (!as_backend(&["get", "pods"]).status.success()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubox_user_create_writes_a_working_kubeconfig() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jane.kubeconfig");
    let dd = server.data_dir().to_str().unwrap().to_owned();
    run(
        KUBOX,
        &[
            "user",
            "create",
            "jane",
            "--group",
            "qa",
            "--data-dir",
            &dd,
            "-o",
            path.to_str().unwrap(),
        ],
        dir.path(),
    );
    let whoami = text(
        &kubectl_as(
            &path,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
        )
        .stdout,
    );
    assert_eq!(whoami, r#"jane ["qa","system:authenticated"]"#);
    assert_eq!(
        text(&kubectl_as(&path, &["config", "current-context"]).stdout),
        "jane@kubox\n"
    );
    let out = kubectl_as(&path, &["get", "secrets", "-n", "default"]);
    assert!(
        text(&out.stderr).contains("User \"jane\" cannot list resource \"secrets\""),
        "{}",
        text(&out.stderr)
    );
    // A group binding to the default `view` role: reads, but no secrets and no writes.
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "qa-view",
        "--clusterrole=view",
        "--group=qa",
        "-n",
        "default",
    ]);
    until_ok(&path, &["get", "configmaps", "-n", "default"]).await;
    assert!(
        !kubectl_as(&path, &["get", "secrets", "-n", "default"])
            .status
            .success()
    );
    assert!(
        !kubectl_as(&path, &["create", "configmap", "x", "-n", "default"])
            .status
            .success()
    );
    // Reserved names are refused.
    let reserved = Command::new(KUBOX)
        .args(["user", "create", "system:admin", "--data-dir", &dd])
        .output()
        .unwrap();
    assert!(!reserved.status.success());
}

/// The seeds' `new_user.sh` and `del_user.sh` in one command each: a
/// namespace of the user's own with a role, a quota and default limits, and
/// a kubeconfig working in it; deleting the user takes all of it away.
#[tokio::test]
async fn kubox_user_add_gives_a_namespace_with_a_role_and_a_quota() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.kubeconfig");
    let dd = server.data_dir().to_str().unwrap().to_owned();
    let add = [
        "user",
        "add",
        "dev",
        "--role",
        "edit",
        "--quota",
        "cpu=1,memory=1Gi,pods=2",
        "--data-dir",
        &dd,
        "-o",
        path.to_str().unwrap(),
    ];
    run(KUBOX, &add, dir.path());
    // Run again, it keeps what is there.
    run(KUBOX, &add, dir.path());
    let as_dev = |args: &[&str]| kubectl_as(&path, args);
    assert_eq!(
        text(
            &as_dev(&[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.contexts[0].context.namespace}"
            ])
            .stdout
        ),
        "ns-dev"
    );
    assert_eq!(
        text(&as_dev(&["auth", "can-i", "create", "deployments"]).stdout),
        "yes\n"
    );
    // edit, not admin: no granting of roles, nothing outside the namespace.
    assert_eq!(
        text(&as_dev(&["auth", "can-i", "create", "rolebindings"]).stdout),
        "no\n"
    );
    let out = as_dev(&["get", "pods", "-n", "default"]);
    assert!(
        text(&out.stderr).contains(
            r#"User "dev" cannot list resource "pods" in API group "" in the namespace "default""#
        ),
        "{}",
        text(&out.stderr)
    );
    // A pod naming no resources gets the defaults the quota needs.
    until_ok(
        &path,
        &["run", "one", "--image=busybox", "--", "sleep", "3600"],
    )
    .await;
    let limits = text(
        &as_dev(&[
            "get",
            "pod",
            "one",
            "-o",
            "jsonpath={.spec.containers[0].resources}",
        ])
        .stdout,
    );
    let limits: serde_json::Value = serde_json::from_str(&limits).unwrap();
    assert_eq!(limits["requests"]["cpu"], "100m", "{limits}");
    assert_eq!(limits["limits"]["memory"], "512Mi", "{limits}");
    as_dev(&["run", "two", "--image=busybox", "--", "sleep", "3600"]);
    let third = as_dev(&["run", "three", "--image=busybox", "--", "sleep", "3600"]);
    assert!(
        text(&third.stderr).contains(
            "exceeded quota: quota-dev, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{}",
        text(&third.stderr)
    );

    run(
        KUBOX,
        &["user", "delete", "dev", "--data-dir", &dd],
        dir.path(),
    );
    eventually(
        "the user's namespace to go",
        Duration::from_secs(60),
        || async {
            let out = server.kubectl(&["get", "namespace", "ns-dev"]);
            (!out.status.success()).then_some(())
        },
    )
    .await;
    let out = as_dev(&["get", "pods"]);
    assert!(
        text(&out.stderr).contains(
            r#"User "dev" cannot list resource "pods" in API group "" in the namespace "ns-dev""#
        ),
        "{}",
        text(&out.stderr)
    );
    let again = Command::new(KUBOX)
        .args(["user", "delete", "dev", "--data-dir", &dd])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains(r#"no namespace belongs to user "dev""#));
}

#[tokio::test]
async fn anonymous_requests_see_only_health_and_version() {
    let server = start().await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", server.port());
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sk", "-w", "\n%{http_code}", &url(path)])
            .output()
            .expect("running curl");
        let body = text(&out.stdout);
        let (body, code) = body.rsplit_once('\n').unwrap();
        (body.to_owned(), code.to_owned())
    };
    let (body, code) = curl("/api/v1/namespaces");
    assert_eq!(code, "403");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status,
        serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope",
            "reason": "Forbidden",
            "details": {"kind": "namespaces"},
            "code": 403,
        })
    );
    for public in ["/version", "/healthz", "/readyz", "/livez"] {
        assert_eq!(curl(public).1, "200", "{public}");
    }
    let (body, code) = curl("/apis");
    assert_eq!(code, "403");
    assert!(
        body.contains(r#"forbidden: User \"system:anonymous\" cannot get path \"/apis\""#),
        "{body}"
    );
    // In AlwaysAllow mode everything is allowed, as upstream's mode.
    let open = KuboxServer::start(
        KUBOX,
        &["--disable-agent", "--authorization-mode", "AlwaysAllow"],
    )
    .await;
    let out = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://127.0.0.1:{}/api/v1/namespaces", open.port()),
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "200");
}

#[tokio::test]
async fn default_policy_is_upstreams() {
    let server = start().await;
    let crb = server.kubectl_ok(&["get", "clusterrolebinding", "cluster-admin", "-o", "json"]);
    let crb: serde_json::Value = serde_json::from_str(&crb).unwrap();
    assert_eq!(
        crb["metadata"]["labels"]["kubernetes.io/bootstrapping"],
        "rbac-defaults"
    );
    assert_eq!(
        crb["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
        "true"
    );
    assert_eq!(
        crb["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}])
    );
    let describe = server.kubectl_ok(&["describe", "clusterrole", "cluster-admin"]);
    assert!(
        describe.contains("*.*        []                 []              [*]"),
        "{describe}"
    );
    let names = server.kubectl_ok(&["get", "clusterroles", "-o", "name"]);
    for role in [
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:node",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:controller:replicaset-controller",
    ] {
        assert!(
            names.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}\n")),
            "{role}: {names}"
        );
    }
    let roles = server.kubectl_ok(&["get", "roles", "-n", "kube-system", "-o", "name"]);
    assert!(
        roles.contains("system::leader-locking-kube-scheduler"),
        "{roles}"
    );
    // The default roles against verbs and resources, as upstream's documented rules.
    let can = |user: &str, args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let rb = format!("--as={user}");
        all.extend_from_slice(&[rb.as_str(), "-n", "team"]);
        server.kubectl(&all).status.success()
    };
    server.kubectl_ok(&["create", "namespace", "team"]);
    for (role, user) in [("view", "v"), ("edit", "e"), ("admin", "a")] {
        server.kubectl_ok(&[
            "create",
            "rolebinding",
            role,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
            "-n",
            "team",
        ]);
    }
    // The aggregated roles are filled by the controller.
    eventually(
        "view, edit and admin to be aggregated",
        Duration::from_secs(20),
        || async {
            (can("a", &["create", "rolebindings"])
                && can("e", &["create", "deployments.apps"])
                && can("v", &["list", "pods"]))
            .then_some(())
        },
    )
    .await;
    let table: &[(&[&str], [bool; 3])] = &[
        (&["get", "pods"], [true, true, true]),
        (&["list", "deployments.apps"], [true, true, true]),
        (&["get", "pods", "--subresource=log"], [true, true, true]),
        (&["list", "secrets"], [false, true, true]),
        (&["create", "pods"], [false, true, true]),
        (
            &["create", "pods", "--subresource=exec"],
            [false, true, true],
        ),
        (&["delete", "services"], [false, true, true]),
        (
            &["patch", "deployments.apps", "--subresource=scale"],
            [false, true, true],
        ),
        (
            &["create", "roles.rbac.authorization.k8s.io"],
            [false, false, true],
        ),
        (
            &["create", "localsubjectaccessreviews.authorization.k8s.io"],
            [false, false, true],
        ),
        (&["update", "resourcequotas"], [false, false, false]),
        (&["create", "namespaces"], [false, false, false]),
        (&["list", "nodes"], [false, false, false]),
    ];
    for (args, want) in table {
        let got = [can("v", args), can("e", args), can("a", args)];
        assert_eq!(got, *want, "view/edit/admin: {}", args.join(" "));
    }
}

#[tokio::test]
async fn escalation_is_refused_and_aggregation_follows_labels() {
    let server = start().await;
    server.kubectl_ok(&["create", "namespace", "team"]);
    // An admin of the namespace may grant what they hold, not more.
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "lead-admin",
        "--clusterrole=admin",
        "--user=lead",
        "-n",
        "team",
    ]);
    eventually(
        "admin to be aggregated",
        Duration::from_secs(20),
        || async {
            server
                .kubectl(&[
                    "auth",
                    "can-i",
                    "create",
                    "roles",
                    "-n",
                    "team",
                    "--as=lead",
                ])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    let out = server.kubectl(&[
        "create",
        "role",
        "nodes",
        "--verb=get",
        "--resource=nodes",
        "-n",
        "team",
        "--as=lead",
    ]);
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): roles.rbac.authorization.k8s.io \"nodes\" is forbidden: user \"lead\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}\n"
    );
    server.kubectl_ok(&[
        "create",
        "role",
        "pods",
        "--verb=get,list",
        "--resource=pods",
        "-n",
        "team",
        "--as=lead",
    ]);
    let out = server.kubectl(&[
        "create",
        "rolebinding",
        "x",
        "--clusterrole=cluster-admin",
        "--user=lead",
        "-n",
        "team",
        "--as=lead",
    ]);
    assert!(
        text(&out.stderr).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        text(&out.stderr)
    );
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "dev-edit",
        "--clusterrole=edit",
        "--user=dev",
        "-n",
        "team",
        "--as=lead",
    ]);
    // With `bind` on a role, binding it needs no more.
    server.kubectl_ok(&[
        "create",
        "clusterrole",
        "binder",
        "--verb=bind",
        "--resource=clusterroles",
        "--resource-name=cluster-admin",
    ]);
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "lead-binder",
        "--clusterrole=binder",
        "--user=lead",
        "-n",
        "team",
    ]);
    eventually("bind to be granted", Duration::from_secs(10), || async {
        server
            .kubectl(&[
                "create",
                "rolebinding",
                "x",
                "--clusterrole=cluster-admin",
                "--user=lead",
                "-n",
                "team",
                "--as=lead",
            ])
            .status
            .success()
            .then_some(())
    })
    .await;

    // A labelled ClusterRole joins view, and leaves it again.
    server.kubectl_ok(&[
        "create",
        "clusterrole",
        "widgets-view",
        "--verb=get,list",
        "--resource=nodes",
    ]);
    server.kubectl_ok(&[
        "label",
        "clusterrole",
        "widgets-view",
        "rbac.authorization.k8s.io/aggregate-to-view=true",
    ]);
    // Core nodes, exactly: view already aggregates metrics.k8s.io's nodes.
    let grants_core_nodes = |role: &str| {
        server
            .kubectl_ok(&[
                "get",
                "clusterrole",
                role,
                "-o",
                r#"jsonpath={range .rules[*]}{.apiGroups}{.resources}{"\n"}{end}"#,
            ])
            .lines()
            .any(|l| l == r#"[""]["nodes"]"#)
    };
    let view_has_widgets = || grants_core_nodes("view");
    eventually("view to gain widgets", Duration::from_secs(20), || async {
        view_has_widgets().then_some(())
    })
    .await;
    // edit aggregates view, so it has them too.
    eventually("edit to gain widgets", Duration::from_secs(20), || async {
        grants_core_nodes("edit").then_some(())
    })
    .await;
    server.kubectl_ok(&["delete", "clusterrole", "widgets-view"]);
    eventually("view to lose widgets", Duration::from_secs(20), || async {
        (!view_has_widgets()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn service_accounts_and_impersonation() {
    let server = start().await;
    server.kubectl_ok(&["create", "namespace", "work"]);
    server.kubectl_ok(&["create", "serviceaccount", "bot", "-n", "work"]);
    server.kubectl_ok(&[
        "create",
        "role",
        "cm-reader",
        "--verb=get,list",
        "--resource=configmaps",
        "-n",
        "work",
    ]);
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "bot-reads",
        "--role=cm-reader",
        "--serviceaccount=work:bot",
        "-n",
        "work",
    ]);
    let sa = "--as=system:serviceaccount:work:bot";
    eventually("the binding to apply", Duration::from_secs(10), || async {
        server
            .kubectl(&["get", "configmaps", "-n", "work", sa])
            .status
            .success()
            .then_some(())
    })
    .await;
    let whoami = server.kubectl_ok(&[
        "auth",
        "whoami",
        sa,
        "-o",
        "jsonpath={.status.userInfo.groups}",
    ]);
    assert_eq!(
        whoami,
        r#"["system:serviceaccounts","system:serviceaccounts:work","system:authenticated"]"#
    );
    let out = server.kubectl(&["get", "configmaps", "-n", "default", sa]);
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): configmaps is forbidden: User \"system:serviceaccount:work:bot\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\"\n"
    );
    // Every ServiceAccount of a namespace, by its group.
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "all-sa",
        "--role=cm-reader",
        "--group=system:serviceaccounts:work",
        "-n",
        "work",
    ]);
    eventually(
        "the group binding to apply",
        Duration::from_secs(10),
        || async {
            server
                .kubectl(&[
                    "get",
                    "configmaps",
                    "-n",
                    "work",
                    "--as=system:serviceaccount:work:other",
                ])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    // Impersonating needs the `impersonate` verb.
    let dir = tempfile::tempdir().unwrap();
    let jane = dir.path().join("jane");
    let dd = server.data_dir().to_str().unwrap().to_owned();
    run(
        KUBOX,
        &[
            "user",
            "create",
            "jane",
            "--data-dir",
            &dd,
            "-o",
            jane.to_str().unwrap(),
        ],
        dir.path(),
    );
    let out = kubectl_as(&jane, &["get", "configmaps", "-n", "work", sa]);
    assert_eq!(
        text(&out.stderr),
        "Error from server (Forbidden): serviceaccounts \"bot\" is forbidden: User \"jane\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"work\"\n"
    );
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "jane-edit",
        "--clusterrole=edit",
        "--user=jane",
        "-n",
        "work",
    ]);
    until_ok(&jane, &["get", "configmaps", "-n", "work", sa]).await;
    // SubjectAccessReview as the API server's callers ask it.
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:work:bot", "resourceAttributes": {"namespace": "work", "verb": "list", "resource": "configmaps"}},
    });
    let file = dir.path().join("sar.json");
    std::fs::write(&file, review.to_string()).unwrap();
    let answer = server.kubectl_ok(&[
        "create",
        "--validate=false",
        "-f",
        file.to_str().unwrap(),
        "-o",
        "jsonpath={.status.allowed}",
    ]);
    assert_eq!(answer, "true");
}

#[tokio::test]
async fn a_certificate_signing_request_approved_with_kubectl_gives_a_client_certificate() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run("openssl", &["genrsa", "-out", "dev.key", "2048"], d);
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            "dev.key",
            "-out",
            "dev.csr",
            "-subj",
            "/CN=dev1/O=dev",
        ],
        d,
    );
    use base64::Engine;
    let request =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(d.join("dev.csr")).unwrap());
    let csr = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "dev1"},
        "spec": {
            "request": request,
            "signerName": "kubernetes.io/kube-apiserver-client",
            "expirationSeconds": 86400,
            "usages": ["client auth"],
        },
    });
    server.apply_json(&csr);
    let requestor = server.kubectl_ok(&["get", "csr", "dev1", "-o", "jsonpath={.spec.username}"]);
    assert_eq!(requestor, "kubox-admin");
    assert!(
        server
            .kubectl_ok(&["get", "csr", "dev1", "-o", "jsonpath={.status.certificate}"])
            .is_empty()
    );
    // Updating the approval subresource is not enough: approving needs
    // `approve` on the signer (by name or its domain's `/*`), issuing a
    // certificate `sign`, as upstream's CertificateApproval and
    // CertificateSigning admission.
    server.kubectl_ok(&[
        "create",
        "clusterrole",
        "csr-writer",
        "--verb=get,list,update,patch",
        "--resource=certificatesigningrequests,certificatesigningrequests/approval,certificatesigningrequests/status",
    ]);
    server.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "csr-writer",
        "--clusterrole=csr-writer",
        "--user=approver",
    ]);
    let refused_to = |verb: &str| {
        format!(
            "Error from server (Forbidden): certificatesigningrequests.certificates.k8s.io \"dev1\" is forbidden: user not permitted to {verb} requests with signerName \"kubernetes.io/kube-apiserver-client\""
        )
    };
    let approve = || server.kubectl(&["certificate", "approve", "dev1", "--as=approver"]);
    let out = eventually(
        "the binding to take effect",
        Duration::from_secs(20),
        || {
            let out = approve();
            let ready = !text(&out.stderr).contains("cannot get resource");
            async move { ready.then_some(out) }
        },
    )
    .await;
    assert_eq!(text(&out.stderr).trim(), refused_to("approve"));
    let out = server.kubectl(&[
        "patch",
        "csr",
        "dev1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"certificate":"Zm9v"}}"#,
        "--as=approver",
    ]);
    assert_eq!(text(&out.stderr).trim(), refused_to("sign"));
    server.apply_json(&serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "signer-approver"},
        "rules": [{
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["signers"],
            "resourceNames": ["kubernetes.io/*"],
            "verbs": ["approve"],
        }],
    }));
    server.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "signer-approver",
        "--clusterrole=signer-approver",
        "--user=approver",
    ]);
    let out = eventually(
        "the approve grant to take effect",
        Duration::from_secs(20),
        || {
            let out = approve();
            let ok = out.status.success();
            async move { ok.then_some(out) }
        },
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "certificatesigningrequest.certificates.k8s.io/dev1 approved\n"
    );
    let cert = eventually(
        "the certificate to be issued",
        Duration::from_secs(20),
        || async {
            let c =
                server.kubectl_ok(&["get", "csr", "dev1", "-o", "jsonpath={.status.certificate}"]);
            (!c.is_empty()).then_some(c)
        },
    )
    .await;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert.trim())
        .unwrap();
    std::fs::write(d.join("dev.crt"), pem).unwrap();
    let config = d.join("config");
    std::fs::copy(server.kubeconfig(), &config).unwrap();
    let cfg = config.to_str().unwrap();
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-credentials",
            "dev1",
            &format!("--client-certificate={}", d.join("dev.crt").display()),
            &format!("--client-key={}", d.join("dev.key").display()),
        ],
        d,
    );
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-context",
            "dev1",
            "--cluster=kubox",
            "--user=dev1",
        ],
        d,
    );
    let whoami = text(
        &kubectl_as(
            &config,
            &[
                "--context=dev1",
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
        )
        .stdout,
    );
    assert_eq!(whoami, r#"dev1 ["dev","system:authenticated"]"#);
}

/// A kubeconfig for node `name`: its key and a certificate the cluster CA
/// signs, as a node's CSR gets one.
fn node_kubeconfig(server: &KuboxServer, dir: &Path, name: &str) -> std::path::PathBuf {
    let pki = server.data_dir().join("pki");
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    run("openssl", &["genrsa", "-out", &key, "2048"], dir);
    let subject = format!("/CN=system:node:{name}/O=system:nodes");
    run(
        "openssl",
        &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject],
        dir,
    );
    let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_crt.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
        ],
        dir,
    );
    let config = dir.join(format!("{name}.kubeconfig"));
    std::fs::copy(server.kubeconfig(), &config).unwrap();
    let cfg = config.to_str().unwrap();
    let user = format!("system:node:{name}");
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-credentials",
            &user,
            "--client-certificate",
            dir.join(&crt).to_str().unwrap(),
            "--client-key",
            dir.join(&key).to_str().unwrap(),
            "--embed-certs=true",
        ],
        dir,
    );
    run(
        "kubectl",
        &[
            "--kubeconfig",
            cfg,
            "config",
            "set-context",
            "--current",
            "--user",
            &user,
        ],
        dir,
    );
    config
}

/// What kubectl prints for a request refused with `message`.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "allowed: {}", text(&out.stdout));
    text(&out.stderr).trim().to_owned()
}

fn pod(
    name: &str,
    node: &str,
    secret_volume: Option<&str>,
    secret_env: Option<&str>,
) -> serde_json::Value {
    let mut container = serde_json::json!({"name": "c", "image": "busybox"});
    if let Some(s) = secret_env {
        container["env"] = serde_json::json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": s, "key": "token"}}}]);
    }
    let volumes = match secret_volume {
        Some(s) => serde_json::json!([{"name": "creds", "secret": {"secretName": s}}]),
        None => serde_json::json!([]),
    };
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [container], "volumes": volumes},
    })
}

#[tokio::test]
async fn a_node_reads_only_its_pods_secrets_and_writes_only_its_own_node() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let dir = tempfile::tempdir().unwrap();
    let node_a = node_kubeconfig(&server, dir.path(), "node-a");
    for node in ["node-a", "node-b"] {
        server.apply_json(
            &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
        );
    }
    for secret in ["on-a", "on-b", "unrelated"] {
        server.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            secret,
            "--from-literal=token=t",
        ]);
    }
    server.apply_json(&pod("web-a", "node-a", Some("on-a"), None));
    server.apply_json(&pod("web-b", "node-b", None, Some("on-b")));

    // The secret of its pod, once the node graph has the pod.
    let got = eventually(
        "node-a reads its pod's secret",
        Duration::from_secs(10),
        || async {
            let out = kubectl_as(&node_a, &["get", "secret", "on-a", "-o", "name"]);
            out.status.success().then(|| text(&out.stdout))
        },
    )
    .await;
    assert_eq!(got.trim(), "secret/on-a");
    // A watch of that one secret is a read of it.
    let out = kubectl_as(
        &node_a,
        &[
            "get",
            "secrets",
            "--field-selector",
            "metadata.name=on-a",
            "-o",
            "name",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    for secret in ["on-b", "unrelated"] {
        let out = kubectl_as(&node_a, &["get", "secret", secret]);
        assert_eq!(
            refused(&out),
            format!(
                "Error from server (Forbidden): secrets \"{secret}\" is forbidden: User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-a' and this object"
            )
        );
    }
    let out = kubectl_as(&node_a, &["get", "secrets"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): secrets is forbidden: User \"system:node:node-a\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\": No Object name found"
    );
    // Its own pods by field selector, not everyone's.
    let out = kubectl_as(
        &node_a,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=node-a",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "pod/web-a",
        "{}",
        text(&out.stderr)
    );
    let out = kubectl_as(&node_a, &["get", "pods"]);
    assert!(
        refused(&out).ends_with(
            "cannot list resource \"pods\" in API group \"\" in the namespace \"default\": can only list/watch pods with spec.nodeName field selector"
        ),
        "{}",
        text(&out.stderr)
    );

    // Another Node is not read by name; what the service proxy and the pod
    // network follow is listed (kubox:node-network), but not what only
    // kube-proxy's own identity reads (system:node-proxier's Endpoints).
    let out = kubectl_as(&node_a, &["get", "node", "node-b"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): nodes \"node-b\" is forbidden: User \"system:node:node-a\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: node 'node-a' cannot read 'node-b', only its own Node object"
    );
    for read in [
        &["get", "nodes", "-o", "name"][..],
        &["get", "services", "-A", "-o", "name"],
        &["get", "endpointslices", "-A", "-o", "name"],
        &["get", "node", "node-a", "-o", "name"],
    ] {
        let out = kubectl_as(&node_a, read);
        assert!(out.status.success(), "{read:?}: {}", text(&out.stderr));
    }
    let out = kubectl_as(&node_a, &["get", "endpoints", "-A"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): endpoints is forbidden: User \"system:node:node-a\" cannot list resource \"endpoints\" in API group \"\" at the cluster scope"
    );
    let proxier: serde_json::Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "clusterrolebinding",
        "system:node-proxier",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        proxier["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-proxy"}])
    );

    // NodeRestriction: not a restricted label of its own.
    let out = kubectl_as(
        &node_a,
        &[
            "label",
            "node",
            "node-a",
            "node-restriction.kubernetes.io/trusted=yes",
        ],
    );
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): nodes \"node-a\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/trusted"
    );
    let out = kubectl_as(&node_a, &["label", "node", "node-a", "rack=r1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Its own status, as a kubelet reports it (PUT of `nodes/status`: the
    // Node authorizer, as upstream's, lets a node write its status but not
    // read it, which `kubectl patch --subresource=status` would first), and
    // not another's (NodeRestriction).
    let put_status = |node: &str| {
        let out = server.kubectl_ok(&["get", "node", node, "-o", "json"]);
        let mut object: serde_json::Value = serde_json::from_str(&out).unwrap();
        object["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]);
        let file = dir.path().join(format!("{node}-status.json"));
        std::fs::write(&file, object.to_string()).unwrap();
        let path = format!("/api/v1/nodes/{node}/status");
        kubectl_as(
            &node_a,
            &["replace", "--raw", &path, "-f", file.to_str().unwrap()],
        )
    };
    let out = put_status("node-a");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ready = server.kubectl_ok(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
    ]);
    assert_eq!(ready, "KubeletReady");
    let out = put_status("node-b");
    let message = refused(&out);
    assert!(
        message.contains(
            "nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\""
        ),
        "{message}"
    );

    // Its pods' status only, and no one else's pod deleted.
    let out = kubectl_as(&node_a, &["delete", "pod", "web-b"]);
    assert_eq!(
        refused(&out),
        "Error from server (Forbidden): pods \"web-b\" is forbidden: node \"node-a\" can only delete pods with spec.nodeName set to itself"
    );

    // system:node is bound to no one: nodes get its rules through the Node authorizer only.
    let binding: serde_json::Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "clusterrolebinding",
        "system:node",
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(
        binding["subjects"].as_array().is_none_or(Vec::is_empty),
        "{binding}"
    );
}

/// The node graph is fed in the background; a node's read right after its
/// pod is bound waits for it rather than being refused.
#[tokio::test]
async fn a_node_reads_its_pods_secret_right_after_the_bind() {
    use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, Secret};
    use kube::api::{Api, PostParams};
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let dir = tempfile::tempdir().unwrap();
    // rustls takes X.509 v3 certificates only, as the CSR signer issues.
    let ca = kubox_apiserver::pki::Pki::load_or_create(&server.data_dir().join("pki")).unwrap();
    let creds = ca
        .issue_client("system:node:node-a", &["system:nodes"])
        .unwrap();
    let url = format!("https://127.0.0.1:{}", server.port());
    let node_config = dir.path().join("node-a.kubeconfig");
    let contents = kubox_apiserver::pki::kubeconfig("kubox", &url, ca.ca_pem(), "node-a", &creds);
    std::fs::write(&node_config, contents).unwrap();
    let (admin, _) = kubox_client::connect(&server.kubeconfig()).await.unwrap();
    let (node, _) = kubox_client::connect(&node_config).await.unwrap();
    let nodes: Api<Node> = Api::all(admin.clone());
    let node_a = serde_json::from_value(serde_json::json!({"metadata": {"name": "node-a"}}));
    nodes
        .create(&PostParams::default(), &node_a.unwrap())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let read: Api<Secret> = Api::namespaced(node, "default");
    for i in 0..30 {
        let name = format!("s{i}");
        let secret = serde_json::json!({"metadata": {"name": name}, "stringData": {"k": "v"}});
        let secret = serde_json::from_value(secret).unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let unbound = serde_json::from_value(pod(&format!("p{i}"), "", Some(&name), None));
        let created = pods
            .create(&PostParams::default(), &unbound.unwrap())
            .await
            .unwrap();
        let binding = Binding {
            metadata: created.metadata.clone(),
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some("node-a".into()),
                ..Default::default()
            },
        };
        let pod_name = format!("p{i}");
        let url = format!("/api/v1/namespaces/default/pods/{pod_name}/binding");
        let request = http::Request::post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&binding).unwrap())
            .unwrap();
        let _: serde_json::Value = admin.request(request).await.unwrap();
        if let Err(e) = read.get(&name).await {
            panic!("read {i} right after the bind refused: {e}");
        }
    }
}
