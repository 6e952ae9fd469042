//! What ingress-nginx reports of each request: Prometheus metrics with its
//! names and labels (`nginx_ingress_controller_requests`,
//! `nginx_ingress_controller_request_duration_seconds`), and an access log
//! line in its default `upstreaminfo` format.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use kubox_prometheus::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    canary: String,
    controller_class: &'static str,
    controller_namespace: &'static str,
    controller_pod: String,
    host: String,
    ingress: String,
    method: String,
    namespace: String,
    path: String,
    service: String,
    status: String,
}

/// Prometheus' default buckets, which ingress-nginx uses.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The ingress class controller name, as ingress-nginx's `controller_class`.
const CONTROLLER_CLASS: &str = "kubox.io/ingress-controller";

/// Where a request was routed: the Ingress rule that took it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub namespace: String,
    pub ingress: String,
    /// The rule's path as written in the Ingress.
    pub path: String,
}

/// One request, as logged and counted.
pub struct Served<'a> {
    pub remote: SocketAddr,
    pub method: &'a str,
    /// The request line's target and protocol (`/x?y HTTP/1.1`).
    pub target: &'a str,
    pub version: &'a str,
    pub host: &'a str,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub request_length: u64,
    pub status: u16,
    pub body_bytes: Option<u64>,
    pub took: Duration,
    /// The route, when a rule matched.
    pub origin: Option<&'a Origin>,
    /// `namespace/service:port` of the upstream, and the endpoint used.
    pub upstream: Option<(&'a str, SocketAddr)>,
    pub canary: Option<&'a str>,
}

pub struct Metrics {
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    controller_pod: String,
    log: Option<Mutex<Box<dyn Write + Send>>>,
}

impl Metrics {
    /// Registers the metrics in `registry`; `log` receives access log lines.
    pub fn new(registry: &Registry, log: Option<Box<dyn Write + Send>>) -> Self {
        let requests = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS.iter().copied())
        });
        registry.register_bare_counter(
            "nginx_ingress_controller_requests",
            "The total number of client requests",
            requests.clone(),
        );
        registry.register(
            "nginx_ingress_controller_request_duration_seconds",
            "The request processing time in milliseconds",
            durations.clone(),
        );
        let controller_pod = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Self {
            requests,
            durations,
            controller_pod,
            log: log.map(Mutex::new),
        }
    }

    pub fn served(&self, r: &Served) {
        let service = r
            .upstream
            .and_then(|(name, _)| name.split(['/', ':']).nth(1))
            .unwrap_or_default();
        let origin = r.origin.cloned().unwrap_or_default();
        let labels = Labels {
            canary: r.canary.unwrap_or_default().to_owned(),
            controller_class: CONTROLLER_CLASS,
            controller_namespace: "kube-system",
            controller_pod: self.controller_pod.clone(),
            host: r.host.to_owned(),
            ingress: origin.ingress,
            method: r.method.to_owned(),
            namespace: origin.namespace,
            path: origin.path,
            service: service.to_owned(),
            status: r.status.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(r.took.as_secs_f64());
        if let Some(log) = &self.log {
            let line = access_line(r, &jiff::Zoned::now());
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            let _ = log.write_all(line.as_bytes());
            let _ = log.flush();
        }
    }
}

/// ingress-nginx's `upstreaminfo` log format:
/// `$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent" $request_length
/// $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name]
/// $upstream_addr $upstream_response_length $upstream_response_time
/// $upstream_status $req_id`.
fn access_line(r: &Served, now: &jiff::Zoned) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let seconds = format!("{:.3}", r.took.as_secs_f64());
    // nginx names an upstream namespace-service-port.
    let upstream_name = r
        .upstream
        .map(|(name, _)| name.replace(['/', ':'], "-"))
        .unwrap_or_default();
    let (addr, length, time, status) = match r.upstream {
        Some((_, endpoint)) => (
            endpoint.to_string(),
            r.body_bytes.map_or("-".to_owned(), |b| b.to_string()),
            seconds.clone(),
            r.status.to_string(),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {} {} [{}] [{}] {} {} {} {} {:032x}\n",
        r.remote.ip().to_canonical(),
        now.strftime("%d/%b/%Y:%H:%M:%S %z"),
        r.method,
        r.target,
        r.version,
        r.status,
        r.body_bytes.unwrap_or(0),
        dash(r.referer),
        dash(r.user_agent),
        r.request_length,
        seconds,
        upstream_name,
        r.canary
            .map(|c| c.replace(['/', ':'], "-"))
            .unwrap_or_default(),
        addr,
        length,
        time,
        status,
        rand::random::<u128>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_follow_ingress_nginx_upstreaminfo() {
        let origin = Origin {
            namespace: "default".into(),
            ingress: "web".into(),
            path: "/route1".into(),
        };
        let served = Served {
            remote: "10.0.0.9:5000".parse().unwrap(),
            method: "GET",
            target: "/route1?x=1",
            version: "HTTP/1.1",
            host: "example.com",
            referer: "",
            user_agent: "curl/8.0",
            request_length: 80,
            status: 200,
            body_bytes: Some(12),
            took: Duration::from_millis(3),
            origin: Some(&origin),
            upstream: Some(("default/web:80", "10.42.0.5:8080".parse().unwrap())),
            canary: None,
        };
        let now: jiff::Zoned = "2026-12-02T06:40:00+00:00[UTC]".parse().unwrap();
        let line = access_line(&served, &now);
        let (head, id) = line.trim_end().rsplit_once(' ').unwrap();
        assert_eq!(
            head,
            "10.0.0.9 - - [02/Dec/2026:06:40:00 +0000] \"GET /route1?x=1 HTTP/1.1\" 200 12 \"-\" \"curl/8.0\" 80 0.003 [default-web-80] [] 10.42.0.5:8080 12 0.003 200"
        );
        assert_eq!(id.len(), 32);
    }
}
