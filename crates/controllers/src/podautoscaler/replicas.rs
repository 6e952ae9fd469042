//! The replica count a resource metric asks for, computed as upstream's
//! replica calculator does. Values are in milli-units (millicores,
//! millibytes), as upstream compares them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// One pod's usage of a resource, summed over its containers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodMetric {
    pub value: i64,
    pub timestamp: Timestamp,
    pub window: Duration,
}

pub type Metrics = BTreeMap<String, PodMetric>;

/// The controller's flags that decide which samples count.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub cpu_initialization_period: Duration,
    /// Upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub initial_readiness_delay: Duration,
    pub tolerance: f64,
}

fn within(tolerance: f64, ratio: f64) -> bool {
    (1.0 - ratio).abs() <= tolerance
}

#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    t.0
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(t)
}

/// Sorts pods as upstream's groupPods: deleted and failed ones are ignored,
/// pending ones unready, ones without a sample missing, and for CPU, pods
/// that are not ready or whose sample may predate their readiness are
/// unready too (so a rollout's starting pods do not trigger scaling).
fn group(pods: &[Pod], metrics: &Metrics, cpu: bool, timing: &Timing, now: Timestamp) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.as_deref().unwrap_or("");
        if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" {
            g.ignored.insert(name);
            continue;
        }
        if phase == "Pending" {
            g.unready.insert(name);
            continue;
        }
        let Some(metric) = metrics.get(&name) else {
            g.missing.insert(name);
            continue;
        };
        if cpu {
            let ready = status
                .conditions
                .as_ref()
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            let unready = match (ready, &status.start_time) {
                (Some(ready), Some(start)) => {
                    let changed = ready
                        .last_transition_time
                        .as_ref()
                        .map(ts)
                        .unwrap_or(ts(start));
                    if after(ts(start), timing.cpu_initialization_period) > now {
                        ready.status == "False" || metric.timestamp < after(changed, metric.window)
                    } else {
                        ready.status == "False"
                            && after(ts(start), timing.initial_readiness_delay) > changed
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// The pods' requests of `resource` (milli-units), by pod name: upstream's
/// error when a container has none.
pub fn requests(pods: &[Pod], resource: &str) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut sum = 0;
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| kubox_client::quantity::parse(&q.0));
            match request {
                Some(v) => sum += (v * 1000.0).round() as i64,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    ));
                }
            }
        }
        out.insert(name, sum);
    }
    Ok(out)
}

/// Usage over requests of the pods that have both: the ratio to the
/// target, the utilization (percent) and the average raw value.
fn utilization_ratio(
    metrics: &Metrics,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (name, m) in metrics {
        if let Some(r) = requests.get(name) {
            used += m.value;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = ((used * 100) / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        used / n,
    ))
}

fn usage_ratio(metrics: &Metrics, target: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value).sum();
    let average = total / metrics.len().max(1) as i64;
    (average as f64 / target as f64, average)
}

/// The pods' groups and the samples that count: those of pods neither
/// ignored nor unready.
fn usable(
    pods: &[Pod],
    mut metrics: Metrics,
    resource: &str,
    timing: &Timing,
    now: Timestamp,
) -> Result<(Groups, Metrics), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group(pods, &metrics, resource == "cpu", timing, now);
    metrics.retain(|n, _| !g.ignored.contains(n) && !g.unready.contains(n));
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    Ok((g, metrics))
}

/// Fills in pods without a usable sample: missing ones with
/// `missing(name)`, and unready ones with nothing when they hold a scale-up.
fn fill_in(
    metrics: &mut Metrics,
    g: &Groups,
    with_unready: bool,
    missing: impl Fn(&str) -> i64,
    now: Timestamp,
) {
    let filler = |value| PodMetric {
        value,
        timestamp: now,
        window: Duration::ZERO,
    };
    for name in &g.missing {
        metrics.insert(name.clone(), filler(missing(name)));
    }
    if with_unready {
        for name in &g.unready {
            metrics.insert(name.clone(), filler(0));
        }
    }
}

/// What a Utilization target asks for: the replica count, the current
/// utilization (percent) and the average usage.
pub fn for_utilization(
    current: i32,
    target: i32,
    resource: &str,
    pods: &[Pod],
    metrics: Metrics,
    timing: &Timing,
    now: Timestamp,
) -> Result<(i32, i32, i64), String> {
    let (g, mut metrics) = usable(pods, metrics, resource, timing, now)?;
    let requests = requests(pods, resource)?;
    let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target)?;
    let with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !with_unready && g.missing.is_empty() {
        if within(timing.tolerance, ratio) {
            return Ok((current, utilization, raw));
        }
        return Ok(((ratio * g.ready as f64).ceil() as i32, utilization, raw));
    }
    // Missing pods count as using their whole request (or the target)
    // on the way down, nothing on the way up.
    let fallback = i64::from(target.max(100));
    let missing = |name: &str| {
        if ratio < 1.0 {
            requests.get(name).copied().unwrap_or_default() * fallback / 100
        } else {
            0
        }
    };
    fill_in(&mut metrics, &g, with_unready, missing, now);
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
    Ok((
        settle(current, ratio, new_ratio, metrics.len(), timing),
        utilization,
        raw,
    ))
}

