//! The Endpoints controller, and what it shares with the EndpointSlice
//! controller: which pods back a Service (its selector, readiness,
//! termination, `publishNotReadyAddresses`), each pod's port for each
//! service port (named `targetPort`s resolved per pod), and the
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::{Context, Informed, Informer, runner};

pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub const HEADLESS: &str = "service.kubernetes.io/headless";
/// Upstream keeps at most this many addresses in one Endpoints object.
const MAX_ADDRESSES: usize = 1000;
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// One pod backing a service, as both controllers see it.
#[derive(Clone, Debug)]
pub struct Backend {
    pub pod: Arc<Pod>,
    pub ip: String,
    /// The pod passes its readiness checks (its Ready condition).
    pub serving: bool,
    pub terminating: bool,
    /// One per service port the pod has; service ports it has no port for are left out.
    pub ports: Vec<EndpointPort>,
    /// The pod's hostname under the service, for a pod whose subdomain is the service.
    pub hostname: Option<String>,
}

pub fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Services whose endpoints these controllers own: with a selector, not ExternalName.
pub fn managed(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| s.selector.is_some() && s.type_.as_deref() != Some("ExternalName"))
}

fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.labels();
    svc.namespace() == pod.namespace() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a pod belongs in a service's endpoints at all, as upstream's
/// ShouldPodBeInEndpoints: it has an address and has not ended; a
/// terminating one only where `include_terminating`.
fn should_include(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if status
        .and_then(|s| s.pod_ip.as_deref())
        .is_none_or(str::is_empty)
    {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    match policy {
        Some("Never") => !matches!(phase, Some("Failed" | "Succeeded")),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

/// The pod's port for a service port: a number as given, a name looked up
/// among the pod's container ports of the same protocol.
pub fn resolve_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            }),
        },
    }
}

/// The pods backing `svc` now, in address order.
pub fn backends(svc: &Service, pods: &Store<Pod>, include_terminating: bool) -> Vec<Backend> {
    let spec = svc.spec.clone().unwrap_or_default();
    let service_ports = spec.ports.unwrap_or_default();
    let mut found: Vec<Backend> = pods
        .state()
        .into_iter()
        .filter(|p| selects(svc, p) && should_include(p, include_terminating))
        .filter_map(|pod| {
            let ports: Vec<EndpointPort> = service_ports
                .iter()
                .filter_map(|sp| {
                    Some(EndpointPort {
                        name: sp.name.clone().filter(|n| !n.is_empty()),
                        port: resolve_port(&pod, sp)?,
                        protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: sp.app_protocol.clone(),
                    })
                })
                .collect();
            if ports.is_empty() && !service_ports.is_empty() {
                return None;
            }
            let pod_spec = pod.spec.as_ref();
            let hostname = pod_spec
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty())
                .filter(|_| pod_spec.and_then(|s| s.subdomain.as_deref()) == Some(&svc.name_any()));
            Some(Backend {
                ip: pod.status.as_ref()?.pod_ip.clone()?,
                serving: pod_ready(&pod),
                terminating: pod.metadata.deletion_timestamp.is_some(),
                ports,
                hostname,
                pod,
            })
        })
        .collect();
    found.sort_by(|a, b| (&a.ip, a.pod.uid()).cmp(&(&b.ip, b.pod.uid())));
    found
}

pub fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..Default::default()
    }
}

/// When the change these endpoints reflect happened: the latest of the
/// service's creation and its pods' readiness changes, creations and
/// deletions; now, when a pod that went away is what changed.
pub fn trigger_time(svc: &Service, backends: &[Backend], lost_pod: bool) -> Time {
    if lost_pod {
        return Time(Timestamp::now());
    }
    let pod_times = backends.iter().filter_map(|b| {
        let ready_change = b
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.clone());
        [
            b.pod.metadata.deletion_timestamp.clone(),
            ready_change,
            b.pod.metadata.creation_timestamp.clone(),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|t| t.0)
    });
    svc.metadata
        .creation_timestamp
        .clone()
        .into_iter()
        .chain(pod_times)
        .max_by_key(|t| t.0)
        .unwrap_or_else(|| Time(Timestamp::now()))
}

pub fn trigger_text(t: &Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

/// The labels of a service's endpoints: the service's own, and the headless mark.
pub fn endpoint_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if is_headless(svc) {
        labels.insert(HEADLESS.into(), String::new());
    }
    labels
}

/// Services that select `pod`, or whose endpoints in `named` still name it
/// (its labels changed, or it went away).
pub fn services_of<E: Informed>(
    pod: &Pod,
    services: &Store<Service>,
    named: &Store<E>,
    names_pod: impl Fn(&E, &str) -> bool,
    service_of: impl Fn(&E) -> Option<String>,
) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let mut refs: Vec<ObjectRef<Service>> = services
        .state()
        .iter()
        .filter(|s| selects(s, pod))
        .map(|s| ObjectRef::from_obj(&**s))
        .collect();
    for e in named.state() {
        if e.namespace().as_deref() == Some(ns.as_str())
            && names_pod(&e, &name)
            && let Some(svc) = service_of(&e)
        {
            refs.push(ObjectRef::new(&svc).within(&ns));
        }
    }
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

