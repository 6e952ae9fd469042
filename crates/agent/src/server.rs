//! The agent's HTTPS endpoint (kubelet's port 10250), which the API server
//! calls for `kubectl logs`, exec, attach and port-forward, and metrics-server
//! for `/metrics/resource`. Clients must present a certificate from the
//! cluster's CA; the agent's own certificate is self-signed, which the API
//! server accepts as upstream's does without --kubelet-certificate-authority.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::attach::ContainerIo;
use crate::log_reader::{self, ReadOptions};
use crate::portforward::{self, Target};
use crate::remote::{self, Client, Streams};
use crate::spdy::Session;
use crate::tunnel;
use crate::upgrade::{self, Transport};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the agent's TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

fn tls(shared: &Shared, client_ca_pem: &str) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let err = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut names = vec![
        shared.node_name.clone(),
        shared.node_ip.clone(),
        "localhost".into(),
    ];
    names.dedup();
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(&e))?;
    let key = PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes())
        .map_err(|e| err(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| err(&e))?;
    Ok(Arc::new(config))
}

/// Listens on `addr` and serves until the returned task is aborted.
pub async fn start(
    shared: Arc<Shared>,
    addr: SocketAddr,
    client_ca_pem: &str,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let acceptor = TlsAcceptor::from(tls(&shared, client_ca_pem)?);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Bind(addr, e))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            // Streams carry small frames both ways (exec's exit status,
            // stdin keystrokes); Nagle would hold them for the peer's ACK.
            let _ = tcp.set_nodelay(true);
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

