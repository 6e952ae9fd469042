//! The HorizontalPodAutoscaler controller (upstream's
//! horizontal-pod-autoscaler): every sync period it reads each HPA's target
//! through its `scale` subresource, its pods' usage from metrics.k8s.io,
//! computes the replica count resource metrics ask for (`replicas`),
//! stabilizes and limits it (`normalize`), rescales the target, and reports
//! upstream's status, conditions and events.

mod normalize;
mod replicas;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerSpec,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use kubox_client::events::{Recorder, Type};

use self::normalize::History;
pub use self::replicas::Timing;
use self::replicas::{Metrics, PodMetric};
use crate::{Context, Error, api_message, now, runner};

pub const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The controller's flags, as kube-controller-manager's.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub downscale_stabilization: Duration,
    pub timing: Timing,
}

struct State {
    client: kube::Client,
    recorder: Recorder,
    settings: Settings,
    /// By namespace/name: recommendations and scale changes, and the last sync.
    histories: Mutex<HashMap<String, (History, Option<Timestamp>)>>,
}

pub async fn run(ctx: Arc<Context>) {
    let hpas = ctx.informers.get::<HorizontalPodAutoscaler>();
    hpas.synced().await;
    let controller = Controller::for_shared_stream(hpas.stream(), hpas.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        settings: ctx.config.hpa,
        histories: Mutex::default(),
    });
    runner::run(COMPONENT, controller, reconcile, state).await;
}

fn reference(hpa: &HorizontalPodAutoscaler) -> ObjectReference {
    ObjectReference {
        api_version: Some("autoscaling/v2".into()),
        kind: Some("HorizontalPodAutoscaler".into()),
        name: hpa.metadata.name.clone(),
        namespace: hpa.metadata.namespace.clone(),
        uid: hpa.metadata.uid.clone(),
        resource_version: hpa.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The status being built in one sync, with upstream's setCondition.
struct Report {
    status: HorizontalPodAutoscalerStatus,
}

impl Report {
    fn set(&mut self, type_: &str, ok: bool, (reason, message): (&str, String)) {
        let status = if ok { "True" } else { "False" };
        let conditions = self.status.conditions.get_or_insert_with(Vec::new);
        let fresh = HorizontalPodAutoscalerCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now()),
            observed_generation: None,
        };
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == status => {
                c.reason = fresh.reason;
                c.message = fresh.message;
            }
            Some(c) => *c = fresh,
            None => conditions.push(fresh),
        }
    }
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, state: Arc<State>) -> Result<Action, Error> {
    let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
    let period = state.settings.sync_period;
    if hpa.metadata.deletion_timestamp.is_some() {
        state
            .histories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        return Ok(Action::await_change());
    }
    // As upstream's rate-limited queue: one sync per period, whatever
    // changes (our own status updates among them) come in between.
    let started = Timestamp::now();
    {
        let histories = state.histories.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, Some(last))) = histories.get(&key) {
            let since = Duration::try_from(started.duration_since(*last)).unwrap_or_default();
            if since + Duration::from_millis(100) < period {
                return Ok(Action::requeue(period - since));
            }
        }
    }
    let result = sync(&hpa, &state, &key).await;
    if let Some(entry) = state
        .histories
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&key)
    {
        entry.1 = Some(started);
    }
    result.map(|()| Action::requeue(period))
}

async fn target_scale(
    client: &kube::Client,
    hpa: &HorizontalPodAutoscaler,
    spec: &HorizontalPodAutoscalerSpec,
) -> Result<(Api<DynamicObject>, Scale), String> {
    let target = &spec.scale_target_ref;
    let (group, version) = target
        .api_version
        .as_deref()
        .unwrap_or("v1")
        .rsplit_once('/')
        .map_or(
            ("", target.api_version.as_deref().unwrap_or("v1")),
            |(g, v)| (g, v),
        );
    let gvk = GroupVersionKind::gvk(group, version, &target.kind);
    let (resource, _): (ApiResource, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| api_message(&e))?;
    let api = Api::namespaced_with(
        client.clone(),
        &hpa.namespace().unwrap_or_default(),
        &resource,
    );
    let scale = api
        .get_scale(&target.name)
        .await
        .map_err(|e| api_message(&e))?;
    Ok((api, scale))
}

