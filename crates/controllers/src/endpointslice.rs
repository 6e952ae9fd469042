//! The EndpointSlice controller: for each Service with a selector, slices
//! of at most 100 endpoints, one set of slices per port set, each
//! endpoint with its ready/serving/terminating conditions. Slices carry
//! `kubernetes.io/service-name`, upstream's managed-by label and an owner
//! reference to their Service. An endpoint stays in the slice it is in
//! while it lasts, so a change rewrites only the slices it touches.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::endpoints::{
    Backend, TRIGGER_TIME, backends, clean_up_after_services, endpoint_labels, managed,
    publishes_not_ready, services_of, target_ref, trigger_text, trigger_time,
};
use crate::{Context, runner};

pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Upstream's `--max-endpoints-per-slice` default.
const MAX_ENDPOINTS: usize = 100;
const ZONE: &str = "topology.kubernetes.io/zone";

struct State {
    client: kube::Client,
    pods: Store<k8s_openapi::api::core::v1::Pod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
}

/// The service a slice is this controller's for.
fn slice_service(s: &EndpointSlice) -> Option<String> {
    let labels = s.labels();
    (labels.get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER))
        .then(|| labels.get(SERVICE_NAME).cloned())
        .flatten()
}

fn names_pod(s: &EndpointSlice, pod: &str) -> bool {
    s.endpoints
        .iter()
        .flatten()
        .any(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
}

pub async fn run(ctx: Arc<Context>) {
    let services = ctx.informers.get::<Service>();
    let pods = ctx.informers.get::<k8s_openapi::api::core::v1::Pod>();
    let slices = ctx.informers.get::<EndpointSlice>();
    let nodes = ctx.informers.get::<Node>();
    let (svc_store, slice_store) = (services.store(), slices.store());
    services.synced().await;
    let controller = Controller::for_shared_stream(services.stream(), services.store())
        .watches_shared_stream(pods.stream(), move |pod| {
            services_of(&pod, &svc_store, &slice_store, names_pod, slice_service)
        })
        .watches_shared_stream(slices.stream(), |s: Arc<EndpointSlice>| {
            Some(ObjectRef::new(&slice_service(&s)?).within(&s.namespace()?))
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        nodes: nodes.store(),
        slices: slices.store(),
    });
    let janitor = clean_up_after_services(services, slices, slice_service, ctx.client.clone());
    tokio::join!(
        runner::run("endpointslice", controller, reconcile, state),
        janitor
    );
}

fn endpoint(b: &Backend, publish_not_ready: bool, nodes: &Store<Node>) -> Endpoint {
    let node_name = b.pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let zone = node_name
        .as_ref()
        .and_then(|n| nodes.get(&ObjectRef::new(n)))
        .and_then(|n| n.labels().get(ZONE).cloned());
    Endpoint {
        addresses: vec![b.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready || (b.serving && !b.terminating)),
            serving: Some(b.serving),
            terminating: Some(b.terminating),
        }),
        hostname: b.hostname.clone(),
        node_name,
        target_ref: Some(target_ref(&b.pod)),
        zone,
        ..Default::default()
    }
}

