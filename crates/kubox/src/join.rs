//! Joining a cluster with a join token (`kubox agent --server URL --token
//! TOKEN`), as kubelet's TLS bootstrap with kubeadm's discovery does: the
//! node reads the cluster CA from kube-public's `cluster-info` without
//! trusting the server, checks it against the hash in the token (refusing
//! any other), then, trusting that CA only, asks with the bootstrap token for
//! its client certificate (`CN=system:node:<name>, O=system:nodes`, signer
//! `kubernetes.io/kube-apiserver-client-kubelet`) through a
//! CertificateSigningRequest the server approves and signs. The certificate
//! and its key go into `DATA/agent/node.kubeconfig`, reused on restart,
//! and are renewed (a new key, the request made as the node itself) at
//! 70-90% of the certificate's lifetime.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kubox_apiserver::bootstrap_token::{JoinToken, ca_hash};
use kubox_apiserver::pki::{self, CertPair};
use rand::Rng;

const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How long one certificate request may wait for its certificate.
const SIGN_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The files under the agent's state directory a join leaves.
pub const CREDENTIALS: [&str; 2] = ["node.kubeconfig", "node.key"];

/// What a node joins with.
pub struct Join {
    pub server: String,
    pub token: JoinToken,
    pub node_name: String,
    /// The agent's state directory, which keeps the credentials.
    pub state_dir: PathBuf,
}

