//! Admission end to end with a real `kubox server` and the real kubectl:
//! LimitRange defaults and bounds, ResourceQuota refusals of creates and
//! of updates by what they add (and that concurrent creates never overrun
//! a quota), the quota controller's
//! recount, and Pod Security admission (J26) with its warnings.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Server without a node: admission needs the API and controllers only.
async fn start() -> KuboxServer {
    KuboxServer::start(KUBOX, &["--disable-agent"]).await
}

/// Writes `manifest` as `dir/file` and runs `kubectl apply -f file` from
/// `dir`, as a user would (kubectl names the file in its errors).
fn apply(server: &KuboxServer, dir: &Path, file: &str, manifest: &str) -> Output {
    std::fs::write(dir.join(file), manifest).expect("writing the manifest");
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["apply", "-f", file])
        .current_dir(dir)
        .output()
        .expect("running kubectl")
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "kubectl succeeded: {}",
        text(&out.stdout)
    );
    text(&out.stderr).trim_end().to_owned()
}

fn pod(name: &str, ns: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
  containers:
  - name: app
    image: busybox
    resources: {resources}
"
    )
}

/// Waits until the quota controller has counted a quota's usage.
async fn quota_counted(server: &KuboxServer, ns: &str, name: &str, want: &str) {
    eventually("the quota's usage", Duration::from_secs(30), || async {
        let out = server.kubectl(&[
            "get",
            "quota",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.used}",
        ]);
        (text(&out.stdout) == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn limit_ranges_default_containers_and_refuse_out_of_bounds_pods() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    server.kubectl_ok(&["create", "namespace", "limits"]);
    let range = "apiVersion: v1
kind: LimitRange
metadata:
  name: cpu-mem
  namespace: limits
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 200m, memory: 64Mi}
    min: {cpu: 100m}
    max: {cpu: '1', memory: 1Gi}
    maxLimitRequestRatio: {cpu: '4'}
";
    assert!(
        apply(&server, dir.path(), "range.yaml", range)
            .status
            .success()
    );

    let out = apply(
        &server,
        dir.path(),
        "plain.yaml",
        &pod("plain", "limits", "{}"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resources = server.kubectl_ok(&[
        "get",
        "pod",
        "plain",
        "-n",
        "limits",
        "-o",
        "jsonpath={.spec.containers[0].resources}",
    ]);
    assert_eq!(
        resources,
        r#"{"limits":{"cpu":"500m","memory":"128Mi"},"requests":{"cpu":"200m","memory":"64Mi"}}"#
    );
    let annotation = server.kubectl_ok(&[
        "get",
        "pod",
        "plain",
        "-n",
        "limits",
        "-o",
        r"jsonpath={.metadata.annotations.kubernetes\.io/limit-ranger}",
    ]);
    assert_eq!(
        annotation,
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );
    let qos = server.kubectl_ok(&[
        "get",
        "pod",
        "plain",
        "-n",
        "limits",
        "-o",
        "jsonpath={.status.qosClass}",
    ]);
    assert_eq!(qos, "Burstable");

    let small = pod(
        "small",
        "limits",
        "{requests: {cpu: 50m}, limits: {cpu: 100m}}",
    );
    assert_eq!(
        refused(&apply(&server, dir.path(), "small.yaml", &small)),
        r#"Error from server (Forbidden): error when creating "small.yaml": pods "small" is forbidden: minimum cpu usage per Container is 100m, but request is 50m"#
    );
    let big = pod(
        "big",
        "limits",
        "{requests: {cpu: 200m}, limits: {cpu: '2', memory: 2Gi}}",
    );
    assert_eq!(
        refused(&apply(&server, dir.path(), "big.yaml", &big)),
        r#"Error from server (Forbidden): error when creating "big.yaml": pods "big" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, maximum memory usage per Container is 1Gi, but limit is 2Gi, cpu max limit to request ratio per Container is 4, but provided ratio is 10.000000]"#
    );
}

#[tokio::test]
async fn quotas_refuse_what_would_exceed_them_and_are_recounted() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    server.kubectl_ok(&["create", "namespace", "quota"]);
    server.kubectl_ok(&[
        "create",
        "quota",
        "compute",
        "-n",
        "quota",
        "--hard=requests.cpu=1,limits.memory=1Gi,pods=10",
    ]);
    quota_counted(
        &server,
        "quota",
        "compute",
        r#"{"limits.memory":"0","pods":"0","requests.cpu":"0"}"#,
    )
    .await;

    let first = pod(
        "first",
        "quota",
        "{requests: {cpu: '1'}, limits: {memory: 256Mi}}",
    );
    let out = apply(&server, dir.path(), "first.yaml", &first);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = pod(
        "second",
        "quota",
        "{requests: {cpu: 500m}, limits: {memory: 256Mi}}",
    );
    assert_eq!(
        refused(&apply(&server, dir.path(), "second.yaml", &second)),
        r#"Error from server (Forbidden): error when creating "second.yaml": pods "second" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=1, limited: requests.cpu=1"#
    );
    let bare = pod("bare", "quota", "{requests: {cpu: 100m}}");
    assert_eq!(
        refused(&apply(&server, dir.path(), "bare.yaml", &bare)),
        r#"Error from server (Forbidden): error when creating "bare.yaml": pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: app"#
    );

    let table = server.kubectl_ok(&["get", "quota", "-n", "quota"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(lines[0], ["NAME", "AGE", "REQUEST", "LIMIT"]);
    assert_eq!(lines[1][0], "compute");
    assert_eq!(lines[1][2], "pods: 1/10, requests.cpu: 1/1");
    assert_eq!(lines[1][3], "limits.memory: 256Mi/1Gi");
    let described = server.kubectl_ok(&["describe", "quota", "compute", "-n", "quota"]);
    for row in [
        ["limits.memory", "256Mi", "1Gi"],
        ["pods", "1", "10"],
        ["requests.cpu", "1", "1"],
    ] {
        assert!(
            described
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == row),
            "{row:?} in {described}"
        );
    }

    // Deleting the pod gives its share back, through the controller.
    server.kubectl_ok(&[
        "delete",
        "pod",
        "first",
        "-n",
        "quota",
        "--grace-period=0",
        "--force",
    ]);
    quota_counted(
        &server,
        "quota",
        "compute",
        r#"{"limits.memory":"0","pods":"0","requests.cpu":"0"}"#,
    )
    .await;
    let out = apply(&server, dir.path(), "second.yaml", &second);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn updates_are_charged_what_they_add_to_a_quota() {
    let server = start().await;
    server.kubectl_ok(&["create", "namespace", "grow"]);
    server.kubectl_ok(&[
        "create",
        "quota",
        "grow",
        "-n",
        "grow",
        "--hard=services.nodeports=1,services.loadbalancers=0,requests.storage=1Gi",
    ]);
    quota_counted(
        &server,
        "grow",
        "grow",
        r#"{"requests.storage":"0","services.loadbalancers":"0","services.nodeports":"0"}"#,
    )
    .await;
    server.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "grow",
        "--tcp=80",
    ]);
    let patch = |kind: &str, name: &str, patch: &str| {
        server.kubectl(&["patch", kind, name, "-n", "grow", "-p", patch])
    };
    assert_eq!(
        refused(&patch(
            "service",
            "web",
            r#"{"spec":{"type":"LoadBalancer"}}"#
        )),
        r#"Error from server (Forbidden): services "web" is forbidden: exceeded quota: grow, requested: services.loadbalancers=1, used: services.loadbalancers=0, limited: services.loadbalancers=0"#
    );
    let out = patch("service", "web", r#"{"spec":{"type":"NodePort"}}"#);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The port is charged once: an update that adds none is free.
    let out = patch(
        "service",
        "web",
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "api",
        "-n",
        "grow",
        "--tcp=80",
    ]);
    assert_eq!(
        refused(&patch("service", "api", r#"{"spec":{"type":"NodePort"}}"#)),
        r#"Error from server (Forbidden): services "api" is forbidden: exceeded quota: grow, requested: services.nodeports=1, used: services.nodeports=1, limited: services.nodeports=1"#
    );

    // Only a bound claim may grow: it binds to a volume of no class.
    let claim = "apiVersion: v1
kind: PersistentVolume
metadata:
  name: grow-data
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: \"\"
  hostPath: {path: /srv/grow-data}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: grow
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: \"\"
  resources: {requests: {storage: 512Mi}}
";
    let dir = tempfile::tempdir().unwrap();
    let out = apply(&server, dir.path(), "claim.yaml", claim);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("the claim to be bound", Duration::from_secs(30), || async {
        let pvc = server.kubectl_json(&["get", "pvc", "data", "-n", "grow"]);
        (pvc["status"]["phase"] == "Bound").then_some(())
    })
    .await;
    let grow = |size: &str| {
        patch(
            "pvc",
            "data",
            &format!(r#"{{"spec":{{"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#),
        )
    };
    assert_eq!(
        refused(&grow("2Gi")),
        r#"Error from server (Forbidden): persistentvolumeclaims "data" is forbidden: exceeded quota: grow, requested: requests.storage=1536Mi, used: requests.storage=512Mi, limited: requests.storage=1Gi"#
    );
    let out = grow("1Gi");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn concurrent_creates_never_take_more_than_the_quota() {
    let server = start().await;
    server.kubectl_ok(&["create", "namespace", "race"]);
    // The namespace's root CA ConfigMap comes first, so the count starts at one.
    eventually("the root CA ConfigMap", Duration::from_secs(30), || async {
        let out = server.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "race"]);
        out.status.success().then_some(())
    })
    .await;
    server.kubectl_ok(&[
        "create",
        "quota",
        "two",
        "-n",
        "race",
        "--hard=pods=2,count/configmaps=3",
    ]);
    quota_counted(
        &server,
        "race",
        "two",
        r#"{"count/configmaps":"1","pods":"0"}"#,
    )
    .await;

    let attempts = 8;
    let kubeconfig = server.kubeconfig();
    let results: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..attempts)
            .map(|i| {
                let kubeconfig = &kubeconfig;
                s.spawn(move || {
                    std::process::Command::new("kubectl")
                        .arg("--kubeconfig")
                        .arg(kubeconfig)
                        .args(["run", &format!("p{i}"), "-n", "race", "--image=busybox"])
                        .output()
                        .expect("running kubectl")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let allowed = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        allowed,
        2,
        "{:?}",
        results.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
    for refused in results.iter().filter(|o| !o.status.success()) {
        let msg = text(&refused.stderr);
        assert!(
            msg.contains("exceeded quota: two, requested: pods=1, used: pods=2, limited: pods=2"),
            "{msg}"
        );
    }
    let pods = server.kubectl_ok(&["get", "pods", "-n", "race", "-o", "name"]);
    assert_eq!(pods.lines().count(), 2);

    // Object counts: the namespace's root CA ConfigMap is one of three.
    server.kubectl_ok(&["create", "configmap", "a", "-n", "race"]);
    server.kubectl_ok(&["create", "configmap", "b", "-n", "race"]);
    let out = server.kubectl(&["create", "configmap", "c", "-n", "race"]);
    assert_eq!(
        refused(&out),
        r#"error: failed to create configmap: configmaps "c" is forbidden: exceeded quota: two, requested: count/configmaps=1, used: count/configmaps=3, limited: count/configmaps=3"#
    );
}

const J26_NAMESPACE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: my-baseline-namespace
  labels:
    pod-security.kubernetes.io/enforce: baseline
    pod-security.kubernetes.io/enforce-version: v1.29
    pod-security.kubernetes.io/audit: restricted
    pod-security.kubernetes.io/audit-version: v1.29
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/warn-version: v1.29
";

const J26_POD: &str = r#"# pod_curl.yaml
apiVersion: v1
kind: Pod
metadata:
  name: curl
  namespace: my-baseline-namespace
spec:
  hostNetwork: true
  containers:
    - name: curl-container
      image: appropriate/curl
      command: [ "sh","-c", "sleep 1h" ]
"#;

#[tokio::test]
async fn j26_a_baseline_namespace_rejects_a_host_network_pod() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = apply(&server, dir.path(), "namespace.yaml", J26_NAMESPACE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        refused(&apply(&server, dir.path(), "pod_curl.yaml", J26_POD)),
        r#"Error from server (Forbidden): error when creating "pod_curl.yaml": pods "curl" is forbidden: violates PodSecurity "baseline:v1.29": host namespaces (hostNetwork=true)"#
    );

    // Without hostNetwork the pod is allowed, with restricted's warning.
    let plain = J26_POD.replace("  hostNetwork: true\n", "");
    let out = apply(&server, dir.path(), "pod_curl.yaml", &plain);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim_end(),
        r#"Warning: would violate PodSecurity "restricted:v1.29": allowPrivilegeEscalation != false (container "curl-container" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "curl-container" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "curl-container" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "curl-container" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
    );

    // Workloads are warned about, never refused: enforce is for pods.
    let deployment = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hostnet
  namespace: my-baseline-namespace
spec:
  selector: {matchLabels: {app: hostnet}}
  template:
    metadata: {labels: {app: hostnet}}
    spec:
      hostNetwork: true
      containers: [{name: app, image: busybox}]
";
    let out = apply(&server, dir.path(), "deploy.yaml", deployment);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with(
            r#"Warning: would violate PodSecurity "restricted:v1.29": host namespaces (hostNetwork=true), allowPrivilegeEscalation != false"#
        ),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn labelling_a_namespace_warns_of_pods_that_violate_it() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    server.kubectl_ok(&["create", "namespace", "dev"]);
    let host = |name: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: dev}}
spec:
  hostNetwork: true
  containers: [{{name: app, image: busybox}}]
"
        )
    };
    for name in ["net-b", "net-a"] {
        let out = apply(&server, dir.path(), &format!("{name}.yaml"), &host(name));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = server.kubectl(&[
        "label",
        "namespace",
        "dev",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "Warning: existing pods in namespace \"dev\" violate the new PodSecurity enforce level \"baseline:latest\"\nWarning: net-a (and 1 other pod): host namespaces"
    );
    assert_eq!(text(&out.stdout).trim_end(), "namespace/dev labeled");

    let out = server.kubectl(&[
        "label",
        "namespace",
        "dev",
        "--overwrite",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert_eq!(
        refused(&out),
        r#"The Namespace "dev" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#
    );
}
