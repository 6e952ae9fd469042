//! The service proxy (our kube-proxy, in nftables mode): an API client
//! watching Services and EndpointSlices. Each sync builds the model of the
//! rules from its caches and writes only the difference from what it last
//! wrote, as one nft transaction; changes arriving during a sync are
//! coalesced into the next one, which starts as soon as this one ends.
//! Every `sync_period` it checks its table is there, and writes it whole
//! when it is not (or when a write failed).

mod model;
mod program;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tokio::sync::{Notify, watch};

use crate::{NetConfig, nft};

pub use model::Model;

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub net: NetConfig,
    pub node_name: String,
    pub sync_period: Duration,
}

/// A running proxy; dropping it stops it (its rules stay, so traffic
/// keeps flowing while a restarted proxy catches up).
pub struct Proxy {
    applied: watch::Receiver<u64>,
    _tasks: kubox_client::Tasks,
}

impl Proxy {
    pub fn start(client: kube::Client, config: ProxyConfig) -> Self {
        let (applied_tx, applied) = watch::channel(0);
        let changed = Arc::new(Notify::new());
        let services = kubox_client::follow::<Service>(client.clone(), changed.clone());
        let slices = kubox_client::follow::<EndpointSlice>(client, changed.clone());
        let sync = tokio::spawn(run(
            config,
            services.0.clone(),
            slices.0.clone(),
            changed,
            applied_tx,
        ));
        Self {
            applied,
            _tasks: kubox_client::Tasks::new(vec![services.1, slices.1, sync]),
        }
    }

