//! The cluster's certificates: a CA made on first start, the API server's
//! serving certificate, and client certificates (admin, later users and nodes).
//! Everything lives under `<data-dir>/pki`; keys are written mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

type Result<T> = std::result::Result<T, PkiError>;

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 365;
/// The stem of the API server's serving certificate and key files.
const SERVING: &str = "server";

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pki {
    dir: PathBuf,
    ca: CertPair,
    issuer: Issuer<'static, KeyPair>,
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file atomically (temporary file, then rename), private when `secret`.
pub fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // Tolerate a little clock skew between machines.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

impl Pki {
    /// Loads the CA under `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = if crt.exists() || key.exists() {
            CertPair {
                cert_pem: read(&crt)?,
                key_pem: read(&key)?,
            }
        } else {
            let key_pair = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name("kubox-ca", &[]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, CA_DAYS);
            let cert = params.self_signed(&key_pair)?;
            let pair = CertPair {
                cert_pem: cert.pem(),
                key_pem: key_pair.serialize_pem(),
            };
            write_file(&key, pair.key_pem.as_bytes(), true)?;
            write_file(&crt, pair.cert_pem.as_bytes(), false)?;
            pair
        };
        let invalid = |path: &Path, e: rcgen::Error| PkiError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let key_pair = KeyPair::from_pem(&ca.key_pem).map_err(|e| invalid(&key, e))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert_pem, key_pair).map_err(|e| invalid(&crt, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            ca,
            issuer,
        })
    }

    /// The ServiceAccount token signing key, `sa.key` (kubeadm's name),
    /// made on first start and kept, so tokens outlive restarts.
    pub fn service_account_key(&self) -> Result<kubox_satoken::SigningKey> {
        let path = self.dir.join("sa.key");
        let invalid = |e: kubox_satoken::Error| PkiError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        };
        if path.exists() {
            return kubox_satoken::SigningKey::from_pem(&read(&path)?).map_err(invalid);
        }
        let key = kubox_satoken::SigningKey::generate().map_err(invalid)?;
        write_file(&path, key.pem().as_bytes(), true)?;
        Ok(key)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Signs a client certificate: user `common_name`, groups `organizations`.
    pub fn issue_client(&self, common_name: &str, organizations: &[&str]) -> Result<CertPair> {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, organizations);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, LEAF_DAYS);
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }

    /// The serving certificate for `names` (DNS names and IP addresses), made
    /// anew when missing, when it lacks one of the names, or when it expires
    /// within 30 days.
    pub fn serving(&self, names: &[String]) -> Result<CertPair> {
        if let Some(pair) = self.kept(SERVING, names) {
            return Ok(pair);
        }
        let pair = self.issue_serving(names)?;
        self.keep(SERVING, &pair)?;
        Ok(pair)
    }

    fn issue_serving(&self, names: &[String]) -> Result<CertPair> {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("kube-apiserver", &[]);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<std::result::Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, LEAF_DAYS);
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }

    /// The pair kept as `<stem>.crt` and `<stem>.key` when it names every
    /// one of `names` and is not due for renewal.
    fn kept(&self, stem: &str, names: &[String]) -> Option<CertPair> {
        let cert_pem = read(&self.dir.join(format!("{stem}.crt"))).ok()?;
        let key_pem = read(&self.dir.join(format!("{stem}.key"))).ok()?;
        covers(&cert_pem, names).then_some(CertPair { cert_pem, key_pem })
    }

    /// Writes a pair as `<stem>.crt` and `<stem>.key`, the key first: a
    /// reader between the two renames sees a new key with the old
    /// certificate, which rustls refuses as mismatched, never the reverse
    /// pair kept for good.
    fn keep(&self, stem: &str, pair: &CertPair) -> Result<()> {
        write_file(
            &self.dir.join(format!("{stem}.key")),
            pair.key_pem.as_bytes(),
            true,
        )?;
        write_file(
            &self.dir.join(format!("{stem}.crt")),
            pair.cert_pem.as_bytes(),
            false,
        )
    }

    /// Renews every leaf certificate of the directory (the serving one and
    /// every client one), each for the names or subject it had, with a new
    /// key; the CA is kept, so certificates issued before stay valid until
    /// they expire. Returns each renewed stem with its new pair.
    pub fn rotate(&self) -> Result<Vec<(String, CertPair)>> {
        let mut renewed = Vec::new();
        for stem in leaf_stems(&self.dir) {
            let path = self.dir.join(format!("{stem}.crt"));
            let pem = read(&path)?;
            let invalid = |reason: &str| PkiError::Invalid {
                path: path.clone(),
                reason: reason.to_owned(),
            };
            let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .map_err(|e| invalid(&e.to_string()))?;
            let cert = parsed.parse_x509().map_err(|e| invalid(&e.to_string()))?;
            let pair = if stem == SERVING {
                self.issue_serving(&subject_alt_names(&cert))?
            } else {
                let subject = cert.subject();
                let user = subject
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .ok_or_else(|| invalid("no common name"))?
                    .to_owned();
                let groups: Vec<&str> = subject
                    .iter_organization()
                    .filter_map(|o| o.as_str().ok())
                    .collect();
                self.issue_client(&user, &groups)?
            };
            self.keep(&stem, &pair)?;
            renewed.push((stem, pair));
        }
        renewed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(renewed)
    }

    /// A client certificate kept in the PKI directory under `file` (admin,
    /// components), made on first use and renewed within 30 days of expiry.
    pub fn client(
        &self,
        file: &str,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<CertPair> {
        if let Some(pair) = self.kept(file, &[]) {
            return Ok(pair);
        }
        let pair = self.issue_client(common_name, organizations)?;
        self.keep(file, &pair)?;
        Ok(pair)
    }
}

