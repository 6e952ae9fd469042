//! Prometheus metrics end to end: every component's page read as an
//! in-cluster Prometheus reads it (the API server's `/metrics`, the node
//! agent's through the API server's node proxy), parsed with the reference
//! parser (PyPI `prometheus_client`), with upstream's names, types and
//! labels; the ingress controller's access log; and the Grafana dashboard
//! in the repository querying only what is exported.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../dashboards/kubox-cluster.json"
);

#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

#[derive(Debug, serde::Deserialize)]
struct Family {
    r#type: String,
    samples: Vec<Sample>,
}

type Page = HashMap<String, Family>;

/// `page` parsed by prometheus_client's parser (which refuses a malformed page).
fn parse(page: &str) -> Page {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/prom_parse.py");
    let out = kubox_testkit::output_with_input(
        std::process::Command::new("python3").arg(script),
        page.as_bytes(),
    );
    assert!(
        out.status.success(),
        "the parser refused the page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn scrape(server: &KuboxServer, path: &str) -> Page {
    parse(&server.kubectl_ok(&["get", "--raw", path]))
}

/// The family `name`, checked to be of type `kind`.
fn family<'p>(page: &'p Page, name: &str, kind: &str) -> &'p Family {
    let f = page
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}; have {:?}", page.keys()));
    assert_eq!(f.r#type, kind, "{name}'s type");
    f
}

/// The first sample of `family` named `sample` whose labels include `want`.
fn find<'p>(family: &'p Family, sample: &str, want: &[(&str, &str)]) -> Option<&'p Sample> {
    family.samples.iter().find(|s| {
        s.name == sample
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

fn sample<'p>(
    page: &'p Page,
    name: &str,
    kind: &str,
    sample: &str,
    want: &[(&str, &str)],
) -> &'p Sample {
    let f = family(page, name, kind);
    find(f, sample, want).unwrap_or_else(|| panic!("no {sample} with {want:?} in {f:?}"))
}

fn label_names(s: &Sample) -> BTreeSet<&str> {
    s.labels.keys().map(String::as_str).collect()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: web.example\r\nUser-Agent: obs-test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    Some((status, raw.split_once("\r\n\r\n")?.1.to_owned()))
}

/// A busybox web server behind a Service and an Ingress (`/hello`).
fn web(server: &KuboxServer) {
    server.apply_json(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "mkdir -p /www/hello && echo hello > /www/hello/index.html && exec httpd -f -p 8080 -h /www"],
                    }],
                },
            },
        },
    }));
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    server.apply_json(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"http": {"paths": [{
                "path": "/hello", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}},
            }]}}],
        },
    }));
    server.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
}