/// Deletes what a controller keeps for services that no longer exist: at
/// once when a service goes, and for leftovers found in `owned` (services
/// deleted while no controller ran). `service_of` names the service an
/// object belongs to, for the objects this controller manages.
pub async fn clean_up_after_services<
    E: Informed + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
>(
    services: Informer<Service>,
    owned: Informer<E>,
    service_of: fn(&E) -> Option<String>,
    client: kube::Client,
) {
    let store = services.store();
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let gone = |ns: &str, name: &str| store.get(&ObjectRef::new(name).within(ns)).is_none();
    let mut deleted = services.stream().boxed();
    let mut objects = owned.stream().boxed();
    loop {
        let (ns, svc) = tokio::select! {
            Some(svc) = deleted.next() => (svc.namespace().unwrap_or_default(), svc.name_any()),
            Some(obj) = objects.next() => {
                let Some(svc) = service_of(&obj) else { continue };
                (obj.namespace().unwrap_or_default(), svc)
            }
            else => return,
        };
        if !gone(&ns, &svc) {
            continue;
        }
        let api: Api<E> = Api::namespaced(client.clone(), &ns);
        for obj in owned.store().state() {
            if obj.namespace().as_deref() == Some(ns.as_str())
                && service_of(&obj).as_deref() == Some(svc.as_str())
            {
                match api.delete(&obj.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => tracing::warn!(
                        service = %format!("{ns}/{svc}"),
                        "deleting the endpoints of a deleted service: {e}"
                    ),
                }
            }
        }
    }
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
}

pub async fn run(ctx: Arc<Context>) {
    let services = ctx.informers.get::<Service>();
    let pods = ctx.informers.get::<Pod>();
    let endpoints = ctx.informers.get::<Endpoints>();
    let (svc_store, ep_store) = (services.store(), endpoints.store());
    services.synced().await;
    let controller = Controller::for_shared_stream(services.stream(), services.store())
        .watches_shared_stream(pods.stream(), move |pod: Arc<Pod>| {
            services_of(&pod, &svc_store, &ep_store, names_pod, |e| {
                Some(e.name_any())
            })
        })
        .watches_shared_stream(endpoints.stream(), |e: Arc<Endpoints>| {
            Some(ObjectRef::new(&e.name_any()).within(&e.namespace()?))
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        endpoints: endpoints.store(),
    });
    let janitor =
        clean_up_after_services(services, endpoints, endpoints_service, ctx.client.clone());
    tokio::join!(
        runner::run("endpoints", controller, reconcile, state),
        janitor
    );
}

/// The service an Endpoints object belongs to: the one of its name, as
/// upstream, except for leader-election records kept in Endpoints.
fn endpoints_service(e: &Endpoints) -> Option<String> {
    (!e.annotations()
        .contains_key("control-plane.alpha.kubernetes.io/leader"))
    .then(|| e.name_any())
}

