//! `kubox certs rotate`: renews a server's leaf certificates (its serving
//! certificate and the client ones of the admin and its components) under
//! the same CA, and the kubeconfigs that embed them. A running server takes
//! the new serving certificate up within seconds, without a restart; its
//! components keep their certificates until they restart, as those stay
//! valid until they expire.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kubox_apiserver::pki;

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Renew the serving and component certificates, keeping the CA.
    Rotate(RotateArgs),
}

#[derive(Args)]
struct RotateArgs {
    /// The server's data directory.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Rotate(args) => rotate(args),
    }
}

fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.join("pki");
    if !dir.join("ca.crt").exists() {
        anyhow::bail!(
            "{} holds no cluster CA: has a server run with --data-dir {}?",
            dir.display(),
            args.data_dir.display()
        );
    }
    let ca = pki::Pki::load_or_create(&dir).context("loading the cluster CA")?;
    for (stem, creds) in ca.rotate()? {
        let kubeconfig = args.data_dir.join(format!("{stem}.kubeconfig"));
        match std::fs::read_to_string(&kubeconfig) {
            Ok(contents) => {
                let renewed = pki::with_credentials(&contents, &creds);
                pki::write_file(&kubeconfig, renewed.as_bytes(), true)?;
                eprintln!("{stem}: renewed, {} updated", kubeconfig.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("{stem}: renewed"),
            Err(e) => return Err(e).with_context(|| format!("reading {}", kubeconfig.display())),
        }
    }
    Ok(())
}
