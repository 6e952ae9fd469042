//! Server certificates: an Ingress's `spec.tls` hosts get their
//! `kubernetes.io/tls` Secret's certificate, chosen by SNI; everything
//! else gets a self-signed default, as ingress-nginx's fake certificate.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::table::Table;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("secret has no {0}")]
    Missing(&'static str),
    #[error("secret's {0} is not valid PEM: {1}")]
    Pem(&'static str, String),
    #[error("secret's key: {0}")]
    Key(#[from] rustls::Error),
    #[error("making the default certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The certificate and key of a `kubernetes.io/tls` Secret.
pub fn from_secret(secret: &Secret) -> Result<Arc<CertifiedKey>, CertError> {
    let data = secret.data.as_ref();
    let field = |name: &'static str| {
        data.and_then(|d| d.get(name))
            .map(|b| b.0.as_slice())
            .ok_or(CertError::Missing(name))
    };
    let chain = CertificateDer::pem_slice_iter(field("tls.crt")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem("tls.crt", e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Missing("certificate in tls.crt"));
    }
    let key = PrivateKeyDer::from_pem_slice(field("tls.key")?)
        .map_err(|e| CertError::Pem("tls.key", e.to_string()))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// The certificate served when no Ingress has one for the name asked.
pub fn self_signed() -> Result<Arc<CertifiedKey>, CertError> {
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_owned()])?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Kubernetes Ingress Controller Fake Certificate",
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme Co");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], key)))
}

/// Certificates by host name, as the Ingresses' `spec.tls` name them
/// (`*.example.com` for a wildcard).
#[derive(Debug, Default)]
pub struct Certificates(pub HashMap<String, Arc<CertifiedKey>>);

impl Certificates {
    /// An exact name first, then a wildcard one label up.
    pub fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        self.0.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.0.get(&format!("*.{parent}"))
        })
    }
}

/// Picks the certificate by SNI from the routing table in force.
#[derive(Debug)]
pub struct Resolver {
    pub table: watch::Receiver<Arc<Table>>,
    pub default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.borrow();
        let found = hello
            .server_name()
            .and_then(|name| table.certificates.find(name));
        Some(found.unwrap_or(&self.default).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_exact_then_wildcard_certificates() {
        let a = self_signed().unwrap();
        let b = self_signed().unwrap();
        let certs = Certificates(HashMap::from([
            ("a.example.com".to_owned(), a.clone()),
            ("*.example.com".to_owned(), b.clone()),
        ]));
        assert!(Arc::ptr_eq(certs.find("A.example.com").unwrap(), &a));
        assert!(Arc::ptr_eq(certs.find("c.example.com").unwrap(), &b));
        assert!(certs.find("x.c.example.com").is_none());
        assert!(certs.find("example.com").is_none());
    }
}
