//! A Service backend resolved to its ready endpoints, which the proxy
//! connects to directly (pod addresses, not the ClusterIP), taking turns.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IngressServiceBackend;
use kube::ResourceExt;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where one backend's requests go.
#[derive(Debug)]
pub struct Upstream {
    /// `namespace/service:port`, for logs.
    pub name: String,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(name: String, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            name,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in turn; `None` when the backend has none ready.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.endpoints[n % self.endpoints.len()])
    }

    #[cfg(test)]
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

/// The Services and EndpointSlices backends are resolved from.
#[derive(Default)]
pub struct Catalog {
    services: HashMap<(String, String), Arc<Service>>,
    slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>>,
    /// Upstreams already made, so paths sharing a backend share its turns.
    made: HashMap<String, Arc<Upstream>>,
}

impl Catalog {
    pub fn new(
        services: impl IntoIterator<Item = Arc<Service>>,
        slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
    ) -> Self {
        let services = services
            .into_iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
            .collect();
        let mut by_service: HashMap<_, Vec<_>> = HashMap::new();
        for slice in slices {
            if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                by_service
                    .entry((slice.namespace().unwrap_or_default(), svc.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        Self {
            services,
            slices: by_service,
            made: HashMap::new(),
        }
    }

    /// The backend's upstream; with no endpoints (so 503) when the Service
    /// or its port is missing or nothing behind it is ready.
    pub fn upstream(&mut self, namespace: &str, backend: &IngressServiceBackend) -> Arc<Upstream> {
        let port = backend.port.as_ref();
        let shown_port = port
            .and_then(|p| p.name.clone().or(p.number.map(|n| n.to_string())))
            .unwrap_or_default();
        let name = format!("{namespace}/{}:{shown_port}", backend.name);
        if let Some(made) = self.made.get(&name) {
            return made.clone();
        }
        let endpoints = self.endpoints(namespace, backend).unwrap_or_default();
        let upstream = Arc::new(Upstream::new(name.clone(), endpoints));
        self.made.insert(name, upstream.clone());
        upstream
    }

    /// What is wrong with a backend whose Service or port does not exist.
    pub fn missing(&self, namespace: &str, backend: &IngressServiceBackend) -> Option<String> {
        self.endpoints(namespace, backend).err()
    }

    fn endpoints(
        &self,
        namespace: &str,
        backend: &IngressServiceBackend,
    ) -> Result<Vec<SocketAddr>, String> {
        let key = (namespace.to_owned(), backend.name.clone());
        let service = self
            .services
            .get(&key)
            .ok_or_else(|| format!("service \"{namespace}/{}\" not found", backend.name))?;
        let wanted = backend.port.clone().unwrap_or_default();
        let port = service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| match (&wanted.name, wanted.number) {
                (Some(name), _) if !name.is_empty() => p.name.as_deref() == Some(name),
                (_, Some(number)) => p.port == number,
                _ => false,
            })
            .ok_or_else(|| {
                let shown = wanted
                    .name
                    .clone()
                    .or(wanted.number.map(|n| n.to_string()))
                    .unwrap_or_default();
                format!(
                    "service \"{namespace}/{}\" has no port {shown}",
                    backend.name
                )
            })?;
        let port_name = port.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in self.slices.get(&key).into_iter().flatten() {
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            let ready = slice
                .endpoints
                .iter()
                .flatten()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
            for endpoint in ready {
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        endpoints.push(SocketAddr::new(ip, number as u16));
                    }
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(endpoints)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use serde_json::json;

    pub fn service(ns: &str, name: &str, ports: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"ports": ports},
            }))
            .unwrap(),
        )
    }

    pub fn slice(
        ns: &str,
        svc: &str,
        port: (&str, i32),
        ready: &[&str],
        unready: &[&str],
    ) -> Arc<EndpointSlice> {
        let endpoint =
            |ip: &&str, ready: bool| json!({"addresses": [ip], "conditions": {"ready": ready}});
        let endpoints: Vec<_> = ready
            .iter()
            .map(|ip| endpoint(ip, true))
            .chain(unready.iter().map(|ip| endpoint(ip, false)))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": format!("{svc}-x"),
                             "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "ports": [{"name": port.0, "port": port.1}],
                "endpoints": endpoints,
            }))
            .unwrap(),
        )
    }

    fn backend(name: &str, port: serde_json::Value) -> IngressServiceBackend {
        serde_json::from_value(json!({"name": name, "port": port})).unwrap()
    }

    #[test]
    fn backends_resolve_by_port_number_or_name_to_ready_endpoints() {
        let mut catalog = Catalog::new(
            [service(
                "d",
                "web",
                json!([{"name": "http", "port": 80, "targetPort": 8080}]),
            )],
            [slice(
                "d",
                "web",
                ("http", 8080),
                &["10.0.0.2", "10.0.0.1"],
                &["10.0.0.3"],
            )],
        );
        let want: Vec<SocketAddr> = vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        ];
        assert_eq!(
            catalog
                .upstream("d", &backend("web", json!({"number": 80})))
                .endpoints(),
            want
        );
        assert_eq!(
            catalog
                .upstream("d", &backend("web", json!({"name": "http"})))
                .endpoints(),
            want
        );
        assert!(
            catalog
                .upstream("d", &backend("web", json!({"number": 81})))
                .pick()
                .is_none()
        );
        assert!(
            catalog
                .upstream("d", &backend("gone", json!({"number": 80})))
                .pick()
                .is_none()
        );
        assert!(
            catalog
                .upstream("e", &backend("web", json!({"number": 80})))
                .pick()
                .is_none()
        );
        assert_eq!(
            catalog.missing("d", &backend("web", json!({"number": 81}))),
            Some("service \"d/web\" has no port 81".into())
        );
        assert_eq!(
            catalog.missing("d", &backend("gone", json!({"name": "http"}))),
            Some("service \"d/gone\" not found".into())
        );
        assert_eq!(
            catalog.missing("d", &backend("web", json!({"number": 80}))),
            None
        );
    }

    #[test]
    fn endpoints_take_turns() {
        let up = Upstream::new(
            "x".into(),
            vec!["10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap()],
        );
        let picks: Vec<_> = (0..4)
            .map(|_| up.pick().unwrap().ip().to_string())
            .collect();
        assert_eq!(picks, ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]);
    }
}