pub(crate) fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn metrics_page(page: String) -> Response<Body> {
    let mut resp = text(StatusCode::OK, page);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kubox_prometheus::CONTENT_TYPE),
    );
    resp
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["metrics", "resource"]) => {
            metrics_page(crate::resource_metrics::render(shared))
        }
        (&Method::GET, ["metrics", "cadvisor"]) => {
            metrics_page(crate::cadvisor::render(shared).await)
        }
        (&Method::GET, ["metrics"]) => metrics_page(crate::kubelet_metrics::render(shared)),
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            container_logs(shared, ns, pod, container, &query).await
        }
        // client-go upgrades with GET over WebSocket, POST over SPDY.
        (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
            let found = running(shared, ns, pod, container);
            match found {
                Ok((id, _)) => {
                    let streams = Streams::from_query(req.uri().query().unwrap_or_default());
                    let shared = shared.clone();
                    remote_command(req, streams.clone(), move |client| {
                        crate::exec::run(shared, id, streams, client)
                    })
                }
                Err(resp) => *resp,
            }
        }
        (&Method::GET | &Method::POST, ["attach", ns, pod, container]) => {
            match running(shared, ns, pod, container) {
                Ok((_, io)) => {
                    let streams = Streams::from_query(req.uri().query().unwrap_or_default());
                    remote_command(req, streams.clone(), move |client| {
                        crate::attach::run(io, streams, client)
                    })
                }
                Err(resp) => *resp,
            }
        }
        (&Method::GET | &Method::POST, ["portForward", ns, pod]) => {
            let target = shared
                .sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(ns.to_string(), pod.to_string()))
                .cloned();
            match target {
                Some(target) => port_forward(req, target),
                None => text(StatusCode::NOT_FOUND, "pod does not exist"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// The running container a stream request names, or kubelet's refusal.
fn running(
    shared: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<(String, Arc<ContainerIo>), Box<Response<Body>>> {
    let key = (ns.to_string(), pod.to_string(), container.to_string());
    shared
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .map(|r| (r.id.clone(), r.io.clone()))
        .ok_or_else(|| {
            Box::new(text(
                StatusCode::NOT_FOUND,
                format!("container not found (\"{container}\")"),
            ))
        })
}

/// Upgrades an exec or attach request to the protocol the client asks
/// for and serves it with `serve`.
fn remote_command<F, Fut>(req: Request<Incoming>, streams: Streams, serve: F) -> Response<Body>
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    if let Err(message) = streams.check() {
        return text(StatusCode::BAD_REQUEST, message);
    }
    match Transport::of(&req) {
        Err(resp) => *resp,
        Ok(Transport::WebSocket { key, protocols }) => {
            match upgrade::negotiate(&protocols, &remote::WEBSOCKET_PROTOCOLS) {
                None => upgrade::unsupported_websocket(&protocols, &remote::WEBSOCKET_PROTOCOLS),
                Some(p) => upgrade::websocket(req, &key, p, move |ws| async move {
                    serve(remote::websocket(ws, p == remote::WEBSOCKET_PROTOCOLS[0])).await;
                }),
            }
        }
        Ok(Transport::Spdy { protocols }) => {
            match upgrade::negotiate(&protocols, &remote::SPDY_PROTOCOLS) {
                None => upgrade::unsupported_spdy(&protocols, &remote::SPDY_PROTOCOLS),
                Some(p) => upgrade::spdy(req, p, move |io| async move {
                    let (r, w) = tokio::io::split(io);
                    if let Some(client) = remote::spdy(Session::start(r, w), p, &streams).await {
                        serve(client).await;
                    }
                }),
            }
        }
    }
}

/// Upgrades a port-forward request: SPDY, SPDY inside a WebSocket, or the
/// WebSocket channel protocol.
fn port_forward(req: Request<Incoming>, target: Target) -> Response<Body> {
    match Transport::of(&req) {
        Err(resp) => *resp,
        Ok(Transport::WebSocket { key, protocols }) => {
            let tunnel = [portforward::TUNNEL_PROTOCOL];
            if let Some(p) = upgrade::negotiate(&protocols, &tunnel) {
                return upgrade::websocket(req, &key, p, move |ws| async move {
                    let (sink, messages) = ws.split();
                    let session =
                        Session::start(tunnel::reader(messages), tunnel::Writer::new(sink));
                    portforward::spdy(session, target).await;
                });
            }
            let channels = [portforward::WEBSOCKET_PROTOCOL];
            let Some(p) = upgrade::negotiate(&protocols, &channels) else {
                return upgrade::unsupported_websocket(
                    &protocols,
                    &[
                        portforward::TUNNEL_PROTOCOL,
                        portforward::WEBSOCKET_PROTOCOL,
                    ],
                );
            };
            let ports = match portforward::ports_from_query(req.uri().query().unwrap_or_default()) {
                Ok(ports) => ports,
                Err(message) => return text(StatusCode::BAD_REQUEST, message),
            };
            upgrade::websocket(req, &key, p, move |ws| {
                portforward::websocket(ws, ports, target)
            })
        }
        Ok(Transport::Spdy { protocols }) => {
            let supported = [portforward::SPDY_PROTOCOL];
            match upgrade::negotiate(&protocols, &supported) {
                None => upgrade::unsupported_spdy(&protocols, &supported),
                Some(p) => upgrade::spdy(req, p, move |io| async move {
                    let (r, w) = tokio::io::split(io);
                    portforward::spdy(Session::start(r, w), target).await;
                }),
            }
        }
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

async fn container_logs(
    shared: &Arc<Shared>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let number = |name: &str| query.get(name).and_then(|v| v.parse::<i64>().ok());
    let since = match (query.get("sinceTime"), number("sinceSeconds")) {
        (Some(t), _) => match t.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid sinceTime {t:?}: {e}"),
                );
            }
        },
        (None, Some(secs)) => k8s_openapi::jiff::Timestamp::now()
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
            .ok(),
        (None, None) => None,
    };
    let opts = ReadOptions {
        follow: flag(query, "follow"),
        tail_lines: number("tailLines").map(|n| n.max(0) as usize),
        since,
        timestamps: flag(query, "timestamps"),
        limit_bytes: number("limitBytes").map(|n| n.max(0) as usize),
    };
    let path = match log_reader::find(
        &shared.dirs.logs,
        ns,
        pod,
        container,
        flag(query, "previous"),
    ) {
        Ok(p) => p,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    match log_reader::read(&path, opts, &shared.active_logs).await {
        Ok(stream) => {
            let body = StreamBody::new(stream.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))));
            let mut resp = Response::new(BodyExt::boxed(body));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {}: {e}", path.display()),
        ),
    }
}
