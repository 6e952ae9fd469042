//! Keeps the routing table in step with the cluster: informers on
//! Ingresses, IngressClasses, Services, EndpointSlices and Secrets; on any
//! change the table is rebuilt and swapped in (requests in flight finish
//! on the table they started with), and served Ingresses get the node's
//! address, or the addresses of all live servers, as their status.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use kubox_client::events::{Recorder, Type};
use kubox_controllers::{Informed, Informer, Informers};
use serde_json::json;
use tokio::sync::watch;

use crate::backends::Catalog;
use crate::class::{self, Classes};
use crate::service;
use crate::table::Table;

const RETRY: Duration = Duration::from_secs(2);

fn trigger<K: Informed>(informer: &Informer<K>) -> futures::stream::BoxStream<'static, ()> {
    informer.changes().map(|_| ()).boxed()
}

/// Runs until dropped.
pub async fn run(
    client: kube::Client,
    node_ip: IpAddr,
    status: crate::Status,
    extra_classes: Vec<String>,
    (http_port, https_port): (u16, u16),
    table: watch::Sender<Arc<Table>>,
) {
    let published = {
        let client = client.clone();
        async move {
            while let Err(e) = class::ensure(client.clone()).await {
                tracing::warn!("creating IngressClass {}: {e}", class::CLASS);
                tokio::time::sleep(RETRY).await;
            }
            while let Err(e) = service::publish(&client, node_ip, http_port, https_port).await {
                tracing::warn!("applying Service {}: {e}", service::NAME);
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    // Ends with this task, as the informers do.
    let _published = kubox_client::Tasks::new(vec![tokio::spawn(published)]);
    let (served_now, served_seen) = watch::channel(Vec::new());
    let own_status = matches!(status, crate::Status::Node);
    let _status_writer = match status {
        crate::Status::Node => None,
        crate::Status::Servers(timing) => {
            let election = kubox_client::leader::LeaderElection::with_timing(
                client.clone(),
                "kube-system",
                "kubox-ingress",
                kubox_client::leader::identity(),
                timing,
            );
            let client = client.clone();
            Some(election.spawn(move || servers_status(client.clone(), served_seen.clone())))
        }
    };
    let informers = Informers::new(client.clone());
    let ingresses = informers.get::<Ingress>();
    let classes = informers.get::<IngressClass>();
    let services = informers.get::<Service>();
    let slices = informers.get::<EndpointSlice>();
    let secrets = informers.get::<Secret>();
    let mut changes = futures::stream::select_all([
        trigger(&ingresses),
        trigger(&classes),
        trigger(&services),
        trigger(&slices),
        trigger(&secrets),
    ]);
    ingresses.synced().await;
    classes.synced().await;
    services.synced().await;
    slices.synced().await;
    secrets.synced().await;
    let mut missing = MissingBackends {
        recorder: Recorder::new(client.clone(), "kubox-ingress", None),
        reported: HashSet::new(),
    };
    loop {
        let ours = Classes::new(classes.store().state().iter().map(|c| &**c), &extra_classes);
        let mut served: Vec<Arc<Ingress>> = ingresses
            .store()
            .state()
            .into_iter()
            .filter(|i| ours.serves(i))
            .collect();
        served.sort_by(|a, b| {
            (a.creation_timestamp(), a.namespace(), a.name_any()).cmp(&(
                b.creation_timestamp(),
                b.namespace(),
                b.name_any(),
            ))
        });
        let mut catalog = Catalog::new(services.store().state(), slices.store().state());
        let secrets_by_name: HashMap<(String, String), Arc<Secret>> = secrets
            .store()
            .state()
            .into_iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
            .collect();
        table.send_replace(Arc::new(Table::build(
            &served,
            &mut catalog,
            &secrets_by_name,
        )));
        missing.report(&served, &catalog);
        if own_status {
            publish_status(&client, &served, &[node_ip.to_string()]).await;
        }
        served_now.send_replace(served);
        // The next change, and every other one already waiting: one
        // rebuild for a burst.
        if changes.next().await.is_none() {
            return;
        }
        while let Some(Some(())) = changes.next().now_or_never() {}
    }
}

/// A Warning Event on an Ingress for each backend whose Service or port
/// does not exist (its paths answer 503), once until it is fixed.
struct MissingBackends {
    recorder: Recorder,
    /// (Ingress UID, problem) reported and still so.
    reported: HashSet<(String, String)>,
}

impl MissingBackends {
    fn report(&mut self, served: &[Arc<Ingress>], catalog: &Catalog) {
        let mut now = HashSet::new();
        for ingress in served {
            let namespace = ingress.namespace().unwrap_or_default();
            let Some(spec) = &ingress.spec else {
                continue;
            };
            let paths = spec.rules.iter().flatten().filter_map(|r| r.http.as_ref());
            let backends = spec
                .default_backend
                .iter()
                .chain(paths.flat_map(|h| h.paths.iter().map(|p| &p.backend)))
                .filter_map(|b| b.service.as_ref());
            for backend in backends {
                let Some(problem) = catalog.missing(&namespace, backend) else {
                    continue;
                };
                let key = (ingress.uid().unwrap_or_default(), problem);
                if !self.reported.contains(&key) {
                    self.recorder.record(
                        ingress.object_ref(&()),
                        Type::Warning,
                        "BackendNotFound",
                        key.1.clone(),
                    );
                }
                now.insert(key);
            }
        }
        self.reported = now;
    }
}

/// How often the elected status writer looks at which servers are live:
/// the API servers' lease renewal period.
const SERVERS_PERIOD: Duration = Duration::from_secs(5);

/// While this controller leads: the served Ingresses' status kept to the
/// addresses the live servers announce, on every change of what is served
/// and every [`SERVERS_PERIOD`]. None announced (a moment of no live lease)
/// leaves the status as it is.
async fn servers_status(client: kube::Client, mut served: watch::Receiver<Vec<Arc<Ingress>>>) {
    loop {
        let announced =
            kubox_client::peers::list_announced(&client, kubox_client::peers::INGRESS_ADDRESS)
                .await;
        match announced {
            Ok(ips) if !ips.is_empty() => {
                let now = served.borrow_and_update().clone();
                publish_status(&client, &now, &ips).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("listing the API servers' leases: {e}"),
        }
        let _ = tokio::time::timeout(SERVERS_PERIOD, served.changed()).await;
    }
}

/// `status.loadBalancer.ingress` is `ips`, which `kubectl get ingress`
/// shows as ADDRESS; Ingresses already so are left alone.
async fn publish_status(client: &kube::Client, served: &[Arc<Ingress>], ips: &[String]) {
    for ingress in served {
        let current: Vec<&str> = ingress
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref())
            .collect();
        if current == ips {
            continue;
        }
        let api: Api<Ingress> =
            Api::namespaced(client.clone(), &ingress.namespace().unwrap_or_default());
        let listed: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        let patch = json!({"status": {"loadBalancer": {"ingress": listed}}});
        if let Err(e) = api
            .patch_status(
                &ingress.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::warn!(ingress = %ingress.name_any(), "writing status: {e}");
        }
    }
}
