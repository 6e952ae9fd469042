//! `kubox user`: users of the cluster, who are not API objects but
//! holders of client certificates the cluster CA signed (the user is the
//! certificate's CN, the groups its O), as the seeds' `new_user.sh` made
//! them with openssl.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kubox_apiserver::pki;

#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Issue a client certificate for a user and write a kubeconfig with it.
    Create(CreateArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// The user name (the certificate's CN), as RoleBindings name it.
    name: String,
    /// The user's group (the certificate's O). One only: the certificate
    /// library kubox signs with keeps one value per name attribute.
    #[arg(long)]
    group: Option<String>,
    /// The server's data directory, holding the cluster CA.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    /// Where to write the kubeconfig; standard output if not given.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

pub fn run(args: UserArgs) -> anyhow::Result<()> {
    match args.command {
        UserCommand::Create(args) => create(args),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.starts_with("system:") {
        anyhow::bail!("user name {:?} is empty or reserved (system:)", args.name);
    }
    let admin = args.data_dir.join("admin.kubeconfig");
    let admin = kube::config::Kubeconfig::read_from(&admin)
        .with_context(|| format!("reading {} (has the server started?)", admin.display()))?;
    let server = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("the admin kubeconfig names no server")?;
    let ca =
        pki::Pki::load_or_create(&args.data_dir.join("pki")).context("loading the cluster CA")?;
    let groups: Vec<&str> = args.group.iter().map(String::as_str).collect();
    let creds = ca.issue_client(&args.name, &groups)?;
    let contents = pki::kubeconfig("kubox", &server, ca.ca_pem(), &args.name, &creds);
    match args.output {
        Some(path) => {
            pki::write_file(&path, contents.as_bytes(), true)?;
            eprintln!(
                "user {:?} (groups {:?}): kubeconfig written to {} (context {}@kubox)",
                args.name,
                groups,
                path.display(),
                args.name
            );
        }
        None => print!("{contents}"),
    }
    Ok(())
}