/// What an AverageValue target (milli-units per pod) asks for, and the
/// current average.
pub fn for_average_value(
    current: i32,
    target: i64,
    resource: &str,
    pods: &[Pod],
    metrics: Metrics,
    timing: &Timing,
    now: Timestamp,
) -> Result<(i32, i64), String> {
    let (g, mut metrics) = usable(pods, metrics, resource, timing, now)?;
    let (ratio, usage) = usage_ratio(&metrics, target);
    let with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !with_unready && g.missing.is_empty() {
        if within(timing.tolerance, ratio) {
            return Ok((current, usage));
        }
        return Ok(((ratio * g.ready as f64).ceil() as i32, usage));
    }
    let missing = |_: &str| if ratio < 1.0 { target } else { 0 };
    fill_in(&mut metrics, &g, with_unready, missing, now);
    let (new_ratio, _) = usage_ratio(&metrics, target);
    Ok((
        settle(current, ratio, new_ratio, metrics.len(), timing),
        usage,
    ))
}

/// The count after filling in missing and unready pods: unchanged when the
/// change is within tolerance or would reverse the direction of scaling.
fn settle(current: i32, ratio: f64, new_ratio: f64, pods: usize, timing: &Timing) -> i32 {
    if within(timing.tolerance, new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let proposed = (new_ratio * pods as f64).ceil() as i32;
    if (new_ratio < 1.0 && proposed > current) || (new_ratio > 1.0 && proposed < current) {
        return current;
    }
    proposed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TIMING: Timing = Timing {
        cpu_initialization_period: Duration::from_secs(300),
        initial_readiness_delay: Duration::from_secs(30),
        tolerance: 0.1,
    };

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pod(name: &str, cpu: Option<&str>, ready_since: &str) -> Pod {
        let resources = cpu.map_or(json!({}), |c| json!({"requests": {"cpu": c}}));
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "resources": resources}]},
            "status": {
                "phase": "Running",
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ready_since}],
            },
        }))
        .unwrap()
    }

    fn metric(value: i64) -> PodMetric {
        PodMetric {
            value,
            timestamp: t("2026-01-01T01:00:00Z"),
            window: Duration::from_secs(15),
        }
    }

    const NOW: &str = "2026-01-01T01:00:05Z";

    #[test]
    fn utilization_scales_by_the_ratio_outside_the_tolerance() {
        let pods = [pod("a", Some("500m"), "2026-01-01T00:00:10Z")];
        let busy = Metrics::from([("a".into(), metric(1000))]);
        assert_eq!(
            for_utilization(1, 50, "cpu", &pods, busy, &TIMING, t(NOW)),
            Ok((4, 200, 1000))
        );
        let near = Metrics::from([("a".into(), metric(260))]);
        assert_eq!(
            for_utilization(1, 50, "cpu", &pods, near, &TIMING, t(NOW)),
            Ok((1, 52, 260))
        );
    }

    #[test]
    fn pods_without_requests_are_upstreams_error() {
        let pods = [pod("a", None, "2026-01-01T00:00:10Z")];
        let m = Metrics::from([("a".into(), metric(1000))]);
        assert_eq!(
            for_utilization(1, 50, "cpu", &pods, m, &TIMING, t(NOW)),
            Err("missing request for cpu in container main of Pod a".into())
        );
    }

    #[test]
    fn missing_pods_damp_a_scale_down_and_new_pods_do_not_count() {
        let pods = [
            pod("a", Some("1"), "2026-01-01T00:00:10Z"),
            pod("b", Some("1"), "2026-01-01T00:00:10Z"),
        ];
        // Only a has a sample, at 10%: b counts as 100%, 55% is within
        // neither tolerance nor reversal, so 2 pods' worth rounds up to 2.
        let m = Metrics::from([("a".into(), metric(100))]);
        assert_eq!(
            for_utilization(2, 50, "cpu", &pods, m, &TIMING, t(NOW))
                .unwrap()
                .0,
            2
        );
        // A pod that turned ready after its sample's window began is unready.
        let fresh = [pod("c", Some("1"), "2026-01-01T00:59:58Z")];
        let m = Metrics::from([("c".into(), metric(1000))]);
        let now = t("2026-01-01T00:01:00Z");
        assert!(for_utilization(1, 50, "cpu", &fresh, m, &TIMING, now).is_err());
    }

    #[test]
    fn average_values_compare_per_pod_usage() {
        let pods = [
            pod("a", None, "2026-01-01T00:00:10Z"),
            pod("b", None, "2026-01-01T00:00:10Z"),
        ];
        let m = Metrics::from([("a".into(), metric(300)), ("b".into(), metric(500))]);
        assert_eq!(
            for_average_value(2, 200, "cpu", &pods, m, &TIMING, t(NOW)),
            Ok((4, 400))
        );
    }
}