#[tokio::test]
async fn every_component_serves_upstream_series_that_a_real_parser_reads() {
    let logs = tempfile::tempdir().unwrap();
    let access_log = logs.path().join("access.log");
    let access_arg = format!("--ingress-access-log={}", access_log.display());
    let (server, http, _) = KuboxServer::start_with_ingress(
        KUBOX,
        &[
            "--node-name",
            "node",
            "--compaction-interval=2s",
            &access_arg,
        ],
    )
    .await;
    server.wait_node_ready("node").await;
    server.import_busybox();
    web(&server);
    eventually("the ingress to reach the web pod", TIMEOUT, || async {
        let (status, body) = http_get(http, "/hello/index.html")?;
        (status == 200 && body == "hello\n").then_some(())
    })
    .await;

    // The API server's page, with the in-process components' metrics.
    let page = eventually("the store to have compacted once", TIMEOUT, || async {
        let page = scrape(&server, "/metrics");
        let compacted = page.get("etcd_request_duration_seconds").is_some_and(|f| {
            find(
                f,
                "etcd_request_duration_seconds_count",
                &[("operation", "compact")],
            )
            .is_some()
        });
        compacted.then_some(page)
    })
    .await;
    let s = sample(
        &page,
        "apiserver_request",
        "counter",
        "apiserver_request_total",
        &[
            ("verb", "POST"),
            ("resource", "deployments"),
            ("group", "apps"),
            ("code", "201"),
        ],
    );
    assert_eq!(
        label_names(s),
        BTreeSet::from([
            "code",
            "component",
            "dry_run",
            "group",
            "resource",
            "scope",
            "subresource",
            "verb",
            "version"
        ])
    );
    sample(
        &page,
        "apiserver_request_duration_seconds",
        "histogram",
        "apiserver_request_duration_seconds_bucket",
        &[("verb", "LIST"), ("resource", "pods"), ("le", "+Inf")],
    );
    for kind in ["readOnly", "mutating"] {
        sample(
            &page,
            "apiserver_current_inflight_requests",
            "gauge",
            "apiserver_current_inflight_requests",
            &[("request_kind", kind)],
        );
    }
    // The components' own watches are in flight.
    let watches = sample(
        &page,
        "apiserver_longrunning_requests",
        "gauge",
        "apiserver_longrunning_requests",
        &[("verb", "WATCH"), ("resource", "pods")],
    );
    assert!(watches.value >= 1.0, "{watches:?}");
    sample(
        &page,
        "apiserver_watch_events",
        "counter",
        "apiserver_watch_events_total",
        &[("kind", "Pod"), ("group", ""), ("version", "v1")],
    );
    let pods = sample(
        &page,
        "apiserver_storage_objects",
        "gauge",
        "apiserver_storage_objects",
        &[("resource", "pods")],
    );
    assert!(pods.value >= 1.0, "{pods:?}");
    let deployments = sample(
        &page,
        "apiserver_storage_objects",
        "gauge",
        "apiserver_storage_objects",
        &[("resource", "deployments.apps")],
    );
    assert_eq!(deployments.value, 1.0);
    sample(
        &page,
        "etcd_request_duration_seconds",
        "histogram",
        "etcd_request_duration_seconds_bucket",
        &[("operation", "create"), ("type", "pods")],
    );
    let size = sample(
        &page,
        "apiserver_storage_size_bytes",
        "gauge",
        "apiserver_storage_size_bytes",
        &[("storage_cluster_id", "sqlite")],
    );
    assert!(size.value > 0.0, "{size:?}");

    let scheduled = sample(
        &page,
        "scheduler_schedule_attempts",
        "counter",
        "scheduler_schedule_attempts_total",
        &[("result", "scheduled"), ("profile", "default-scheduler")],
    );
    assert!(scheduled.value >= 1.0, "{scheduled:?}");
    sample(
        &page,
        "scheduler_scheduling_attempt_duration_seconds",
        "histogram",
        "scheduler_scheduling_attempt_duration_seconds_count",
        &[("result", "scheduled")],
    );
    for queue in ["active", "backoff", "unschedulable"] {
        sample(
            &page,
            "scheduler_pending_pods",
            "gauge",
            "scheduler_pending_pods",
            &[("queue", queue)],
        );
    }

    let adds = sample(
        &page,
        "workqueue_adds",
        "counter",
        "workqueue_adds_total",
        &[("name", "deployment")],
    );
    assert!(adds.value >= 1.0, "{adds:?}");
    sample(
        &page,
        "workqueue_adds",
        "counter",
        "workqueue_adds_total",
        &[("name", "replicaset")],
    );
    sample(
        &page,
        "workqueue_depth",
        "gauge",
        "workqueue_depth",
        &[("name", "garbage_collector_attempt_to_delete")],
    );
    sample(
        &page,
        "workqueue_retries",
        "counter",
        "workqueue_retries_total",
        &[("name", "deployment")],
    );
    sample(
        &page,
        "workqueue_work_duration_seconds",
        "histogram",
        "workqueue_work_duration_seconds_count",
        &[("name", "deployment")],
    );

    let want = [
        ("ingress", "web"),
        ("namespace", "default"),
        ("service", "web"),
        ("path", "/hello"),
        ("method", "GET"),
        ("status", "200"),
        ("host", "web.example"),
    ];
    // The parser names counter samples `_total`; ingress-nginx's page does not.
    let served = sample(
        &page,
        "nginx_ingress_controller_requests",
        "counter",
        "nginx_ingress_controller_requests_total",
        &want,
    );
    let raw = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    assert!(
        raw.contains("\n# TYPE nginx_ingress_controller_requests counter\n")
            && raw.contains("\nnginx_ingress_controller_requests{"),
        "{raw}"
    );
    assert!(served.value >= 1.0, "{served:?}");
    sample(
        &page,
        "nginx_ingress_controller_request_duration_seconds",
        "histogram",
        "nginx_ingress_controller_request_duration_seconds_bucket",
        &want,
    );
    let log = std::fs::read_to_string(&access_log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("\"GET /hello/index.html HTTP/1.1\" 200 6 \"-\" \"obs-test\""))
        .unwrap_or_else(|| panic!("no access log line for the request in\n{log}"));
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains(" [default-web-80] [] "), "{line}");

    // The node agent's pages, through the API server's node proxy.
    let pod = server.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let kubelet = scrape(&server, "/api/v1/nodes/node/proxy/metrics");
    let running = sample(
        &kubelet,
        "kubelet_running_pods",
        "gauge",
        "kubelet_running_pods",
        &[],
    );
    assert!(running.value >= 1.0, "{running:?}");
    sample(
        &kubelet,
        "kubelet_running_containers",
        "gauge",
        "kubelet_running_containers",
        &[("container_state", "running")],
    );
    let started = sample(
        &kubelet,
        "kubelet_pod_start_duration_seconds",
        "histogram",
        "kubelet_pod_start_duration_seconds_count",
        &[],
    );
    assert!(started.value >= 1.0, "{started:?}");

    let cadvisor = scrape(&server, "/api/v1/nodes/node/proxy/metrics/cadvisor");
    let pod_labels = [("namespace", "default"), ("pod", pod.as_str())];
    let cpu = sample(
        &cadvisor,
        "container_cpu_usage_seconds",
        "counter",
        "container_cpu_usage_seconds_total",
        &[
            pod_labels[0],
            pod_labels[1],
            ("container", "web"),
            ("cpu", "total"),
        ],
    );
    assert_eq!(
        label_names(cpu),
        BTreeSet::from([
            "container",
            "cpu",
            "id",
            "image",
            "name",
            "namespace",
            "pod"
        ])
    );
    assert!(cpu.value > 0.0, "{cpu:?}");
    let memory = sample(
        &cadvisor,
        "container_memory_working_set_bytes",
        "gauge",
        "container_memory_working_set_bytes",
        &[pod_labels[0], pod_labels[1], ("container", "web")],
    );
    assert!(memory.value > 0.0, "{memory:?}");
    // The pod's own cgroup, as the container "".
    sample(
        &cadvisor,
        "container_memory_working_set_bytes",
        "gauge",
        "container_memory_working_set_bytes",
        &[pod_labels[0], pod_labels[1], ("container", "")],
    );
    for name in [
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
    ] {
        let s = sample(
            &cadvisor,
            name.trim_end_matches("_total"),
            "counter",
            name,
            &[pod_labels[0], pod_labels[1], ("interface", "eth0")],
        );
        // The request and its answer went through the pod's eth0.
        assert!(s.value > 0.0, "{s:?}");
    }
}

