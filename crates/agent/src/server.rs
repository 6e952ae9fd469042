//! The agent's HTTPS endpoint (kubelet's port 10250), which the API server
//! calls for `kubectl logs`. Clients must present a certificate from the
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
use crate::log_reader::{self, ReadOptions};

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

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            container_logs(shared, ns, pod, container, &query).await
        }
        (&Method::GET, ["exec", ns, pod, container]) => {
            let key = (ns.to_string(), pod.to_string(), container.to_string());
            let id = shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            match id {
                Some(id) => crate::exec::upgrade(shared, req, id),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("container not found (\"{container}\")"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
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
