//! `/metrics/resource`: kubelet's resource metrics in the Prometheus text
//! format, with upstream's names, help texts and labels. Each sample
//! carries the time it was read (milliseconds), from which metrics-server
//! computes CPU rates.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::Shared;
use crate::cgroup::{self, Usage};

struct Container {
    namespace: String,
    pod: String,
    name: String,
    cgroup: String,
    started_at: f64,
}

pub(crate) fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// The running containers, sorted by namespace, pod and name.
fn containers(shared: &Shared) -> Vec<Container> {
    let running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<Container> = running
        .iter()
        .map(|((namespace, pod, name), r)| Container {
            namespace: namespace.clone(),
            pod: pod.clone(),
            name: name.clone(),
            cgroup: format!("{}/{}", r.pod_cgroup, r.id),
            started_at: r.started_at.as_millisecond() as f64 / 1000.0,
        })
        .collect();
    list.sort_by(|a, b| (&a.namespace, &a.pod, &a.name).cmp(&(&b.namespace, &b.pod, &b.name)));
    list
}

fn container_labels(c: &Container) -> [(&str, &str); 3] {
    [
        ("container", c.name.as_str()),
        ("namespace", c.namespace.as_str()),
        ("pod", c.pod.as_str()),
    ]
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64, ms: i64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", labels.join(","))
    };
    let _ = writeln!(out, "{name}{labels} {value} {ms}");
}

/// Reads every cgroup and renders the page. A cgroup that cannot be read
/// (a container that just ended) is left out and sets `scrape_error`.
pub fn render(shared: &Shared) -> String {
    let mut error = false;
    let mut read = |cgroup: &str| match cgroup::usage(cgroup) {
        Ok(u) => Some((u, now_ms())),
        Err(e) => {
            tracing::debug!("reading cgroup {cgroup}: {e}");
            error = true;
            None
        }
    };
    let node = read("/");
    let containers: Vec<(Container, Option<(Usage, i64)>)> = containers(shared)
        .into_iter()
        .map(|c| {
            let u = read(&c.cgroup);
            (c, u)
        })
        .collect();
    let mut pods: BTreeMap<(&str, &str), Option<(Usage, i64)>> = BTreeMap::new();
    for (c, _) in &containers {
        let pod_cgroup = c.cgroup.rsplit_once('/').map_or("", |(p, _)| p);
        pods.entry((c.namespace.as_str(), c.pod.as_str()))
            .or_insert_with(|| read(pod_cgroup));
    }
    let mut out = String::new();
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    for (c, u) in &containers {
        if let Some((u, ms)) = u {
            sample(
                &mut out,
                "container_cpu_usage_seconds_total",
                &container_labels(c),
                u.cpu_seconds,
                *ms,
            );
        }
    }
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
    );
    for (c, u) in &containers {
        if let Some((u, ms)) = u {
            sample(
                &mut out,
                "container_memory_working_set_bytes",
                &container_labels(c),
                u.working_set_bytes as f64,
                *ms,
            );
        }
    }
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    for (c, u) in &containers {
        if let Some((_, ms)) = u {
            sample(
                &mut out,
                "container_start_time_seconds",
                &container_labels(c),
                c.started_at,
                *ms,
            );
        }
    }
    if let Some((u, ms)) = node {
        family(
            &mut out,
            "node_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the node in core-seconds",
        );
        sample(
            &mut out,
            "node_cpu_usage_seconds_total",
            &[],
            u.cpu_seconds,
            ms,
        );
        family(
            &mut out,
            "node_memory_working_set_bytes",
            "gauge",
            "Current working set of the node in bytes",
        );
        sample(
            &mut out,
            "node_memory_working_set_bytes",
            &[],
            u.working_set_bytes as f64,
            ms,
        );
    }
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
    );
    for ((ns, pod), u) in &pods {
        if let Some((u, ms)) = u {
            sample(
                &mut out,
                "pod_cpu_usage_seconds_total",
                &[("namespace", ns), ("pod", pod)],
                u.cpu_seconds,
                *ms,
            );
        }
    }
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
    );
    for ((ns, pod), u) in &pods {
        if let Some((u, ms)) = u {
            sample(
                &mut out,
                "pod_memory_working_set_bytes",
                &[("namespace", ns), ("pod", pod)],
                u.working_set_bytes as f64,
                *ms,
            );
        }
    }
    family(
        &mut out,
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    let _ = writeln!(out, "resource_scrape_error {}", u8::from(error));
    out
}