/// What one metric proposes, with its status and the name conditions use.
struct Proposal {
    replicas: i32,
    status: MetricStatus,
    name: String,
}

async fn sync(hpa: &HorizontalPodAutoscaler, state: &State, key: &str) -> Result<(), Error> {
    let ns = hpa.namespace().unwrap_or_default();
    let spec = &hpa.spec;
    let target = format!(
        "{}/{}",
        spec.scale_target_ref.kind, spec.scale_target_ref.name
    );
    let previous = hpa.status.clone().unwrap_or_default();
    let mut report = Report {
        status: HorizontalPodAutoscalerStatus {
            observed_generation: hpa.metadata.generation,
            current_metrics: previous.current_metrics.clone(),
            last_scale_time: previous.last_scale_time.clone(),
            conditions: previous.conditions.clone(),
            current_replicas: previous.current_replicas,
            desired_replicas: previous.desired_replicas,
        },
    };
    let event = |type_, reason: &str, message: String| {
        state
            .recorder
            .record(reference(hpa), type_, reason, message)
    };
    let (api, mut scale) = match target_scale(&state.client, hpa, spec).await {
        Ok(found) => found,
        Err(e) => {
            event(Type::Warning, "FailedGetScale", e.clone());
            report.set(
                "AbleToScale",
                false,
                (
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                ),
            );
            update_status(state, hpa, &previous, report.status).await?;
            return Err(Error::Failed(format!(
                "failed to query scale subresource for {target}: {e}"
            )));
        }
    };
    report.set(
        "AbleToScale",
        true,
        (
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        ),
    );
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    report.status.current_replicas = Some(current);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let now_ts = Timestamp::now();
    let (desired, reason) = if current == 0 && min != 0 {
        report.set(
            "ScalingActive",
            false,
            (
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            ),
        );
        (0, String::new())
    } else if current > max {
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".to_owned(),
        )
    } else if current < min {
        (
            min,
            "Current number of replicas below Spec.MinReplicas".to_owned(),
        )
    } else {
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let proposals = match propose(state, hpa, &ns, &selector, current, &mut report).await {
            Ok(p) => p,
            Err(e) => {
                update_status(state, hpa, &previous, report.status).await?;
                event(Type::Warning, "FailedComputeMetricsReplicas", e.clone());
                return Err(Error::Failed(format!(
                    "failed to compute desired number of replicas based on listed metrics for {target}: {e}"
                )));
            }
        };
        let best = proposals
            .iter()
            .max_by_key(|p| p.replicas)
            .expect("at least one metric proposed");
        report.set(
            "ScalingActive",
            true,
            (
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {}",
                    best.name
                ),
            ),
        );
        let proposed = best.replicas;
        let reason = if proposed > current {
            format!("{} above target", best.name)
        } else {
            "All metrics below target".to_owned()
        };
        let mut histories = state.histories.lock().unwrap_or_else(|e| e.into_inner());
        let history = &mut histories.entry(key.to_owned()).or_default().0;
        let n = match &spec.behavior {
            None => normalize::legacy(
                history,
                now_ts,
                state.settings.downscale_stabilization,
                current,
                proposed,
                min,
                max,
            ),
            Some(b) => {
                let (up, down) = normalize::defaulted(b, state.settings.downscale_stabilization);
                normalize::with_behavior(history, now_ts, &up, &down, current, proposed, min, max)
            }
        };
        drop(histories);
        report.set(
            "AbleToScale",
            true,
            (n.able_to_scale.0, n.able_to_scale.1.into()),
        );
        let (limited, (why, message)) = n.limited;
        report.set("ScalingLimited", limited, (why, message.into()));
        (n.replicas, reason)
    };
    if desired != current && !(current == 0 && min != 0) {
        scale.spec.get_or_insert_default().replicas = Some(desired);
        if let Err(e) = api
            .replace_scale(&spec.scale_target_ref.name, &PostParams::default(), &scale)
            .await
        {
            let e = api_message(&e);
            event(
                Type::Warning,
                "FailedRescale",
                format!("New size: {desired}; reason: {reason}; error: {e}"),
            );
            report.set(
                "AbleToScale",
                false,
                (
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {e}"),
                ),
            );
            update_status(state, hpa, &previous, report.status).await?;
            return Err(Error::Failed(format!("failed to rescale {target}: {e}")));
        }
        report.set(
            "AbleToScale",
            true,
            (
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
            ),
        );
        event(
            Type::Normal,
            "SuccessfulRescale",
            format!("New size: {desired}; reason: {reason}"),
        );
        let mut histories = state.histories.lock().unwrap_or_else(|e| e.into_inner());
        let history = &mut histories.entry(key.to_owned()).or_default().0;
        let rules = spec
            .behavior
            .as_ref()
            .map(|b| normalize::defaulted(b, state.settings.downscale_stabilization));
        normalize::record_change(
            history,
            rules.as_ref().map(|(u, d)| (u, d)),
            now_ts,
            current,
            desired,
        );
        report.status.last_scale_time = Some(now());
        report.status.desired_replicas = desired;
    } else {
        report.status.desired_replicas = current;
    }
    state
        .histories
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_owned())
        .or_default();
    update_status(state, hpa, &previous, report.status).await
}