/// Whether the PEM certificate is a CA's (basic constraints say so).
pub fn is_ca(cert_pem: &[u8]) -> bool {
    x509_parser::pem::parse_x509_pem(cert_pem)
        .is_ok_and(|(_, pem)| pem.parse_x509().is_ok_and(|cert| cert.is_ca()))
}

/// Whether the PEM certificate names every one of `names` and is valid for 30 more days.
fn covers(cert_pem: &str, names: &[String]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let renew_at = OffsetDateTime::now_utc() + Duration::days(30);
    if cert.validity().not_after.to_datetime() < renew_at {
        return false;
    }
    let sans = subject_alt_names(&cert);
    names.iter().all(|n| sans.contains(n))
}

/// The DNS names and IP addresses a certificate is for.
fn subject_alt_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default()),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default()),
                        _ => continue,
                    };
                    sans.push(addr.to_string());
                }
                _ => {}
            }
        }
    }
    sans
}

/// The stems of `dir`'s leaf certificates (`server`, `admin`, `node`, ...),
/// every `.crt` but the CA's.
pub fn leaf_stems(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".crt")?.to_owned();
            let pem = fs::read(e.path()).ok()?;
            (!is_ca(&pem)).then_some(stem)
        })
        .collect()
}

/// A kubeconfig written by [`kubeconfig`] with its user's certificate and
/// key replaced by `creds`.
pub fn with_credentials(kubeconfig: &str, creds: &CertPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut out = String::with_capacity(kubeconfig.len());
    for line in kubeconfig.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        match line.trim_start().split_once(':') {
            Some(("client-certificate-data", _)) => out.push_str(&format!(
                "{indent}client-certificate-data: {}",
                b64(&creds.cert_pem)
            )),
            Some(("client-key-data", _)) => {
                out.push_str(&format!("{indent}client-key-data: {}", b64(&creds.key_pem)))
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A kubeconfig for one user of one cluster, with certificates embedded.
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    creds: &CertPair,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: {cluster}
contexts:
- context:
    cluster: {cluster}
    user: {user}
  name: {user}@{cluster}
current-context: {user}@{cluster}
preferences: {{}}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(&creds.cert_pem),
        key = b64(&creds.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path()).unwrap().ca_pem().to_owned();
        let again = Pki::load_or_create(dir.path()).unwrap().ca_pem().to_owned();
        assert_eq!(first, again);
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn serving_certificate_is_renewed_when_a_name_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = pki.serving(&names).unwrap();
        assert_eq!(pki.serving(&names).unwrap().cert_pem, a.cert_pem);
        let more = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "10.43.0.1".to_string(),
        ];
        let b = pki.serving(&more).unwrap();
        assert_ne!(b.cert_pem, a.cert_pem);
        assert!(covers(&b.cert_pem, &more));
    }

    fn serial_and_subject(pem: &str) -> (Vec<u8>, String, Vec<String>) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        (
            cert.raw_serial().to_vec(),
            cert.subject().to_string(),
            subject_alt_names(&cert),
        )
    }

    #[test]
    fn a_serving_certificate_near_expiry_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string()];
        let mut expiring = pki.issue_serving(&names).unwrap();
        let key_pair = KeyPair::from_pem(&expiring.key_pem).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
        validity(&mut params, 10);
        expiring.cert_pem = params.signed_by(&key_pair, &pki.issuer).unwrap().pem();
        pki.keep(SERVING, &expiring).unwrap();
        let renewed = pki.serving(&names).unwrap();
        assert_ne!(renewed.cert_pem, expiring.cert_pem);
        assert!(covers(&renewed.cert_pem, &names));
        assert_eq!(pki.serving(&names).unwrap().cert_pem, renewed.cert_pem);
    }

    #[test]
    fn rotation_renews_every_leaf_for_its_names_and_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let names = vec!["localhost".to_string(), "10.43.0.1".to_string()];
        let server = pki.serving(&names).unwrap();
        let node = pki
            .client("node", "system:node:a", &["system:nodes"])
            .unwrap();
        let renewed = pki.rotate().unwrap();
        let stems: Vec<&str> = renewed.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(stems, ["node", "server"]);
        for (old, (stem, new)) in [&node, &server].into_iter().zip(&renewed) {
            let (old_serial, old_subject, old_sans) = serial_and_subject(&old.cert_pem);
            let (new_serial, new_subject, new_sans) = serial_and_subject(&new.cert_pem);
            assert_ne!(old_serial, new_serial, "{stem}");
            assert_ne!(old.key_pem, new.key_pem, "{stem}");
            assert_eq!((old_subject, old_sans), (new_subject, new_sans), "{stem}");
        }
        assert_eq!(pki.serving(&names).unwrap().cert_pem, renewed[1].1.cert_pem);
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(again.ca_pem(), pki.ca_pem());
    }

    #[test]
    fn a_kubeconfig_takes_new_credentials_and_keeps_the_rest() {
        let old = CertPair {
            cert_pem: "old cert".into(),
            key_pem: "old key".into(),
        };
        let new = CertPair {
            cert_pem: "new cert".into(),
            key_pem: "new key".into(),
        };
        let written = kubeconfig("kubox", "https://127.0.0.1:6443", "ca", "admin", &old);
        let renewed = with_credentials(&written, &new);
        assert_eq!(
            renewed,
            kubeconfig("kubox", "https://127.0.0.1:6443", "ca", "admin", &new)
        );
    }

    #[test]
    fn a_corrupt_ca_key_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join("ca.key"), "garbage").unwrap();
        match Pki::load_or_create(dir.path()) {
            Err(PkiError::Invalid { path, .. }) => assert_eq!(path, dir.path().join("ca.key")),
            other => panic!("expected Invalid, got {:?}", other.err()),
        }
    }
}
