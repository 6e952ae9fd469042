//! The reverse proxy: HTTP/1.1 and HTTP/2 from clients (HTTP/2 over TLS
//! by ALPN), HTTP/1.1 to the endpoints, WebSocket upgrades passed through.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::backends::Upstream;
use crate::metrics::{Metrics, Origin, Served};
use crate::table::{Route, Table};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long a client may take to send a request's headers (slow clients
/// hold a connection no longer), and an endpoint to answer: ingress-nginx's
/// `client-header-timeout` and `proxy-read-timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `forward` sent a request, for its metrics and log line.
#[derive(Default)]
struct Routed {
    origin: Option<Arc<Origin>>,
    upstream: Option<Arc<Upstream>>,
    endpoint: Option<SocketAddr>,
    canary: bool,
}

pub struct Proxy {
    table: watch::Receiver<Arc<Table>>,
    metrics: Metrics,
    client: Client<HttpConnector, Incoming>,
    http_port: u16,
    https_port: u16,
}

impl Proxy {
    pub fn new(
        table: watch::Receiver<Arc<Table>>,
        http_port: u16,
        https_port: u16,
        metrics: Metrics,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            table,
            metrics,
            client,
            http_port,
            https_port,
        }
    }

    /// Proxies one request, then counts and logs it.
    async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
    ) -> Response<Body> {
        let started = Instant::now();
        let host = request_host(&req);
        // Shared handles on the request's buffers, not copies: the log line
        // needs them after the request has gone upstream.
        let method = req.method().clone();
        let target = req.uri().path_and_query().cloned();
        let version = req.version();
        let referer = req.headers().get(header::REFERER).cloned();
        let user_agent = req.headers().get(header::USER_AGENT).cloned();
        let request_length = req.body().size_hint().exact().unwrap_or(0)
            + target.as_ref().map_or(1, |t| t.as_str().len()) as u64
            + req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
                .sum::<u64>();
        let mut routed = Routed::default();
        let response = self.forward(req, remote, https, &host, &mut routed).await;
        self.metrics.served(&Served {
            remote,
            method: method.as_str(),
            target: target.as_ref().map_or("/", |t| t.as_str()),
            version: version_name(version),
            host: &host,
            referer: header_text(referer.as_ref()),
            user_agent: header_text(user_agent.as_ref()),
            request_length,
            status: response.status().as_u16(),
            body_bytes: response.body().size_hint().exact(),
            took: started.elapsed(),
            origin: routed.origin.as_deref(),
            upstream: routed
                .upstream
                .as_deref()
                .map(|u| u.name.as_str())
                .zip(routed.endpoint),
            canary: routed
                .upstream
                .as_deref()
                .map(|u| u.name.as_str())
                .filter(|_| routed.canary),
        });
        response
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
        host: &str,
        routed: &mut Routed,
    ) -> Response<Body> {
        let table = self.table.borrow().clone();
        let routing = table.route(host, req.uri().path(), https, req.headers(), rand::random());
        let (upstream, path_and_query) = match routing {
            Route::NotFound => return page(StatusCode::NOT_FOUND),
            Route::RedirectHttps => return self.redirect(host, req.uri()),
            Route::Proxy {
                upstream,
                path,
                origin,
                canary,
            } => {
                routed.origin = Some(origin.clone());
                routed.upstream = Some(upstream.clone());
                routed.canary = canary;
                let path_and_query = match (path, req.uri().path_and_query()) {
                    (Cow::Borrowed(_), Some(unchanged)) => Some(unchanged.clone()),
                    (path, original) => rewritten(&path, original.and_then(|p| p.query())),
                };
                (upstream.clone(), path_and_query)
            }
        };
        let Some(endpoint) = upstream.pick() else {
            return page(StatusCode::SERVICE_UNAVAILABLE);
        };
        routed.endpoint = Some(endpoint);
        let uri = path_and_query.and_then(|path_and_query| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(endpoint.to_string())
                .path_and_query(path_and_query)
                .build()
                .ok()
        });
        let Some(uri) = uri else {
            return page(StatusCode::BAD_REQUEST);
        };
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        remove_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
        }
        if let Ok(host) = HeaderValue::from_str(host)
            && !parts.headers.contains_key(header::HOST)
        {
            parts.headers.insert(header::HOST, host);
        }
        self.forwarded(&mut parts.headers, remote, https, host);
        let sent = tokio::time::timeout(
            UPSTREAM_TIMEOUT,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        let mut response = match sent {
            Err(_) => return page(StatusCode::GATEWAY_TIMEOUT),
            Ok(Err(e)) => {
                tracing::debug!(upstream = %upstream.name, %endpoint, "proxying: {e}");
                return page(StatusCode::BAD_GATEWAY);
            }
            Ok(Ok(response)) => response,
        };
        tracing::debug!(%remote, %host, upstream = %upstream.name, status = response.status().as_u16(), "proxied");
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
            });
            return response.map(|b| b.boxed());
        }
        remove_hop_by_hop(response.headers_mut());
        response.map(|b| b.boxed())
    }

    /// The X-Forwarded-* headers ingress-nginx sets, for the client this
    /// proxy sees (headers a client sent are not trusted).
    fn forwarded(&self, headers: &mut HeaderMap, remote: SocketAddr, https: bool, host: &str) {
        let ip = remote.ip().to_canonical().to_string();
        let port = if https {
            self.https_port
        } else {
            self.http_port
        };
        let proto = if https { "https" } else { "http" };
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("x-forwarded-for", &ip);
        set("x-real-ip", &ip);
        set("x-forwarded-proto", proto);
        set("x-forwarded-host", host);
        set("x-forwarded-port", &port.to_string());
        set("x-forwarded-scheme", proto);
    }

    /// ingress-nginx's `ssl-redirect`: 308 to the same URL over HTTPS.
    fn redirect(&self, host: &str, uri: &Uri) -> Response<Body> {
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut response = page(StatusCode::PERMANENT_REDIRECT);
        if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{port}{path}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// A rewritten path with the request's query; `None` when the rewrite
/// made no path (the request is then refused).
fn rewritten(path: &str, query: Option<&str>) -> Option<PathAndQuery> {
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return None;
    }
    let joined = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(joined).ok()
}