/// The metrics an HPA scales on; none means upstream's default, 80% CPU.
fn metric_specs(spec: &HorizontalPodAutoscalerSpec) -> Vec<MetricSpec> {
    match spec.metrics.as_deref() {
        Some(m) if !m.is_empty() => m.to_vec(),
        _ => serde_json::from_value(serde_json::json!([{
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
        }]))
        .expect("the default metric decodes"),
    }
}

/// One proposal per metric that could be computed; an error when none could.
async fn propose(
    state: &State,
    hpa: &HorizontalPodAutoscaler,
    ns: &str,
    selector: &str,
    current: i32,
    report: &mut Report,
) -> Result<Vec<Proposal>, String> {
    let event = |reason: &str, message: String| {
        state
            .recorder
            .record(reference(hpa), Type::Warning, reason, message)
    };
    if selector.is_empty() {
        event("SelectorRequired", "selector is required".into());
        report.set(
            "ScalingActive",
            false,
            (
                "InvalidSelector",
                "the HPA target's scale is missing a selector".into(),
            ),
        );
        return Err("selector is required".into());
    }
    let specs = metric_specs(&hpa.spec);
    let mut proposals = Vec::new();
    // A metric that could not be read has an empty status, as upstream's.
    let mut statuses = Vec::new();
    let mut first_error = None;
    for spec in &specs {
        match resource_proposal(state, spec, ns, selector, current).await {
            Ok(p) => {
                statuses.push(p.status.clone());
                proposals.push(p);
            }
            Err(e) => {
                statuses.push(MetricStatus::default());
                event("FailedGetResourceMetric", e.clone());
                report.set(
                    "ScalingActive",
                    false,
                    (
                        "FailedGetResourceMetric",
                        format!("the HPA was unable to compute the replica count: {e}"),
                    ),
                );
                first_error.get_or_insert(e);
            }
        }
    }
    report.status.current_metrics = Some(statuses);
    match first_error {
        Some(e) if proposals.is_empty() => Err(format!(
            "invalid metrics ({} invalid out of {}), first error is: {e}",
            specs.len(),
            specs.len()
        )),
        _ => Ok(proposals),
    }
}

