//! `kubox token`: join tokens, which let a new node join (`kubox agent
//! --server URL --token TOKEN`). Each is a bootstrap token (a Secret in
//! kube-system, as kubeadm's) prefixed with the hash of the cluster CA's
//! public key, which the joining node checks the server against.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kubox_apiserver::bootstrap_token::{JoinToken, NAMESPACE, Token, ca_hash};

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a join token and print it.
    Create(CreateArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// How long the token is valid (`24h`, `30m`); 0 for ever.
    #[arg(long, default_value = "24h", value_parser = crate::server::parse_duration)]
    ttl: Duration,
    /// Credentials to create the token with; the server's admin kubeconfig by default.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The server's data directory, for its admin kubeconfig.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    /// What the token is for, kept in its Secret.
    #[arg(long, default_value = "made by kubox token create")]
    description: String,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create(args) => {
            let kubeconfig = args
                .kubeconfig
                .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
            let token = create_with(&kubeconfig, Some(args.ttl), &args.description).await?;
            println!("{token}");
            Ok(())
        }
    }
}

/// The CA (PEM) a kubeconfig trusts its server by.
pub fn kubeconfig_ca(kubeconfig: &kube::config::Kubeconfig) -> Option<String> {
    use base64::Engine;
    let cluster = kubeconfig.clusters.first()?.cluster.as_ref()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cluster.certificate_authority_data.as_ref()?)
        .ok()?;
    String::from_utf8(pem).ok()
}

/// Makes a join token valid for `ttl` (for ever when zero or None), with
/// the identity of `kubeconfig`.
pub async fn create_with(
    kubeconfig: &Path,
    ttl: Option<Duration>,
    description: &str,
) -> anyhow::Result<JoinToken> {
    let (client, config) = kubox_client::connect(kubeconfig)
        .await
        .with_context(|| format!("connecting with {}", kubeconfig.display()))?;
    let ca = kubeconfig_ca(&config).context("the kubeconfig names no certificate authority")?;
    let ca_hash = ca_hash(&ca).map_err(anyhow::Error::msg)?;
    let token = Token::generate();
    let expiration = ttl.filter(|t| !t.is_zero()).map(|ttl| {
        let at = time::OffsetDateTime::now_utc() + ttl;
        at.replace_nanosecond(0)
            .unwrap_or(at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    });
    let secret: Secret =
        serde_json::from_value(token.secret_object(expiration.as_deref(), description))?;
    kube::Api::<Secret>::namespaced(client, NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the bootstrap token's Secret")?;
    Ok(JoinToken { ca_hash, token })
}
