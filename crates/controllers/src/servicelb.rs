//! The service load balancer, as k3s's servicelb: a LoadBalancer Service
//! gets the addresses of the cluster's ready nodes as its ingress, and each
//! node's service proxy forwards the service's ports on those addresses.
//! As with k3s (whose balancer binds host ports), a port can serve one
//! LoadBalancer Service only: a later Service asking for a port an older
//! one has stays pending until that one goes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::{Context, runner};

struct State {
    client: kube::Client,
    nodes: Store<Node>,
    services: Store<Service>,
}

/// LoadBalancer Services no other balancer was asked for (`loadBalancerClass`).
fn balanced(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

fn all_balanced(services: &Store<Service>) -> Vec<ObjectRef<Service>> {
    services
        .state()
        .iter()
        .filter(|s| balanced(s))
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

pub async fn run(ctx: Arc<Context>) {
    let services = ctx.informers.get::<Service>();
    let nodes = ctx.informers.get::<Node>();
    let (by_node, by_service) = (services.store(), services.store());
    services.synced().await;
    let controller = Controller::for_shared_stream(services.stream(), services.store())
        .watches_shared_stream(nodes.stream(), move |_: Arc<Node>| all_balanced(&by_node))
        .watches_shared_stream(services.stream(), move |_: Arc<Service>| {
            all_balanced(&by_service)
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        nodes: nodes.store(),
        services: services.store(),
    });
    runner::run("servicelb", controller, reconcile, state).await;
}

fn ports(svc: &Service) -> Vec<(String, i32)> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect()
}

fn has_ingress(svc: &Service) -> bool {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

/// Whether another LoadBalancer Service has a claim on one of `svc`'s
/// ports first: it holds the port already while `svc` does not, or
/// neither (or both) do and it is older.
fn port_taken(svc: &Service, services: &Store<Service>) -> bool {
    let mine = ports(svc);
    let rank = |s: &Service| {
        (
            !has_ingress(s),
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.namespace(),
            s.name_any(),
        )
    };
    services.state().iter().any(|other| {
        balanced(other)
            && other.uid() != svc.uid()
            && rank(other) < rank(svc)
            && ports(other).iter().any(|p| mine.contains(p))
    })
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
}

/// The address a node is reached at from outside: its ExternalIP, else its InternalIP.
fn node_address(node: &Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    ["ExternalIP", "InternalIP"].iter().find_map(|t| {
        addresses
            .iter()
            .find(|a| a.type_ == *t)
            .map(|a| a.address.clone())
    })
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, kube::Error> {
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    let desired: Vec<LoadBalancerIngress> = if balanced(&svc) && !port_taken(&svc, &state.services)
    {
        let mut ips: Vec<String> = state
            .nodes
            .state()
            .iter()
            .filter(|n| ready(n))
            .filter_map(|n| node_address(n))
            .collect();
        ips.sort();
        ips.dedup();
        ips.into_iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            })
            .collect()
    } else if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
        // Another balancer's Service, or one waiting for its port: not ours to fill.
        if !balanced(&svc) {
            return Ok(Action::await_change());
        }
        Vec::new()
    } else {
        Vec::new()
    };
    if current == desired {
        return Ok(Action::await_change());
    }
    let api: Api<Service> =
        Api::namespaced(state.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": desired}}});
    match api
        .patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}