fn header_text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// The protocol as a request line names it.
fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The host a request names, without a port: HTTP/2's authority or the Host header.
fn request_host<B>(req: &Request<B>) -> String {
    let authority = req.uri().authority().map(|a| a.host().to_owned());
    authority
        .or_else(|| {
            let value = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = value.parse().ok()?;
            Some(authority.host().to_owned())
        })
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The protocol an HTTP/1.1 client asks to switch to (a WebSocket).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let connection = req.headers().get(header::CONNECTION)?.to_str().ok()?;
    connection
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Headers of one hop, not for the next (RFC 9110 §7.6.1), including
/// those the Connection header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// nginx's error page, which the seeds' transcripts show.
fn page(status: StatusCode) -> Response<Body> {
    let title = match status {
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Temporarily Unavailable".to_owned(),
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Time-out".to_owned(),
        s => format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or("")),
    };
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

/// Serves one client connection, HTTP/1.1 or HTTP/2.
async fn connection<IO>(io: IO, remote: SocketAddr, https: bool, proxy: Arc<Proxy>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, remote, https).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%remote, "ingress connection: {e}");
    }
}

/// Accepts plain HTTP connections until dropped.
pub async fn serve_plain(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, remote, false, proxy.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Accepts TLS connections until dropped.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, proxy: Arc<Proxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                let (acceptor, proxy) = (acceptor.clone(), proxy.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => connection(tls, remote, true, proxy).await,
                        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Out of file descriptors, say: wait a little rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("ingress accept: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_without_ports() {
        let req = Request::get("/x")
            .header("host", "Example.COM:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), "example.com");
        let req = Request::get("https://h2.example/x").body(()).unwrap();
        assert_eq!(request_host(&req), "h2.example");
        let req = Request::get("/x")
            .header("host", "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), "::1");
    }

    #[test]
    fn forwarded_headers_name_the_peer_not_what_the_client_claims() {
        let (_, table) = watch::channel(Arc::new(Table::default()));
        let proxy = Proxy::new(
            table,
            8080,
            8443,
            Metrics::new(&kubox_prometheus::Registry::default(), None),
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5555".parse().unwrap();
        proxy.forwarded(&mut headers, peer, true, "example.com");
        let get = |name: &str| headers.get(name).unwrap().to_str().unwrap();
        assert_eq!(get("x-forwarded-for"), "10.1.2.3");
        assert_eq!(get("x-real-ip"), "10.1.2.3");
        assert_eq!(get("x-forwarded-proto"), "https");
        assert_eq!(get("x-forwarded-host"), "example.com");
        assert_eq!(get("x-forwarded-port"), "8443");
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }
}
