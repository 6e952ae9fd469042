//! Resources served in more than one version from one stored object:
//! autoscaling/v1 and v2 HorizontalPodAutoscalers, core/v1 and
//! events.k8s.io/v1 Events, through kubectl, kube-rs and the Python client.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use kubox_testkit::{KUBECTL_1_35, KuboxServer};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

async fn client(server: &KuboxServer) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

// By full name: kubectl drops the version of a short name it expands
// (`hpa.v1.autoscaling` reads autoscaling/v2), against upstream too.
const V1: &str = "horizontalpodautoscalers.v1.autoscaling";
const V2: &str = "horizontalpodautoscalers.v2.autoscaling";

fn write_manifest(server: &KuboxServer, name: &str, manifest: &str) -> String {
    let path = server.data_dir().join(name);
    std::fs::write(&path, manifest).unwrap();
    path.display().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn autoscaling_v1_and_v2_are_one_horizontal_pod_autoscaler() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let k = |args: &[&str]| server.kubectl_ok(args);
    let versions = k(&["api-versions"]);
    for v in ["autoscaling/v1", "autoscaling/v2", "events.k8s.io/v1"] {
        assert!(versions.lines().any(|l| l == v), "{v} in {versions}");
    }
    assert_eq!(
        k(&["create", "deployment", "web", "--image=busybox"]),
        "deployment.apps/web created\n"
    );
    // kubectl 1.32 creates the HPA through autoscaling/v1.
    assert_eq!(
        k(&[
            "autoscale",
            "deploy",
            "web",
            "--cpu-percent=50",
            "--min=1",
            "--max=10"
        ]),
        "horizontalpodautoscaler.autoscaling/web autoscaled\n"
    );
    let table = k(&["get", "hpa", "web"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["web", "Deployment/web"], "{table}");
    assert!(row[3].ends_with("/50%"), "{table}");
    assert_eq!(&row[4..6], ["1", "10"], "{table}");
    // The same object in both versions; the write recorded as kubectl made it.
    assert_eq!(
        k(&[
            "get",
            V1,
            "web",
            "-o",
            "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage} {.spec.minReplicas} {.metadata.managedFields[?(@.manager==\"kubectl-autoscale\")].apiVersion}"
        ]),
        "autoscaling/v1 50 1 autoscaling/v1"
    );
    assert_eq!(
        k(&[
            "get",
            V2,
            "web",
            "-o",
            "jsonpath={.apiVersion} {.spec.metrics[0].resource.name} {.spec.metrics[0].resource.target.averageUtilization}"
        ]),
        "autoscaling/v2 cpu 50"
    );
    // A metric v1 has no field for is kept in upstream's annotation.
    k(&[
        "patch",
        V2,
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":50}}},{"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"100Mi"}}}]}}"#,
    ]);
    assert_eq!(
        k(&[
            "get",
            V1,
            "web",
            "-o",
            r"jsonpath={.metadata.annotations.autoscaling\.alpha\.kubernetes\.io/metrics}"
        ]),
        r#"[{"resource":{"name":"memory","targetAverageValue":"100Mi"},"type":"Resource"}]"#
    );
    // A change through v1, watched through v1 with kube-rs.
    let hpas: Api<HorizontalPodAutoscaler> = Api::default_namespaced(client(&server).await);
    let since = hpas
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = hpas
        .watch(&WatchParams::default().timeout(30), &since)
        .await
        .unwrap()
        .boxed();
    assert_eq!(
        k(&[
            "patch",
            V1,
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#
        ]),
        "horizontalpodautoscaler.autoscaling/web patched\n"
    );
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = watch.try_next().await.unwrap() {
            if let WatchEvent::Modified(h) = event
                && h.spec.target_cpu_utilization_percentage == Some(70)
            {
                return h;
            }
        }
        panic!("the watch ended before the change");
    })
    .await
    .expect("a MODIFIED event through autoscaling/v1");
    assert_eq!(seen.spec.max_replicas, 10);
    // v2 kept the memory metric; the CPU one follows it, as upstream orders them.
    assert_eq!(
        k(&[
            "get",
            V2,
            "web",
            "-o",
            "jsonpath={.spec.metrics[*].resource.name} {.spec.metrics[1].resource.target.averageUtilization}"
        ]),
        "memory cpu 70"
    );
    assert_eq!(
        k(&[
            "get",
            V1,
            "--field-selector",
            "metadata.name=web",
            "-o",
            "name"
        ]),
        "horizontalpodautoscaler.autoscaling/web\n"
    );
    let out = server.kubectl(&["get", V1, "--field-selector", "spec.maxReplicas=10"]);
    assert!(
        stderr(&out).contains("field label not supported: spec.maxReplicas"),
        "{}",
        stderr(&out)
    );
    // Server-side apply through v1: the field kubectl patch set is its.
    let manifest = write_manifest(
        &server,
        "hpa-v1.yaml",
        "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: web\n  maxReplicas: 10\n  targetCPUUtilizationPercentage: 60\n",
    );
    let out = server.kubectl(&["apply", "--server-side", "-f", &manifest]);
    assert!(
        stderr(&out).contains(
            r#"conflict with "kubectl-patch" using autoscaling/v1: .spec.targetCPUUtilizationPercentage"#
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        k(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &manifest
        ]),
        "horizontalpodautoscaler.autoscaling/web serverside-applied\n"
    );
    assert_eq!(
        k(&[
            "get",
            V2,
            "web",
            "-o",
            "jsonpath={.spec.metrics[1].resource.target.averageUtilization} {.metadata.managedFields[?(@.manager==\"kubectl\")].apiVersion}"
        ]),
        "60 autoscaling/v1"
    );
    let explain = k(&[
        "explain",
        "hpa.spec.targetCPUUtilizationPercentage",
        "--api-version=autoscaling/v1",
    ]);
    assert!(
        explain.contains("FIELD: targetCPUUtilizationPercentage <integer>"),
        "{explain}"
    );
    assert_eq!(
        k(&["delete", V1, "web"]),
        "horizontalpodautoscaler.autoscaling \"web\" deleted\n"
    );
    assert_eq!(k(&["get", "hpa", "-o", "name"]), "");
}

