//! The Prometheus metrics of a kubox process: components register their
//! metrics (prometheus-client types, upstream's names and labels) in one
//! [`Registry`], and whoever serves `/metrics` renders it in Prometheus
//! text format 0.0.4, which upstream's components serve and every scraper
//! reads (prometheus-client writes OpenMetrics, whose counter families are
//! named without `_total` and which ends in `# EOF`).

use std::sync::Mutex;

pub use prometheus_client;
use prometheus_client::registry::Metric;

/// The `Content-Type` of a rendered page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Hook = Box<dyn Fn() + Send + Sync>;

/// A process's metrics. Components may register at any time, also after
/// the page is first served.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<prometheus_client::registry::Registry>,
    /// Run before each render, to set gauges read from state (queue
    /// lengths, object counts) at scrape time.
    hooks: Mutex<Vec<Hook>>,
    /// Counters whose upstream name has no `_total` (Go's client allows it).
    bare_counters: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Registers `metric` as `name`; a counter's name is given without
    /// `_total`, which rendering adds.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// Registers a counter exported, as upstream exports it, without the
    /// `_total` suffix (ingress-nginx's `nginx_ingress_controller_requests`).
    pub fn register_bare_counter(&self, name: &str, help: &str, metric: impl Metric) {
        self.register(name, help, metric);
        self.bare_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_owned());
    }

    /// Runs `hook` before every render.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// The page, in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
        let mut open = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(
            &mut open,
            &self.inner.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let bare = self.bare_counters.lock().unwrap_or_else(|e| e.into_inner());
        text_format(&open, &bare)
    }
}

/// OpenMetrics text as Prometheus text format 0.0.4: counter families take
/// their samples' `_total` name (but for the `bare` ones, whose samples
/// lose it), help texts lose the full stop prometheus-client adds, `# UNIT`
/// and `# EOF` go.
fn text_format(openmetrics: &str, bare: &[String]) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(name) = bare.iter().find(|b| {
            line.strip_prefix(b.as_str())
                .and_then(|rest| rest.strip_prefix("_total"))
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        }) {
            out.push_str(name);
            out.push_str(&line[name.len() + "_total".len()..]);
            out.push('\n');
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter"
                && !name.ends_with("_total")
                && !bare.iter().any(|b| b == name)
            {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            // prometheus-client ends every help text with a full stop of
            // its own; the text is upstream's as registered.
            if let Some((_, text)) = help.take() {
                let text = text.strip_suffix('.').unwrap_or(text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` (and `/healthz`, `/livez`, `/readyz`) over plain
/// HTTP on `listener` until dropped, for a component running apart from
/// the API server (ingress-nginx's port 10254).
pub async fn serve(listener: tokio::net::TcpListener, registry: std::sync::Arc<Registry>) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, header};
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let registry = registry.clone();
                async move {
                    match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header(header::CONTENT_TYPE, CONTENT_TYPE)
                            .body(Full::new(bytes::Bytes::from(registry.render()))),
                        // Serving at all is the health a process without
                        // an API of its own can tell, as upstream's
                        // components answer these paths.
                        "/healthz" | "/livez" | "/readyz" => Response::builder()
                            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                            .body(Full::new(bytes::Bytes::from_static(b"ok"))),
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(bytes::Bytes::from_static(
                                b"404 page not found\n",
                            ))),
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn counters_are_named_with_total_and_hooks_run_before_rendering() {
        let registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.register("requests", "Requests served.", requests.clone());
        let depth = Gauge::<i64>::default();
        registry.register("depth", "Items waiting.", depth.clone());
        registry.on_scrape(move || {
            depth.set(3);
        });
        let bare = Counter::<u64>::default();
        registry.register_bare_counter("nginx_requests", "Client requests.", bare.clone());
        requests.inc();
        bare.inc();
        assert_eq!(
            registry.render(),
            "# HELP requests_total Requests served.\n# TYPE requests_total counter\nrequests_total 1\n\
             # HELP depth Items waiting.\n# TYPE depth gauge\ndepth 3\n\
             # HELP nginx_requests Client requests.\n# TYPE nginx_requests counter\nnginx_requests 1\n"
        );
    }
}
