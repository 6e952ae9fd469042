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
#[derive(Debug)]
pub struct Origin {
    pub namespace: String,
    pub ingress: String,
    /// The rule's path as written in the Ingress.
    pub path: String,
    series: Series,
}

impl Origin {
    pub fn new(namespace: String, ingress: String, path: String) -> Self {
        Self {
            namespace,
            ingress,
            path,
            series: Series::default(),
        }
    }
}

/// The counter and histogram of one label set.
#[derive(Clone)]
struct Handles {
    requests: Counter,
    durations: Histogram,
}

/// What varies between the series of one rule's requests.
#[derive(Debug, PartialEq, Eq)]
struct SeriesKey {
    status: u16,
    method: String,
    host: String,
    service: String,
    canary: String,
}

/// A rule's series, resolved from the families once rather than per
/// request (building and hashing a label set of owned strings on every
/// request showed in profiles). Bounded, since hosts come from clients:
/// series beyond the bound are looked up in the families each time.
#[derive(Default)]
struct Series(Mutex<Vec<(SeriesKey, Handles)>>);

const SERIES_PER_ORIGIN: usize = 64;

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Series")
    }
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
    log: Option<LogBuffer>,
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
            log: log.and_then(log_writer),
        }
    }

    pub fn served(&self, r: &Served) {
        let handles = self.handles(r);
        handles.requests.inc();
        handles.durations.observe(r.took.as_secs_f64());
        if let Some(log) = &self.log {
            log.push(&access_line(r, &jiff::Zoned::now()));
        }
    }

    /// The series `r` counts in: its rule's cached handles when it has
    /// them, the families' otherwise.
    fn handles(&self, r: &Served) -> Handles {
        let service = r
            .upstream
            .and_then(|(name, _)| name.split(['/', ':']).nth(1))
            .unwrap_or_default();
        let canary = r.canary.unwrap_or_default();
        let Some(origin) = r.origin else {
            return self.resolve(r, None, service, canary);
        };
        let is = |k: &SeriesKey| {
            k.status == r.status
                && k.method == r.method
                && k.host == r.host
                && k.service == service
                && k.canary == canary
        };
        let mut cached = origin.series.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, handles)) = cached.iter().find(|(k, _)| is(k)) {
            return handles.clone();
        }
        let handles = self.resolve(r, Some(origin), service, canary);
        if cached.len() < SERIES_PER_ORIGIN {
            let key = SeriesKey {
                status: r.status,
                method: r.method.to_owned(),
                host: r.host.to_owned(),
                service: service.to_owned(),
                canary: canary.to_owned(),
            };
            cached.push((key, handles.clone()));
        }
        handles
    }

    fn resolve(&self, r: &Served, origin: Option<&Origin>, service: &str, canary: &str) -> Handles {
        let field = |f: fn(&Origin) -> &String| origin.map(f).cloned().unwrap_or_default();
        let labels = Labels {
            canary: canary.to_owned(),
            controller_class: CONTROLLER_CLASS,
            controller_namespace: "kube-system",
            controller_pod: self.controller_pod.clone(),
            host: r.host.to_owned(),
            ingress: field(|o| &o.ingress),
            method: r.method.to_owned(),
            namespace: field(|o| &o.namespace),
            path: field(|o| &o.path),
            service: service.to_owned(),
            status: r.status.to_string(),
        };
        Handles {
            requests: self.requests.get_or_create(&labels).clone(),
            durations: self.durations.get_or_create(&labels).clone(),
        }
    }
}

/// How long access log lines may wait to be written.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Access log lines waiting for the writer thread, which takes them every
/// `LOG_FLUSH_EVERY` (nginx's `access_log ... buffer= flush=`): a write
/// per batch, and no wake-up of another thread per request (a channel's
/// futex wake and context switch per line cost more than the write).
struct LogBuffer(std::sync::Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn push(&self, line: &str) {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(line.as_bytes());
    }
}

/// Starts the writer thread (none, and no log, if it cannot start); it
/// writes what is left and ends once the buffer's owner has dropped it.
fn log_writer(mut out: Box<dyn Write + Send>) -> Option<LogBuffer> {
    let pending = std::sync::Arc::new(Mutex::new(Vec::new()));
    let shared = pending.clone();
    let spawned = std::thread::Builder::new()
        .name("ingress-log".into())
        .spawn(move || {
            loop {
                std::thread::sleep(LOG_FLUSH_EVERY);
                let last = std::sync::Arc::strong_count(&shared) == 1;
                let batch = std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
                if !batch.is_empty() {
                    let _ = out.write_all(&batch);
                    let _ = out.flush();
                }
                if last {
                    break;
                }
            }
        });
    match spawned {
        Ok(_) => Some(LogBuffer(pending)),
        Err(e) => {
            tracing::warn!("ingress access log thread: {e}");
            None
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

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_pushed_before_the_drop_are_written_in_order() {
        let out = Shared::default();
        let log = log_writer(Box::new(out.clone())).unwrap();
        log.push("one\n");
        log.push("two\n");
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().as_slice() != b"one\ntwo\n" {
            assert!(std::time::Instant::now() < deadline, "lines not written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn access_lines_follow_ingress_nginx_upstreaminfo() {
        let origin = Origin::new("default".into(), "web".into(), "/route1".into());
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