fn ports_of(b: &Backend) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = b
        .ports
        .iter()
        .map(|p| EndpointPort {
            name: Some(p.name.clone().unwrap_or_default()),
            port: Some(p.port),
            protocol: p.protocol.clone(),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
    ports
}

fn key(e: &Endpoint) -> (String, Option<String>) {
    (
        e.addresses.first().cloned().unwrap_or_default(),
        e.target_ref.as_ref().and_then(|r| r.uid.clone()),
    )
}

/// What to write so `existing` slices hold the `desired` endpoints of each
/// port set: slices are (name or `None` for new, content).
#[derive(Debug, Default, PartialEq)]
struct Plan {
    write: Vec<(Option<String>, Vec<EndpointPort>, Vec<Endpoint>)>,
    delete: Vec<String>,
}

fn plan(
    existing: &[Arc<EndpointSlice>],
    desired: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)>,
) -> Plan {
    let mut out = Plan::default();
    let mut used: HashSet<String> = HashSet::new();
    let group_key = |ports: &Option<Vec<EndpointPort>>| {
        let mut ports = ports.clone().unwrap_or_default();
        ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        serde_json::to_string(&ports).unwrap_or_default()
    };
    let no_endpoints = desired.values().all(|(_, e)| e.is_empty());
    for (group, (ports, wanted)) in &desired {
        let mut left: BTreeMap<(String, Option<String>), &Endpoint> =
            wanted.iter().map(|e| (key(e), e)).collect();
        // Existing slices of this port set keep the endpoints they have that still exist.
        let mut kept: Vec<(String, Vec<Endpoint>, bool)> = Vec::new();
        for s in existing
            .iter()
            .filter(|s| s.address_type == "IPv4" && group_key(&s.ports) == *group)
        {
            let old = s.endpoints.clone().unwrap_or_default();
            let now: Vec<Endpoint> = old
                .iter()
                .filter_map(|e| left.remove(&key(e)).cloned())
                .collect();
            let changed = now != old;
            kept.push((s.name_any(), now, changed));
        }
        // New endpoints fill slices with room first, then new slices.
        let mut fresh: Vec<Endpoint> = left.into_values().cloned().collect();
        for (_, endpoints, changed) in kept.iter_mut() {
            while endpoints.len() < MAX_ENDPOINTS && !fresh.is_empty() {
                endpoints.push(fresh.remove(0));
                *changed = true;
            }
        }
        for (name, endpoints, changed) in kept {
            if endpoints.is_empty() {
                continue;
            }
            used.insert(name.clone());
            if changed {
                out.write.push((Some(name), ports.clone(), endpoints));
            }
        }
        for chunk in fresh.chunks(MAX_ENDPOINTS) {
            out.write.push((None, ports.clone(), chunk.to_vec()));
        }
    }
    // A service with no endpoints keeps one empty slice, as upstream's placeholder.
    if no_endpoints {
        match existing
            .iter()
            .find(|s| s.endpoints.as_ref().is_none_or(Vec::is_empty) && s.ports.is_none())
        {
            Some(s) => {
                used.insert(s.name_any());
            }
            None => out.write.push((None, Vec::new(), Vec::new())),
        }
    }
    for s in existing {
        if !used.contains(&s.name_any()) {
            out.delete.push(s.name_any());
        }
    }
    out
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, kube::Error> {
    if !managed(&svc) {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let publish = publishes_not_ready(&svc);
    let found = backends(&svc, &state.pods, true);
    let mut desired: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for b in &found {
        let ports = ports_of(b);
        let group = serde_json::to_string(&ports).unwrap_or_default();
        desired
            .entry(group)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint(b, publish, &state.nodes));
    }
    let existing: Vec<Arc<EndpointSlice>> = state
        .slices
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| slice_service(s).as_deref() == Some(name.as_str()))
        .collect();
    let labels = {
        let mut l = endpoint_labels(&svc);
        l.insert(SERVICE_NAME.into(), name.clone());
        l.insert(MANAGED_BY.into(), CONTROLLER.into());
        l
    };
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: name.clone(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut plan = plan(&existing, desired);
    // Slices whose labels or owner fell behind the service are rewritten too.
    for s in &existing {
        let stale = s.labels() != &labels
            || s.metadata.owner_references.as_deref() != Some(std::slice::from_ref(&owner));
        let name = s.name_any();
        if stale
            && !plan.delete.contains(&name)
            && !plan.write.iter().any(|w| w.0.as_ref() == Some(&name))
        {
            plan.write.push((
                Some(name),
                s.ports.clone().unwrap_or_default(),
                s.endpoints.clone().unwrap_or_default(),
            ));
        }
    }
    if plan.write.is_empty() && plan.delete.is_empty() {
        return Ok(Action::await_change());
    }
    let lost_pod = existing.iter().any(|s| {
        s.endpoints.iter().flatten().any(|e| {
            let uid = e.target_ref.as_ref().and_then(|r| r.uid.clone());
            !found.iter().any(|b| b.pod.uid() == uid)
        })
    });
    let trigger = trigger_text(&trigger_time(&svc, &found, lost_pod));
    let api: Api<EndpointSlice> = Api::namespaced(state.client.clone(), &ns);
    for (slice_name, ports, endpoints) in plan.write {
        let current = slice_name
            .as_ref()
            .and_then(|n| existing.iter().find(|s| s.name_any() == *n));
        let mut annotations = current.map(|c| c.annotations().clone()).unwrap_or_default();
        annotations.insert(TRIGGER_TIME.into(), trigger.clone());
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: slice_name.clone(),
                generate_name: slice_name.is_none().then(|| format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![owner.clone()]),
                resource_version: current.and_then(|c| c.resource_version()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: (!ports.is_empty()).then_some(ports),
        };
        let result = match &slice_name {
            Some(n) => api.replace(n, &PostParams::default(), &slice).await,
            None => api.create(&PostParams::default(), &slice).await,
        };
        match result {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 403 && e.reason == "Forbidden" => {
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
    }
    for n in plan.delete {
        match api.delete(&n, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            ..Default::default()
        }
    }

    fn port(n: i32) -> Vec<EndpointPort> {
        vec![EndpointPort {
            name: Some(String::new()),
            port: Some(n),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]
    }

    fn slice(name: &str, ports: Vec<EndpointPort>, ips: &[&str]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(ips.iter().map(|i| ep(i)).collect()),
            ports: (!ports.is_empty()).then_some(ports),
        })
    }

    fn desired(
        ports: Vec<EndpointPort>,
        ips: &[String],
    ) -> BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> {
        BTreeMap::from([(
            serde_json::to_string(&ports).unwrap(),
            (ports, ips.iter().map(|i| ep(i)).collect()),
        )])
    }

    #[test]
    fn endpoints_are_split_at_one_hundred_per_slice() {
        let ips: Vec<String> = (0..250)
            .map(|i| format!("10.42.{}.{}", i / 200, i % 200))
            .collect();
        let p = plan(&[], desired(port(80), &ips));
        let sizes: Vec<usize> = p.write.iter().map(|w| w.2.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert!(p.write.iter().all(|w| w.0.is_none()));
    }

    #[test]
    fn a_change_rewrites_only_the_slice_it_touches() {
        let existing = vec![
            slice("a", port(80), &["10.42.0.1", "10.42.0.2"]),
            slice("b", port(80), &["10.42.0.3"]),
        ];
        let ips: Vec<String> = ["10.42.0.1", "10.42.0.2", "10.42.0.4"]
            .map(String::from)
            .to_vec();
        let p = plan(&existing, desired(port(80), &ips));
        // .3 went, and b with it; the newcomer fills a, which has room.
        assert_eq!(p.delete, ["b"]);
        assert_eq!(p.write.len(), 1);
        assert_eq!(p.write[0].0.as_deref(), Some("a"));
        assert_eq!(p.write[0].2.len(), 3);
        // Only b's endpoint going: a is left alone.
        let p = plan(&existing, desired(port(80), &ips[..2]));
        assert_eq!(p.delete, ["b"]);
        assert!(p.write.is_empty());
    }

    #[test]
    fn a_port_change_replaces_the_slices_and_no_endpoints_keeps_a_placeholder() {
        let existing = vec![slice("a", port(80), &["10.42.0.1"])];
        let p = plan(&existing, desired(port(8080), &["10.42.0.1".into()]));
        assert_eq!(p.delete, ["a"]);
        assert_eq!(p.write[0].1, port(8080));
        let p = plan(&existing, BTreeMap::new());
        assert_eq!(p.delete, ["a"]);
        assert_eq!(p.write, vec![(None, Vec::new(), Vec::new())]);
        let placeholder = vec![slice("p", Vec::new(), &[])];
        assert_eq!(plan(&placeholder, BTreeMap::new()), Plan::default());
    }
}
