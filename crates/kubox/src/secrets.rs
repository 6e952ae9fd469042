//! `kubox secrets reencrypt`: after a key rotation (the new key put first in
//! the EncryptionConfiguration), rewrites every Secret through the API so the
//! store holds each under the new key, as upstream's documented
//! `kubectl get secrets -A -o json | kubectl replace -f -` does.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};

#[derive(Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Rewrite every Secret, so each is stored under the first provider's key.
    Reencrypt(ReencryptArgs),
}

#[derive(Args)]
struct ReencryptArgs {
    /// The server's data directory, whose admin kubeconfig is used.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    /// A kubeconfig to use instead of the data directory's admin one.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

pub async fn run(args: SecretsArgs) -> anyhow::Result<()> {
    match args.command {
        SecretsCommand::Reencrypt(args) => reencrypt(args).await,
    }
}

async fn reencrypt(args: ReencryptArgs) -> anyhow::Result<()> {
    let path = args
        .kubeconfig
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    let (client, _) = kubox_client::connect(&path).await?;
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Secret"), "secrets");
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let (mut rewritten, mut continue_token) = (0usize, None::<String>);
    loop {
        let mut params = ListParams::default().limit(500);
        if let Some(token) = &continue_token {
            params = params.continue_token(token);
        }
        let page = all.list(&params).await.context("listing Secrets")?;
        for secret in page.items {
            let (Some(ns), Some(name)) = (
                secret.metadata.namespace.clone(),
                secret.metadata.name.clone(),
            ) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
            match api.replace(&name, &PostParams::default(), &secret).await {
                Ok(_) => rewritten += 1,
                // Written or deleted since the list: a write since is under
                // the current key already, a deleted Secret needs nothing.
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("replacing secret {ns}/{name}")),
            }
        }
        continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
        if continue_token.is_none() {
            break;
        }
    }
    println!("{rewritten} secrets re-encrypted");
    Ok(())
}