async fn resource_proposal(
    state: &State,
    spec: &MetricSpec,
    ns: &str,
    selector: &str,
    current: i32,
) -> Result<Proposal, String> {
    let Some(resource) = spec.resource.as_ref().filter(|_| spec.type_ == "Resource") else {
        return Err(format!("unsupported metric source type {:?}", spec.type_));
    };
    let name = resource.name.as_str();
    let target = &resource.target;
    let timing = &state.settings.timing;
    let pods = Api::<Pod>::namespaced(state.client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!(
                "unable to get pods while calculating replica count: {}",
                api_message(&e)
            )
        })?
        .items;
    let status = |current: MetricValueStatus| MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus {
            name: name.to_owned(),
            current,
        }),
        ..Default::default()
    };
    if let Some(average) = &target.average_value {
        let wanted =
            kubox_client::quantity::parse(&average.0).map_or(0, |v| (v * 1000.0).round() as i64);
        let metrics = pod_metrics(&state.client, ns, selector, name)
            .await
            .map_err(|e| {
                format!(
                    "failed to get {name} usage: unable to get metrics for resource {name}: {e}"
                )
            })?;
        let (replicas, usage) = replicas::for_average_value(
            current,
            wanted.max(1),
            name,
            &pods,
            metrics,
            timing,
            Timestamp::now(),
        )
        .map_err(|e| format!("failed to get {name} usage: {e}"))?;
        return Ok(Proposal {
            replicas,
            status: status(MetricValueStatus {
                average_value: Some(milli_quantity(usage)),
                ..Default::default()
            }),
            name: format!("{name} resource"),
        });
    }
    let Some(utilization) = target.average_utilization else {
        return Err("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into());
    };
    let metrics = pod_metrics(&state.client, ns, selector, name)
        .await
        .map_err(|e| {
            format!(
                "failed to get {name} utilization: unable to get metrics for resource {name}: {e}"
            )
        })?;
    let (replicas, percent, raw) = replicas::for_utilization(
        current,
        utilization,
        name,
        &pods,
        metrics,
        timing,
        Timestamp::now(),
    )
    .map_err(|e| format!("failed to get {name} utilization: {e}"))?;
    Ok(Proposal {
        replicas,
        status: status(MetricValueStatus {
            average_utilization: Some(percent),
            average_value: Some(milli_quantity(raw)),
            ..Default::default()
        }),
        name: format!("{name} resource utilization (percentage of request)"),
    })
}

/// A milli-unit value as a quantity, as upstream's `NewMilliQuantity` prints it.
fn milli_quantity(milli: i64) -> Quantity {
    Quantity(if milli.rem_euclid(1000) == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    })
}

/// A Go duration as metrics-server writes windows: `15s`, `1m0.5s`.
fn go_duration(s: &str) -> Duration {
    let (minutes, rest) = s
        .split_once('m')
        .map_or((0.0, s), |(m, r)| (m.parse().unwrap_or(0.0), r));
    let seconds: f64 = rest.trim_end_matches('s').parse().unwrap_or(0.0);
    Duration::from_secs_f64(minutes * 60.0 + seconds)
}

/// The pods' usage of `resource` from metrics.k8s.io, in milli-units.
async fn pod_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    resource: &str,
) -> Result<Metrics, String> {
    let query: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
    let request = http::Request::get(format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={query}"
    ))
    .body(Vec::new())
    .expect("a GET request builds");
    let list: serde_json::Value = client.request(request).await.map_err(|e| api_message(&e))?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Err("no metrics returned from resource metrics API".into());
    }
    let mut metrics = Metrics::new();
    for item in items {
        let containers = item["containers"].as_array().cloned().unwrap_or_default();
        let values: Option<Vec<f64>> = containers
            .iter()
            .map(|c| {
                c["usage"][resource]
                    .as_str()
                    .and_then(kubox_client::quantity::parse)
            })
            .collect();
        let Some(values) = values else {
            continue;
        };
        let (Some(name), Some(timestamp)) = (
            item["metadata"]["name"].as_str(),
            item["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok()),
        ) else {
            continue;
        };
        metrics.insert(
            name.to_owned(),
            PodMetric {
                value: (values.iter().sum::<f64>() * 1000.0).round() as i64,
                timestamp,
                window: go_duration(item["window"].as_str().unwrap_or("0s")),
            },
        );
    }
    Ok(metrics)
}

async fn update_status(
    state: &State,
    hpa: &HorizontalPodAutoscaler,
    previous: &HorizontalPodAutoscalerStatus,
    status: HorizontalPodAutoscalerStatus,
) -> Result<(), Error> {
    if &status == previous {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(state.client.clone(), &hpa.namespace().unwrap_or_default());
    // An update, as upstream's (and the role allows): a conflict retries the sync.
    let mut updated = hpa.clone();
    updated.status = Some(status);
    api.replace_status(&hpa.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_quantities_read_and_print_as_upstream() {
        assert_eq!(go_duration("15s"), Duration::from_secs(15));
        assert_eq!(go_duration("1m0.5s"), Duration::from_millis(60_500));
        assert_eq!(milli_quantity(1500).0, "1500m");
        assert_eq!(milli_quantity(2000).0, "2");
    }
}
