//! What an update may change once an object exists, through kubectl 1.32
//! and 1.35: each forbidden patch fails with the error kubectl prints
//! against upstream's API server, and each allowed one goes through.

use std::path::Path;

use kubox_testkit::{KUBECTL_1_35, KuboxServer};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

const POD_FIELDS: &str = "The Pod \"p\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)\n  core.PodSpec{";

fn manifests(sc: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: c
    image: busybox:1
    ports:
    - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: gated
spec:
  schedulingGates:
  - name: example.com/wait
  nodeSelector:
    a: "1"
  containers:
  - name: c
    image: busybox:1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: c
        image: busybox:1
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: c
        image: busybox:1
---
apiVersion: batch/v1
kind: Job
metadata:
  name: batch
spec:
  suspend: true
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: busybox:1
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: claim
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: frozen
immutable: true
data:
  a: "1"
---
apiVersion: v1
kind: Secret
metadata:
  name: s
stringData:
  a: "1"
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {sc}
provisioner: example.com/disk
parameters:
  tier: slow
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  minReplicas: 1
  maxReplicas: 3
"#
    )
}

/// What a patch must print: nothing (it succeeds), all of stderr, or how
/// stderr starts and a part further on.
enum Expect {
    Ok,
    Error(&'static str),
    Around(&'static str, &'static str),
}

/// `(resource, strategic merge patch, expectation)`.
fn cases(sc: &'static str) -> Vec<(&'static str, String, Expect)> {
    use Expect::*;
    let p = |s: &str| s.to_owned();
    vec![
        (
            "pod/p",
            p(r#"{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}"#),
            Ok,
        ),
        (
            "pod/p",
            p(r#"{"spec":{"containers":[{"name":"c","ports":[{"containerPort":81}]}]}}"#),
            Around(
                "The Pod \"p\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,",
                "  }\n",
            ),
        ),
        ("pod/p", p(r#"{"spec":{"activeDeadlineSeconds":100}}"#), Ok),
        (
            "pod/p",
            p(r#"{"spec":{"activeDeadlineSeconds":200}}"#),
            Error(
                "The Pod \"p\" is invalid: spec.activeDeadlineSeconds: Invalid value: 200: must be less than or equal to previous value\n",
            ),
        ),
        (
            "pod/p",
            // The admission's default tolerations stay; one more joins them.
            p(
                r#"{"spec":{"tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":60},{"key":"k","operator":"Exists","effect":"NoSchedule"}]}}"#,
            ),
            Ok,
        ),
        (
            "pod/p",
            p(r#"{"spec":{"nodeName":"elsewhere"}}"#),
            Around(POD_FIELDS, "\n+ \tNodeName: \"elsewhere\",\n"),
        ),
        ("pod/gated", p(r#"{"spec":{"nodeSelector":{"b":"2"}}}"#), Ok),
        (
            "pod/gated",
            p(r#"{"spec":{"nodeSelector":{"a":"2"}}}"#),
            Error(
                "The Pod \"gated\" is invalid: spec.nodeSelector: Invalid value: map[string]string{\"a\":\"2\", \"b\":\"2\"}: only additions to spec.nodeSelector are allowed (no mutations or deletions)\n",
            ),
        ),
        (
            "deployment/web",
            p(
                r#"{"spec":{"selector":{"matchLabels":{"app":"web2"}},"template":{"metadata":{"labels":{"app":"web2"}}}}}"#,
            ),
            Error(
                "The Deployment \"web\" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable\n",
            ),
        ),
        ("statefulset/db", p(r#"{"spec":{"replicas":2}}"#), Ok),
        (
            "statefulset/db",
            p(r#"{"spec":{"serviceName":"other"}}"#),
            Error(
                "The StatefulSet \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden\n",
            ),
        ),
        (
            "job/batch",
            p(r#"{"spec":{"template":{"spec":{"nodeSelector":{"zone":"b"}}}}}"#),
            Ok,
        ),
        (
            "job/batch",
            p(
                r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}}}"#,
            ),
            Around(
                "The Job \"batch\" is invalid: spec.template: Invalid value: ",
                ": field is immutable\n",
            ),
        ),
        (
            "pvc/claim",
            p(r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#),
            Around(
                "The PersistentVolumeClaim \"claim\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n  core.PersistentVolumeClaimSpec{\n",
                "  }\n",
            ),
        ),
        (
            "configmap/frozen",
            p(r#"{"metadata":{"labels":{"a":"b"}}}"#),
            Ok,
        ),
        (
            "configmap/frozen",
            p(r#"{"data":{"a":"2"}}"#),
            Error(
                "The ConfigMap \"frozen\" is invalid: data: Forbidden: field is immutable when `immutable` is set\n",
            ),
        ),
        (
            "secret/s",
            p(r#"{"type":"example.com/custom"}"#),
            Error(
                "The Secret \"s\" is invalid: type: Invalid value: \"example.com/custom\": field is immutable\n",
            ),
        ),
        (
            sc,
            p(r#"{"parameters":{"tier":"fast"}}"#),
            Around(
                "The StorageClass \"",
                "\" is invalid: parameters: Forbidden: updates to parameters are forbidden.\n",
            ),
        ),
    ]
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn forbidden_updates_get_upstreams_errors_in_both_kubectls() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let kubectls = [
        ("k132", "storageclass/slow-132", Path::new("kubectl")),
        ("k135", "storageclass/slow-135", Path::new(KUBECTL_1_35)),
    ];
    for (ns, sc, kubectl) in kubectls {
        let run = |args: &[&str]| server.kubectl_at(kubectl, args);
        let ok = |args: &[&str]| server.kubectl_at_ok(kubectl, args);
        ok(&["create", "namespace", ns]);
        let file = server.data_dir().join(format!("{ns}.yaml"));
        let sc_name = sc.trim_start_matches("storageclass/");
        std::fs::write(&file, manifests(sc_name)).unwrap();
        ok(&["apply", "-n", ns, "-f", file.to_str().unwrap()]);
        for (resource, patch, expect) in cases(sc) {
            let out = run(&["patch", "-n", ns, resource, "-p", &patch]);
            let err = stderr(&out);
            let what = format!("{} patch {resource} {patch}", kubectl.display());
            match expect {
                Expect::Ok => assert!(out.status.success(), "{what}: {err}"),
                Expect::Error(text) => {
                    assert!(!out.status.success(), "{what} succeeded");
                    assert_eq!(err, text, "{what}");
                }
                Expect::Around(start, further) => {
                    assert!(!out.status.success(), "{what} succeeded");
                    assert!(
                        err.starts_with(start) && err[start.len()..].contains(further),
                        "{what}: {err}"
                    );
                }
            }
        }
        // The HPA counts its spec's changes, not its metadata's.
        let generation = || {
            ok(&[
                "get",
                "-n",
                ns,
                "hpa/web",
                "-o",
                "jsonpath={.metadata.generation}",
            ])
        };
        assert_eq!(generation(), "1");
        ok(&[
            "patch",
            "-n",
            ns,
            "hpa/web",
            "-p",
            r#"{"spec":{"maxReplicas":4}}"#,
        ]);
        assert_eq!(generation(), "2");
        ok(&["label", "-n", ns, "hpa/web", "a=b"]);
        assert_eq!(generation(), "2");
    }
}
