//! `/metrics/cadvisor`: the container metrics kubelet's embedded cAdvisor
//! serves, with its names and labels (`container`, `id`, `image`, `name`,
//! `namespace`, `pod`), read from the pods' cgroups and network
//! namespaces. As with containerd, a pod's own cgroup is reported as the
//! container `""` and carries the pod's network counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use crate::Shared;
use crate::cgroup::{self, Usage};
use crate::resource_metrics::{now_ms, sample};

struct Container {
    namespace: String,
    pod: String,
    name: String,
    id: String,
    image: String,
    cgroup: String,
}

/// Counters of one network interface, from `/proc/net/dev`.
#[derive(Debug, Default, PartialEq)]
struct Interface {
    name: String,
    rx_bytes: u64,
    rx_packets: u64,
    rx_errors: u64,
    rx_dropped: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_errors: u64,
    tx_dropped: u64,
}

/// The interfaces of `/proc/net/dev`, but loopback.
fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|c| c.parse().unwrap_or(0))
                .collect();
            let name = name.trim();
            (name != "lo" && n.len() >= 12).then(|| Interface {
                name: name.to_owned(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            })
        })
        .collect()
}

/// The network counters of the namespace at `netns`, read from a thread
/// that joined it (a thread's `/proc/thread-self/net` is its namespace's).
async fn network(netns: PathBuf) -> std::io::Result<Vec<Interface>> {
    crate::sandbox::in_netns(Some(netns), || {
        std::fs::read_to_string("/proc/thread-self/net/dev").map(|t| parse_net_dev(&t))
    })
    .await
}

fn labels(c: &Container, cpu: bool) -> Vec<(&str, &str)> {
    let mut l = vec![("container", c.name.as_str())];
    if cpu {
        l.push(("cpu", "total"));
    }
    l.extend([
        ("id", c.cgroup.as_str()),
        ("image", c.image.as_str()),
        ("name", c.id.as_str()),
        ("namespace", c.namespace.as_str()),
        ("pod", c.pod.as_str()),
    ]);
    l
}

/// Reads every container's and pod's cgroup and every pod's network and
/// renders the page; what cannot be read (a container that just ended) is
/// left out.
pub async fn render(shared: &Shared) -> String {
    let mut entries: Vec<Container> = {
        let running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .map(|((namespace, pod, name), r)| Container {
                namespace: namespace.clone(),
                pod: pod.clone(),
                name: name.clone(),
                id: r.id.clone(),
                image: r.image.clone(),
                cgroup: format!("{}/{}", r.pod_cgroup, r.id),
            })
            .collect()
    };
    // Each pod's own cgroup, as the container "".
    let pods: BTreeMap<(String, String), String> = entries
        .iter()
        .filter_map(|c| {
            let parent = c.cgroup.rsplit_once('/')?.0.to_owned();
            Some(((c.namespace.clone(), c.pod.clone()), parent))
        })
        .collect();
    for ((namespace, pod), cgroup) in &pods {
        entries.push(Container {
            namespace: namespace.clone(),
            pod: pod.clone(),
            name: String::new(),
            id: String::new(),
            image: String::new(),
            cgroup: cgroup.clone(),
        });
    }
    entries.sort_by(|a, b| (&a.namespace, &a.pod, &a.name).cmp(&(&b.namespace, &b.pod, &b.name)));
    let usage: Vec<Option<(Usage, i64)>> = entries
        .iter()
        .map(|c| cgroup::usage(&c.cgroup).ok().map(|u| (u, now_ms())))
        .collect();
    let sandboxes: Vec<((String, String), PathBuf)> = shared
        .sandboxes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(k, t)| Some((k.clone(), t.netns.clone()?)))
        .collect();
    // Each read is a thread joining a namespace: all pods at once.
    let reads = sandboxes
        .into_iter()
        .map(|((namespace, pod), netns)| async move {
            match network(netns).await {
                Ok(interfaces) => Some((namespace, pod, interfaces, now_ms())),
                Err(e) => {
                    tracing::debug!(pod, "reading the pod's network counters: {e}");
                    None
                }
            }
        });
    let mut networks: Vec<_> = futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    networks.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));

    let mut out = String::new();
    family_plain(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed in seconds.",
    );
    for (c, u) in entries.iter().zip(&usage) {
        if let Some((u, ms)) = u {
            sample(
                &mut out,
                "container_cpu_usage_seconds_total",
                &labels(c, true),
                u.cpu_seconds,
                *ms,
            );
        }
    }
    family_plain(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set in bytes.",
    );
    for (c, u) in entries.iter().zip(&usage) {
        if let Some((u, ms)) = u {
            sample(
                &mut out,
                "container_memory_working_set_bytes",
                &labels(c, false),
                u.working_set_bytes as f64,
                *ms,
            );
        }
    }
    type Counter = fn(&Interface) -> u64;
    let counters: [(&str, &str, Counter); 8] = [
        (
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received",
            |i| i.rx_bytes,
        ),
        (
            "container_network_receive_packets_total",
            "Cumulative count of packets received",
            |i| i.rx_packets,
        ),
        (
            "container_network_receive_errors_total",
            "Cumulative count of errors encountered while receiving",
            |i| i.rx_errors,
        ),
        (
            "container_network_receive_packets_dropped_total",
            "Cumulative count of packets dropped while receiving",
            |i| i.rx_dropped,
        ),
        (
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted",
            |i| i.tx_bytes,
        ),
        (
            "container_network_transmit_packets_total",
            "Cumulative count of packets transmitted",
            |i| i.tx_packets,
        ),
        (
            "container_network_transmit_errors_total",
            "Cumulative count of errors encountered while transmitting",
            |i| i.tx_errors,
        ),
        (
            "container_network_transmit_packets_dropped_total",
            "Cumulative count of packets dropped while transmitting",
            |i| i.tx_dropped,
        ),
    ];
    for (name, help, value) in counters {
        family_plain(&mut out, name, "counter", help);
        for (namespace, pod, interfaces, ms) in &networks {
            let id = pods
                .get(&(namespace.clone(), pod.clone()))
                .map_or("", String::as_str);
            for i in interfaces {
                sample(
                    &mut out,
                    name,
                    &[
                        ("container", ""),
                        ("id", id),
                        ("image", ""),
                        ("interface", i.name.as_str()),
                        ("name", ""),
                        ("namespace", namespace),
                        ("pod", pod),
                    ],
                    value(i) as f64,
                    *ms,
                );
            }
        }
    }
    out
}

/// A family header as cAdvisor writes it (its help texts have no
/// stability marker, unlike kubelet's own).
fn family_plain(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_is_read_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 3000,
                tx_packets: 30,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }
}