    /// The highest resourceVersion among the Services and EndpointSlices
    /// whose rules are in place: a change with that version or lower is
    /// in the kernel.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// An object's resourceVersion as the number [`Proxy::applied`] compares.
pub fn version<K: kube::Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn run(
    config: ProxyConfig,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
    applied: watch::Sender<u64>,
) {
    if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
        return;
    }
    let table = config.net.proxy_table();
    let node = model::Node {
        name: config.node_name.clone(),
        cluster_cidr: config.net.cluster_cidr,
    };
    let mut written: Option<Model> = None;
    let mut check = tokio::time::interval(config.sync_period);
    check.tick().await;
    loop {
        let started = std::time::Instant::now();
        let services = services.state();
        let slices = slices.state();
        let seen = services
            .iter()
            .map(|s| version(&**s))
            .chain(slices.iter().map(|s| version(&**s)))
            .max()
            .unwrap_or(0);
        let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        let model = Model::build(
            services.iter().map(|s| &**s),
            &slice_refs,
            &node,
            written.as_ref(),
        );
        let batch = match &written {
            Some(old) => program::incremental(&table, old, &model),
            None => program::full(&table, &config.net.service_cidr, &model),
        };
        let full = written.is_none();
        let commands = batch.len();
        let built = started.elapsed();
        match batch.apply().await {
            Ok(()) => {
                tracing::debug!(table, commands, ?built, took = ?started.elapsed(), "synced");
                if full {
                    tracing::info!(
                        table,
                        services = services.len(),
                        commands,
                        "service rules written"
                    );
                }
                written = Some(model);
                applied.send_replace(seen);
            }
            Err(e) => {
                tracing::warn!(table, "writing service rules: {e}; writing them whole next");
                written = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = check.tick() => {
                if !nft::table_exists(&table).await.unwrap_or(false) {
                    tracing::info!(table, "the service rules' table is gone: writing it again");
                    written = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn node() -> model::Node {
        model::Node {
            name: "a".into(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        }
    }

    fn ready(ip: &str, node: &str) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": node})
    }

    /// The rules of every Service together, for looking into.
    fn rules(services: &[&Service], slices: &[&EndpointSlice]) -> model::Rules {
        let m = Model::build(services.iter().copied(), slices, &node(), None);
        let mut all = model::Rules::default();
        for (_, r) in m.services.values() {
            all.chains.extend(r.chains.clone());
            for (map, elements) in &r.maps {
                all.maps.entry(map).or_default().extend(elements.clone());
            }
            all.cluster_ips.extend(r.cluster_ips.iter().copied());
            all.affinity.extend(r.affinity.clone());
        }
        all
    }

    fn verdict<'a>(r: &'a model::Rules, map: &str, key: &str) -> Option<&'a serde_json::Value> {
        r.maps.get(map).and_then(|m| m.get(key)).map(|(_, v)| v)
    }

    #[test]
    fn a_cluster_ip_balances_over_ready_endpoints_only() {
        let s = svc(json!({"clusterIP": "10.43.0.9", "ports": [{"port": 80, "targetPort": 8080}]}));
        let sl = slice(json!([
            ready("10.42.0.5", "a"),
            ready("10.42.0.6", "b"),
            {"addresses": ["10.42.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]));
        let r = rules(&[&s], &[&sl]);
        let endpoint_chains: Vec<&String> = r
            .chains
            .keys()
            .filter(|k| k.starts_with("endpoint-"))
            .collect();
        assert_eq!(endpoint_chains.len(), 2, "{endpoint_chains:?}");
        assert!(verdict(&r, model::SERVICE_IPS, "10.43.0.9 . tcp . 80").is_some());
        assert!(
            r.maps
                .get(model::NO_ENDPOINT_SERVICES)
                .is_none_or(|m| m.is_empty())
        );
        let text = serde_json::to_string(&r.chains).unwrap();
        assert!(text.contains(r#""mod":2"#), "{text}");
    }

    #[test]
    fn no_endpoints_is_rejected_and_terminating_ones_serve_when_nothing_else_does() {
        let s = svc(
            json!({"clusterIP": "10.43.0.9", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let r = rules(&[&s], &[]);
        assert!(verdict(&r, model::NO_ENDPOINT_SERVICES, "10.43.0.9 . tcp . 80").is_some());
        assert!(verdict(&r, model::NO_ENDPOINT_NODEPORTS, "tcp . 30080").is_some());
        let sl = slice(
            json!([{"addresses": ["10.42.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}}]),
        );
        let r = rules(&[&s], &[&sl]);
        assert!(verdict(&r, model::SERVICE_IPS, "10.43.0.9 . tcp . 80").is_some());
        assert!(verdict(&r, model::SERVICE_NODEPORTS, "tcp . 30080").is_some());
    }

    #[test]
    fn local_policies_keep_traffic_on_the_node() {
        let s = svc(
            json!({"clusterIP": "10.43.0.9", "type": "NodePort", "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let r = rules(&[&s], &[&slice(json!([ready("10.42.1.5", "b")]))]);
        // The only endpoint is on another node: both kinds of traffic are dropped here.
        let drop = json!({"drop": null});
        assert_eq!(
            verdict(&r, model::NO_ENDPOINT_SERVICES, "10.43.0.9 . tcp . 80"),
            Some(&drop)
        );
        assert_eq!(
            verdict(&r, model::NO_ENDPOINT_NODEPORTS, "tcp . 30080"),
            Some(&drop)
        );
    }

    #[test]
    fn headless_and_external_name_services_have_no_rules() {
        let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        let external = svc(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert_eq!(rules(&[&headless, &external], &[]), model::Rules::default());
    }

    #[test]
    fn session_affinity_remembers_clients_per_endpoint() {
        let s = svc(
            json!({"clusterIP": "10.43.0.9", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}),
        );
        let r = rules(
            &[&s],
            &[&slice(json!([
                ready("10.42.0.5", "a"),
                ready("10.42.0.6", "a")
            ]))],
        );
        assert_eq!(r.affinity.len(), 2);
        assert!(r.affinity.values().all(|t| *t == 60));
    }

    #[test]
    fn an_endpoint_change_rewrites_only_its_chains_and_elements() {
        let mut s = svc(json!({"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}));
        s.metadata.resource_version = Some("1".into());
        let mut other = serde_json::from_value::<Service>(
            json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 5432}]}}),
        )
        .unwrap();
        other.metadata.resource_version = Some("2".into());
        let mut one = slice(json!([ready("10.42.0.5", "a")]));
        one.metadata.resource_version = Some("3".into());
        let mut two = slice(json!([ready("10.42.0.5", "a"), ready("10.42.0.6", "a")]));
        two.metadata.resource_version = Some("4".into());
        let before = Model::build([&s, &other], &[&one], &node(), None);
        let after = Model::build([&s, &other], &[&two], &node(), Some(&before));
        // db's rules are the very ones it had: not made again, not compared.
        assert!(Arc::ptr_eq(
            &before.services["default/db"].1,
            &after.services["default/db"].1
        ));
        let batch = program::incremental("t", &before, &after);
        // The service chain is rewritten, one endpoint chain is added.
        assert!(!batch.is_empty() && batch.len() < 8, "{}", batch.len());
        let again = Model::build([&s, &other], &[&two], &node(), Some(&after));
        assert!(program::incremental("t", &after, &again).is_empty());
    }

    /// Runs `f` on a thread in a network namespace of its own, so what nft
    /// does there touches nothing else and goes with the thread.
    fn in_own_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: only this thread moves, and it runs nothing but `f`.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("a network namespace of its own");
            f()
        })
        .join()
        .unwrap()
    }

    fn nft_list() -> String {
        let out = std::process::Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_rules_are_accepted_by_the_kernel_whole_and_as_changes() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let listing = in_own_netns(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let s = svc(json!({"clusterIP": "10.43.0.9", "type": "LoadBalancer", "sessionAffinity": "ClientIP",
                    "ports": [{"port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}));
                let mut lb = s.clone();
                lb.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}})).unwrap();
                let cidr = "10.43.0.0/16".parse().unwrap();
                let before = Model::build([&s], &[], &node(), None);
                program::full("kubox-test", &cidr, &before).apply().await.unwrap();
                let after = Model::build([&lb], &[&slice(json!([ready("10.42.0.5", "a"), ready("10.42.0.6", "b")]))], &node(), None);
                program::incremental("kubox-test", &before, &after).apply().await.unwrap();
                let text = nft_list();
                program::incremental("kubox-test", &after, &before).apply().await.unwrap();
                (text, nft_list())
            })
        });
        let (after, before) = listing;
        assert!(after.contains("dnat to 10.42.0.5:8080"), "{after}");
        assert!(after.contains("numgen random mod 2"), "{after}");
        assert!(after.contains("192.0.2.10 . tcp . 80"), "{after}");
        assert!(after.contains("update @affinity-"), "{after}");
        assert!(!before.contains("10.42.0.5"), "{before}");
        assert!(
            before.contains("10.43.0.9 . tcp . 80 : goto reject-chain"),
            "{before}"
        );
    }
}