impl Join {
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join(CREDENTIALS[0])
    }

    fn key_path(&self) -> PathBuf {
        self.state_dir.join(CREDENTIALS[1])
    }

    fn user(&self) -> String {
        format!("system:node:{}", self.node_name)
    }

    /// The node's kubeconfig: the one kept from an earlier start while its
    /// certificate is still valid, else one from a new bootstrap, retried
    /// with backoff (logging why) until it succeeds.
    pub async fn credentials(&self) -> PathBuf {
        let path = self.kubeconfig();
        if let Some((_, not_after)) = self.kept_validity()
            && not_after > time::OffsetDateTime::now_utc()
        {
            tracing::info!(kubeconfig = %path.display(), "reusing the node's certificate");
            return path;
        }
        retrying("joining the cluster", || self.bootstrap()).await;
        path
    }

    /// The validity of the certificate in the kept kubeconfig, when it is
    /// for this server and node.
    fn kept_validity(&self) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).ok()?;
        let cluster = kubeconfig.clusters.first()?.cluster.as_ref()?;
        if cluster.server.as_deref() != Some(self.server.as_str()) {
            return None;
        }
        let user = kubeconfig.auth_infos.first()?.auth_info.as_ref()?;
        let cert_pem = base64_decode(user.client_certificate_data.as_ref()?)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        (cn == self.user()).then(|| {
            (
                cert.validity().not_before.to_datetime(),
                cert.validity().not_after.to_datetime(),
            )
        })
    }

    /// Reads the CA from `cluster-info` on a connection that trusts nothing
    /// yet, and keeps it only if its hash is the token's.
    async fn verified_ca(&self) -> anyhow::Result<String> {
        let mut config = kube::Config::new(self.server.parse().context("the --server URL")?);
        // Nothing read on this connection is used until the hash matches.
        config.accept_invalid_certs = true;
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(10));
        let client = kube::Client::try_from(config)?;
        let info = kube::Api::<ConfigMap>::namespaced(client, "kube-public")
            .get("cluster-info")
            .await
            .with_context(|| format!("reading kube-public/cluster-info from {}", self.server))?;
        let kubeconfig = info
            .data
            .as_ref()
            .and_then(|d| d.get("kubeconfig"))
            .context("cluster-info has no kubeconfig")?;
        let kubeconfig = Kubeconfig::from_yaml(kubeconfig).context("cluster-info's kubeconfig")?;
        let ca = crate::token::kubeconfig_ca(&kubeconfig).context("cluster-info names no CA")?;
        let got = ca_hash(&ca).map_err(anyhow::Error::msg)?;
        if got != self.token.ca_hash {
            bail!(
                "refusing to trust {}: its CA's public key hash is sha256:{got}, but the join token expects sha256:{} (another cluster's token, or not the server meant)",
                self.server,
                self.token.ca_hash
            );
        }
        Ok(ca)
    }

    /// A client of the server that trusts `ca` only, with `user`'s credentials (kubeconfig YAML).
    async fn client(&self, ca: &str, user: &str) -> anyhow::Result<kube::Client> {
        use base64::Engine;
        let yaml = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kubox
  cluster:
    server: {server}
    certificate-authority-data: {ca}
contexts:
- name: node
  context: {{cluster: kubox, user: node}}
current-context: node
users:
- name: node
  user: {user}
",
            server = self.server,
            ca = base64::engine::general_purpose::STANDARD.encode(ca),
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    async fn bootstrap(&self) -> anyhow::Result<()> {
        let ca = self.verified_ca().await?;
        let client = self
            .client(&ca, &format!("{{token: \"{}\"}}", self.token.token))
            .await?;
        let key = match std::fs::read_to_string(self.key_path()) {
            // The node keeps its key: the server knows the node by it.
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).context("the node's key")?,
            Err(_) => rcgen::KeyPair::generate()?,
        };
        let cert_pem = self.request_certificate(client, &key).await?;
        self.save(&ca, &cert_pem, &key)?;
        tracing::info!(node = %self.node_name, server = %self.server, "joined: the node's certificate is signed");
        Ok(())
    }

    /// Writes the key and a kubeconfig with the certificate.
    fn save(&self, ca: &str, cert_pem: &str, key: &rcgen::KeyPair) -> anyhow::Result<()> {
        let creds = CertPair {
            cert_pem: cert_pem.to_owned(),
            key_pem: key.serialize_pem(),
        };
        pki::write_file(&self.key_path(), creds.key_pem.as_bytes(), true)?;
        let contents = pki::kubeconfig("kubox", &self.server, ca, &self.user(), &creds);
        pki::write_file(&self.kubeconfig(), contents.as_bytes(), true)?;
        Ok(())
    }

    /// Sends a CertificateSigningRequest for this node's client certificate
    /// and waits for it to be signed.
    async fn request_certificate(
        &self,
        client: kube::Client,
        key: &rcgen::KeyPair,
    ) -> anyhow::Result<String> {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.user());
        let request = params.serialize_request(key)?.pem()?;
        let csr = CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some("node-csr-".into()),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(request.into_bytes()),
                signer_name: SIGNER.into(),
                usages: Some(vec!["digital signature".into(), "client auth".into()]),
                ..CertificateSigningRequestSpec::default()
            },
            status: None,
        };
        let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client);
        let created = match api.create(&PostParams::default(), &csr).await {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 401 => bail!(
                "the server refused the join token (401 Unauthorized): it is wrong, expired or deleted; make another with `kubox token create` on the server"
            ),
            Err(e) => return Err(e).context("sending the certificate request"),
        };
        let name = created.metadata.name.unwrap_or_default();
        let done = |csr: Option<&CertificateSigningRequest>| {
            csr.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
                    || s.conditions
                        .iter()
                        .flatten()
                        .any(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
            })
        };
        let signed = tokio::time::timeout(
            SIGN_TIMEOUT,
            kube::runtime::wait::await_condition(api, &name, done),
        )
        .await
        .with_context(|| {
            format!(
                "certificate request {name} was not approved and signed within {SIGN_TIMEOUT:?}"
            )
        })??
        .with_context(|| format!("certificate request {name} was deleted"))?;
        let status = signed.status.unwrap_or_default();
        if let Some(refusal) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        {
            bail!(
                "certificate request {name} was {}: {}",
                refusal.type_.to_lowercase(),
                refusal.message.as_deref().unwrap_or_default()
            );
        }
        let cert = status.certificate.unwrap_or_default();
        String::from_utf8(cert.0).context("the signed certificate")
    }

    /// Waits until 70-90% (at random, as kubelet) of the certificate's
    /// lifetime, then renews it as the node itself, with a new key; returns
    /// once the new one is saved.
    pub async fn renew_when_due(&self) {
        if let Some((not_before, not_after)) = self.kept_validity() {
            let fraction = rand::rng().random_range(0.7..0.9);
            let deadline = not_before + (not_after - not_before) * fraction;
            let wait = deadline - time::OffsetDateTime::now_utc();
            tracing::info!(renew_in = %wait, "the node's certificate will be renewed");
            tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
        }
        retrying("renewing the node's certificate", || self.renew()).await;
    }

    async fn renew(&self) -> anyhow::Result<()> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        let ca = crate::token::kubeconfig_ca(&kubeconfig).context("the node kubeconfig's CA")?;
        let (client, _) = kubox_client::connect(&self.kubeconfig()).await?;
        let key = rcgen::KeyPair::generate()?;
        let cert_pem = self.request_certificate(client, &key).await?;
        self.save(&ca, &cert_pem, &key)?;
        tracing::info!(node = %self.node_name, "the node's certificate is renewed");
        Ok(())
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Runs `attempt` until it succeeds, waiting longer after each failure
/// (1 s doubling up to 30 s) and logging why it failed.
async fn retrying<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!("{what}: {e:#}; retrying in {}s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