/// Server-side apply through autoscaling/v2 then v1 keeps one set of
/// managed fields, each entry in the version its manager applied, and a v1
/// apply conflicts with the v2 applier's metrics, as upstream's field
/// manager compares in each manager's version.
#[tokio::test]
async fn applies_through_both_versions_share_one_set_of_managed_fields() {
    let server = KuboxServer::start(KUBOX, &["--disable-agent"]).await;
    let v2 = |name: &str| {
        format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: web\n  maxReplicas: 5\n  metrics:\n  - type: Resource\n    resource:\n      name: cpu\n      target:\n        type: Utilization\n        averageUtilization: 50\n"
        )
    };
    let v1 = |name: &str| {
        format!(
            "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: web\n  maxReplicas: 5\n  targetCPUUtilizationPercentage: 70\n"
        )
    };
    for (name, kubectl) in [
        ("hpa-132", std::path::Path::new("kubectl")),
        ("hpa-135", std::path::Path::new(KUBECTL_1_35)),
    ] {
        let apply = |manager: &str, manifest: String, force: bool| {
            let file = write_manifest(&server, &format!("{name}-{manager}.yaml"), &manifest);
            let mut args = vec![
                "apply",
                "--server-side",
                "--field-manager",
                manager,
                "-f",
                file.as_str(),
            ];
            if force {
                args.push("--force-conflicts");
            }
            server.kubectl_at(kubectl, &args)
        };
        let out = apply("v2-applier", v2(name), false);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = apply("v1-applier", v1(name), false);
        assert!(
            !out.status.success(),
            "a v1 apply over v2 metrics must conflict"
        );
        assert!(
            stderr(&out).contains(r#"conflict with "v2-applier": .spec.metrics"#),
            "{}",
            stderr(&out)
        );
        let out = apply("v1-applier", v1(name), true);
        assert!(out.status.success(), "{}", stderr(&out));
        let entries = server.kubectl_at_ok(
            kubectl,
            &[
                "get",
                V2,
                name,
                "-o",
                r#"jsonpath={range .metadata.managedFields[*]}{.manager} {.apiVersion} {.operation};{end}"#,
            ],
        );
        // The autoscaler controller's status writes have an entry too.
        let mut entries: Vec<&str> = entries
            .split_terminator(';')
            .filter(|e| e.contains("-applier "))
            .collect();
        entries.sort_unstable();
        assert_eq!(
            entries,
            [
                "v1-applier autoscaling/v1 Apply",
                "v2-applier autoscaling/v2 Apply"
            ]
        );
        let target = server.kubectl_at_ok(
            kubectl,
            &[
                "get",
                V2,
                name,
                "-o",
                "jsonpath={.spec.metrics[0].resource.target.averageUtilization}",
            ],
        );
        assert_eq!(target, "70");
    }
}

