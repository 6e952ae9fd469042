//! Client certificates as upstream (Go's crypto/x509) accepts them:
//! webpki checks them, except X.509 version 1 certificates, which webpki
//! refuses and `openssl x509 -req` makes (the seeds sign users' requests so).
//! Those are checked here: issued and signed by the cluster CA, within
//! their validity, and the handshake signed with their key (TLS 1.3).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

#[derive(Debug)]
pub struct ClusterClients {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub ca_der: Vec<u8>,
    pub schemes: WebPkiSupportedAlgorithms,
}

fn version_one<'a>(cert: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    (parsed.version() == X509Version::V1).then_some(parsed)
}

fn bad() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
}

impl ClusterClients {
    fn signed_by_ca(&self, cert: &X509Certificate<'_>) -> bool {
        let Ok((_, ca)) = X509Certificate::from_der(&self.ca_der) else {
            return false;
        };
        cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
            && cert.validity().is_valid()
    }
}

impl ClientCertVerifier for ClusterClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match version_one(end_entity) {
            Some(cert) if self.signed_by_ca(&cert) => Ok(ClientCertVerified::assertion()),
            Some(_) => Err(bad()),
            None => self
                .inner
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match version_one(cert) {
            Some(parsed) => {
                let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
                rustls::crypto::verify_tls13_signature_with_raw_key(
                    message,
                    &spki,
                    dss,
                    &self.schemes,
                )
            }
            None => self.inner.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
