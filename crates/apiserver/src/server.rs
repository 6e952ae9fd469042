//! The TLS listener: accepts connections, authenticates client certificates
//! against the cluster CA, and serves HTTP/1.1 and HTTP/2 (as kubectl
//! negotiates by ALPN).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::{CREDENTIAL_ID, Handler, Identity};
use crate::pki::{CertPair, Pki};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("parsing PEM: {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub(crate) fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

/// The serving certificate every handshake presents, swapped in place when
/// it is renewed: connections made before keep the one they got.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<(String, Arc<CertifiedKey>)>,
}

impl ServingCert {
    pub fn new(pair: &CertPair) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new((pair.cert_pem.clone(), certified(pair)?)),
        })
    }

    /// Presents `pair` from the next handshake on, unless it is the pair
    /// presented already; says whether it changed.
    pub fn set(&self, pair: &CertPair) -> Result<bool, TlsError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.0 == pair.cert_pem {
            return Ok(false);
        }
        *current = (pair.cert_pem.clone(), certified(pair)?);
        Ok(true)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .clone(),
        )
    }
}

/// A certificate and its key as rustls signs with them, refused when the
/// key is not the certificate's.
fn certified(pair: &CertPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(
        certs(&pair.cert_pem)?,
        key,
        &provider,
    )?))
}

/// How often the serving certificate on disk is checked: renewed when due,
/// and taken up when `kubox certs rotate` replaced it.
const SERVING_CHECK: Duration = Duration::from_secs(2);

/// Keeps `serving` current with `pki`'s serving certificate for `names`,
/// renewing it before it expires.
pub async fn keep_serving_current(pki: Arc<Pki>, names: Vec<String>, serving: Arc<ServingCert>) {
    let mut tick = tokio::time::interval(SERVING_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A rotation caught between its key and its certificate is
        // refused as mismatched and taken up on a later tick.
        match pki
            .serving(&names)
            .map_err(|e| e.to_string())
            .and_then(|pair| serving.set(&pair).map_err(|e| e.to_string()))
        {
            Ok(true) => tracing::info!("serving a renewed certificate"),
            Ok(false) => {}
            Err(e) => tracing::debug!("checking the serving certificate: {e}"),
        }
    }
}

/// The server's TLS configuration: TLS 1.2+, the serving certificate of
/// `serving`, and client certificates verified against `client_ca` when
/// offered.
pub fn tls_config(
    serving: Arc<ServingCert>,
    client_ca: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let cas = certs(client_ca)?;
    for ca in &cas {
        roots.add(ca.clone())?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(crate::client_auth::ClusterClients {
        inner,
        ca_der: cas.first().map(|c| c.to_vec()).unwrap_or_default(),
        schemes: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate names: CN is the user, O the groups.
fn identity(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    // Every authenticated user is in this group, as upstream adds it.
    groups.push("system:authenticated".to_owned());
    // Upstream (1.32+) names the certificate by its SHA-256 fingerprint.
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: String = fingerprint
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(Identity {
        user,
        groups,
        extra: [(CREDENTIAL_ID.to_owned(), vec![format!("X509SHA256={hex}")])].into(),
        ..Identity::default()
    })
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: Arc<Handler>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let who = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity);
            serve_connection(stream, peer, who, handler).await;
        });
    }
}

async fn serve_connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    who: Option<Identity>,
    handler: Arc<Handler>,
) {
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let who = who.clone();
        async move { Ok::<_, std::convert::Infallible>(handler.handle(req, who, peer.ip()).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}