/// Clauses whose parenthesised contents are label names.
const LABEL_CLAUSES: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// `expr` without label matchers, ranges, and the contents of grouping
/// and matching clauses.
fn strip_labels(expr: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let mut words = String::new();
    let mut rest = out.as_str();
    loop {
        let word_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        words.push_str(word);
        if LABEL_CLAUSES.contains(&word) && after.trim_start().starts_with('(') {
            let close = after.find(')').map_or(after.len(), |c| c + 1);
            rest = &after[close..];
            continue;
        }
        let Some(c) = after.chars().next() else {
            break;
        };
        words.push(c);
        rest = &after[c.len_utf8()..];
    }
    words
}

/// Every metric a PromQL expression reads: the identifiers left that are
/// neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = strip_labels(expr);
    // Aggregations may put their clause before their argument: `sum by (x) (y)`.
    let keywords = [
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let preceded_by_digit = rest[..start].ends_with(|c: char| c.is_ascii_digit() || c == '.');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        let call = tail[end..].trim_start().starts_with('(');
        if !call
            && !preceded_by_digit
            && !keywords.contains(&word)
            && !LABEL_CLAUSES.contains(&word)
        {
            names.insert(word.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn promql_names_are_told_from_labels_and_functions() {
    assert_eq!(
        metric_names(
            r#"sum by (verb) (rate(apiserver_request_total{code=~"5.."}[5m])) / ignoring(code) up"#
        ),
        BTreeSet::from(["apiserver_request_total".to_owned(), "up".to_owned()])
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum(rate(x_bucket[5m])) by (le))"),
        BTreeSet::from(["x_bucket".to_owned()])
    );
    assert_eq!(
        metric_names("topk(10, max by (resource) (objects)) + 1e3"),
        BTreeSet::from(["objects".to_owned()])
    );
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let (server, http, _) = KuboxServer::start_with_ingress(KUBOX, &["--node-name", "node"]).await;
    server.wait_node_ready("node").await;
    // A family appears once it has a sample (as with Go's client): a pod
    // scheduled, a request through the ingress.
    server.import_busybox();
    web(&server);
    eventually("the ingress to reach the web pod", TIMEOUT, || async {
        (http_get(http, "/hello/index.html")?.0 == 200).then_some(())
    })
    .await;
    // What the pages declare, by the series names a query uses.
    let mut exported = BTreeSet::new();
    for path in [
        "/metrics",
        "/api/v1/nodes/node/proxy/metrics",
        "/api/v1/nodes/node/proxy/metrics/cadvisor",
        "/api/v1/nodes/node/proxy/metrics/resource",
    ] {
        let page = server.kubectl_ok(&["get", "--raw", path]);
        // The reference parser accepts the page.
        parse(&page);
        for line in page.lines() {
            let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|t| t.split_once(' '))
            else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, exprs: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    exprs.push(e.clone());
                }
                m.values().for_each(|v| walk(v, exprs));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has only {} queries",
        exprs.len()
    );
    let missing: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
}