#[tokio::test]
async fn events_k8s_io_is_a_view_of_core_events() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let k = |args: &[&str]| server.kubectl_ok(args);
    let core = write_manifest(
        &server,
        "core-event.yaml",
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: core-ev\ninvolvedObject:\n  kind: Pod\n  name: p1\n  namespace: default\nreason: Started\nmessage: started it\ntype: Normal\ncount: 2\nsource:\n  component: kubelet\nreportingComponent: kubelet\nfirstTimestamp: \"2024-01-01T00:00:00Z\"\nlastTimestamp: \"2024-01-01T00:00:05Z\"\n",
    );
    assert_eq!(k(&["create", "-f", &core]), "event/core-ev created\n");
    assert_eq!(
        k(&[
            "get",
            "events.v1.events.k8s.io",
            "core-ev",
            "-o",
            "jsonpath={.apiVersion}|{.note}|{.regarding.name}|{.reportingController}|{.deprecatedCount}|{.deprecatedSource.component}|{.deprecatedLastTimestamp}"
        ]),
        "events.k8s.io/v1|started it|p1|kubelet|2|kubelet|2024-01-01T00:00:05Z"
    );
    let new = write_manifest(
        &server,
        "new-event.yaml",
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata:\n  name: new-ev\neventTime: \"2024-01-01T00:00:10.000000Z\"\nregarding:\n  kind: Pod\n  name: p2\n  namespace: default\nreason: Pulled\nnote: pulled it\ntype: Normal\naction: Pull\nreportingController: example.com/agent\nreportingInstance: node-1\nseries:\n  count: 3\n  lastObservedTime: \"2024-01-01T00:00:20.000000Z\"\n",
    );
    assert_eq!(
        k(&["create", "-f", &new]),
        "event.events.k8s.io/new-ev created\n"
    );
    assert_eq!(
        k(&[
            "get",
            "event",
            "new-ev",
            "-o",
            "jsonpath={.apiVersion}|{.message}|{.involvedObject.name}|{.reportingComponent}|{.series.count}|{.action}"
        ]),
        "v1|pulled it|p2|example.com/agent|3|Pull"
    );
    // Field selectors by each version's names.
    assert_eq!(
        k(&[
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "regarding.name=p2",
            "-o",
            "name"
        ]),
        "event.events.k8s.io/new-ev\n"
    );
    assert_eq!(
        k(&[
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "reportingController=kubelet,regarding.kind=Pod",
            "-o",
            "name"
        ]),
        "event.events.k8s.io/core-ev\n"
    );
    assert_eq!(
        k(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=p2",
            "-o",
            "name"
        ]),
        "event/new-ev\n"
    );
    // The table prints alike through either version.
    for (resource, selector) in [
        ("events", "involvedObject.name=p2"),
        ("events.events.k8s.io", "regarding.name=p2"),
    ] {
        let table = k(&["get", resource, "--field-selector", selector]);
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            "{table}"
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            &row[1..],
            ["Normal", "Pulled", "pod/p2", "pulled", "it"],
            "{table}"
        );
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/events.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(server.kubeconfig())
        .output()
        .await
        .expect("running python3 (scripts/test installs the kubernetes package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "python events ok\n");
}

/// Discovery and OpenAPI carry the converted versions: kubectl lists them,
/// explains them and finds their documents.
#[tokio::test]
async fn converted_versions_are_discovered_and_explained() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let k = |args: &[&str]| server.kubectl_ok(args);
    let index: serde_json::Value =
        serde_json::from_str(&k(&["get", "--raw", "/openapi/v3"])).unwrap();
    for gv in [
        "apis/autoscaling/v1",
        "apis/autoscaling/v2",
        "apis/events.k8s.io/v1",
    ] {
        assert!(index["paths"][gv].is_object(), "{gv} in {index}");
    }
    let wide = k(&["api-resources", "-o", "wide", "--api-group=events.k8s.io"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SHORTNAMES",
            "APIVERSION",
            "NAMESPACED",
            "KIND",
            "VERBS",
            "CATEGORIES"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "events",
            "ev",
            "events.k8s.io/v1",
            "true",
            "Event",
            "create,delete,deletecollection,get,list,patch,update,watch"
        ],
        "{wide}"
    );
    let explained = k(&["explain", "events.note", "--api-version=events.k8s.io/v1"]);
    assert!(explained.contains("FIELD: note <string>"), "{explained}");
}