fn names_pod(e: &Endpoints, pod: &str) -> bool {
    e.subsets.iter().flatten().any(|s| {
        s.addresses
            .iter()
            .chain(&s.not_ready_addresses)
            .flatten()
            .any(|a| a.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
    })
}

/// The subsets for these backends, grouped by port set as upstream's
/// RepackSubsets: addresses in order, ready ones apart from the rest.
fn subsets(backends: &[Backend], publish_not_ready: bool) -> Vec<EndpointSubset> {
    let mut by_ports: BTreeMap<String, (Vec<EndpointPort>, EndpointSubset)> = BTreeMap::new();
    for b in backends {
        let mut ports = b.ports.clone();
        ports.sort_by(|x, y| (&x.name, x.port).cmp(&(&y.name, y.port)));
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let (_, subset) = by_ports
            .entry(key)
            .or_insert_with(|| (ports.clone(), EndpointSubset::default()));
        let address = EndpointAddress {
            ip: b.ip.clone(),
            hostname: b.hostname.clone(),
            node_name: b.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(&b.pod)),
        };
        let list = if publish_not_ready || (b.serving && !b.terminating) {
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        list.get_or_insert_with(Vec::new).push(address);
    }
    by_ports
        .into_values()
        .map(|(ports, mut subset)| {
            subset.ports = (!ports.is_empty()).then_some(ports);
            subset
        })
        .collect()
}

fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let mut left = MAX_ADDRESSES;
    let mut truncated = false;
    for s in subsets {
        for l in [&mut s.addresses, &mut s.not_ready_addresses]
            .into_iter()
            .flatten()
        {
            if l.len() > left {
                l.truncate(left);
                truncated = true;
            }
            left -= l.len();
        }
    }
    truncated
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, kube::Error> {
    if !managed(&svc) {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let publish = publishes_not_ready(&svc);
    let backends = backends(&svc, &state.pods, publish);
    let mut subsets = subsets(&backends, publish);
    let truncated = truncate(&mut subsets);
    let current = state.endpoints.get(&ObjectRef::new(&name).within(&ns));
    let labels = endpoint_labels(&svc);
    let subsets = (!subsets.is_empty()).then_some(subsets);
    if let Some(c) = &current
        && c.subsets == subsets
        && c.labels() == &labels
        && c.annotations().contains_key(OVER_CAPACITY) == truncated
    {
        return Ok(Action::await_change());
    }
    let still_there = |pod: &str| backends.iter().any(|b| b.pod.name_any() == pod);
    let lost_pod = current.as_deref().is_some_and(|c| {
        c.subsets.iter().flatten().any(|s| {
            s.addresses
                .iter()
                .chain(&s.not_ready_addresses)
                .flatten()
                .filter_map(|a| a.target_ref.as_ref()?.name.as_deref())
                .any(|p| !still_there(p))
        })
    });
    let mut annotations = current
        .as_ref()
        .map(|c| c.annotations().clone())
        .unwrap_or_default();
    annotations.insert(
        TRIGGER_TIME.into(),
        trigger_text(&trigger_time(&svc, &backends, lost_pod)),
    );
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY);
    }
    let desired = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            resource_version: current.as_ref().and_then(|c| c.resource_version()),
            ..Default::default()
        },
        subsets,
    };
    let api: Api<Endpoints> = Api::namespaced(state.client.clone(), &ns);
    let result = match current {
        Some(_) => api.replace(&name, &PostParams::default(), &desired).await,
        None => api.create(&PostParams::default(), &desired).await,
    };
    match result {
        Ok(_) => Ok(Action::await_change()),
        // The namespace is going away: its endpoints go with it.
        Err(kube::Error::Api(e)) if e.code == 403 && e.reason == "Forbidden" => {
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("redis".into()),
                        container_port: 6379,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn store(pods: Vec<Pod>) -> Store<Pod> {
        let (reader, mut writer) = kube::runtime::reflector::store();
        for p in pods {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(p));
        }
        reader
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = service(
            json!({"selector": {"app": "db"}, "ports": [{"port": 80, "targetPort": "redis"}]}),
        );
        let mut other = pod("b", "10.42.0.6", true);
        other.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 7000;
        let found = backends(
            &svc,
            &store(vec![pod("a", "10.42.0.5", true), other]),
            false,
        );
        let ports: Vec<i32> = found.iter().map(|b| b.ports[0].port).collect();
        assert_eq!(ports, [6379, 7000]);
        let subsets = subsets(&found, false);
        assert_eq!(subsets.len(), 2, "two port sets, two subsets");
    }

    #[test]
    fn unready_pods_are_not_ready_addresses_unless_published() {
        let svc = service(json!({"selector": {"app": "db"}, "ports": [{"port": 6379}]}));
        let pods = store(vec![
            pod("a", "10.42.0.5", true),
            pod("b", "10.42.0.6", false),
        ]);
        let found = backends(&svc, &pods, false);
        let s = &subsets(&found, false)[0];
        assert_eq!(s.addresses.as_ref().unwrap()[0].ip, "10.42.0.5");
        assert_eq!(s.not_ready_addresses.as_ref().unwrap()[0].ip, "10.42.0.6");
        let s = &subsets(&found, true)[0];
        assert_eq!(s.addresses.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn pods_without_an_address_or_that_ended_are_left_out() {
        let svc = service(json!({"selector": {"app": "db"}, "ports": [{"port": 6379}]}));
        let mut pending = pod("a", "", true);
        pending.status.as_mut().unwrap().pod_ip = None;
        let mut done = pod("b", "10.42.0.6", false);
        done.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut terminating = pod("c", "10.42.0.7", true);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let pods = store(vec![pending, done, terminating]);
        assert!(backends(&svc, &pods, false).is_empty());
        assert_eq!(
            backends(&svc, &pods, true).len(),
            1,
            "terminating kept when asked"
        );
    }

    #[test]
    fn a_headless_service_without_ports_lists_addresses_only() {
        let svc = service(json!({"selector": {"app": "db"}, "clusterIP": "None"}));
        let found = backends(&svc, &store(vec![pod("a", "10.42.0.5", true)]), false);
        let s = subsets(&found, false);
        assert!(s[0].ports.is_none());
        assert_eq!(
            endpoint_labels(&svc).get(HEADLESS).map(String::as_str),
            Some("")
        );
    }
}
