//! `kubox`: Kubernetes in one binary.

// The API server allocates and frees many small buffers per request (JSON
// values, headers, channel messages) on every worker thread; glibc's
// malloc and free were a fifth to a third of its profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent;
mod bench;
mod certs;
mod component;
mod controller_manager;
mod datastore;
mod dns;
mod image;
mod ingress;
mod join;
mod net;
mod scheduler;
mod secrets;
mod server;
mod token;
mod user;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kubox", version, about = "Kubernetes in one binary")]
struct Cli {
    /// Log filter, e.g. `info` or `kubox_apiserver=debug`.
    // libcgroups (in the embedded container runtime) tells at info and warn
    // level, for every container, which cgroup version it uses and each
    // controller the machine lacks.
    #[arg(
        long,
        global = true,
        env = "KUBOX_LOG",
        default_value = "info,libcgroups=error"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cluster: storage, API server and, as they land, the other components.
    Server(Box<server::ServerArgs>),
    /// Manage the node's container images.
    Image(image::ImageArgs),
    /// Run a node agent (and its service proxy) that joins a running cluster.
    Agent(agent::StandaloneArgs),
    /// Run the ingress controller alone against a running cluster.
    Ingress(ingress::StandaloneArgs),
    /// Run the scheduler alone against a running cluster (kube-scheduler).
    Scheduler(scheduler::StandaloneArgs),
    /// Run the controller manager alone against a running cluster
    /// (kube-controller-manager).
    ControllerManager(Box<controller_manager::StandaloneArgs>),
    /// Remove what a node's network made: nft tables, bridge, veths, routes.
    Uninstall(net::UninstallArgs),
    /// Make join tokens for new nodes.
    Token(token::TokenArgs),
    /// Manage the cluster's users (client certificates and kubeconfigs).
    User(user::UserArgs),
    /// Move a cluster's data between datastores (`migrate`: embedded to etcd).
    Datastore(datastore::DatastoreArgs),
    /// Renew the cluster's certificates (`rotate`: all but the CA).
    Certs(certs::CertsArgs),
    /// Work on the cluster's Secrets (re-encrypting them after a key change).
    Secrets(secrets::SecretsArgs),
    /// Measure kubox's components.
    Bench(bench::BenchArgs),
    /// The embedded container runtime's helper, which the node agent starts.
    #[command(name = kubox_agent::runtime::HELPER_COMMAND, hide = true)]
    RuntimeHelper,
}

fn main() -> anyhow::Result<()> {
    // One TLS provider for every client in the process (kube-rs, registry pulls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Image(args) => return image::run(args),
        Command::User(args) => return user::run(args),
        Command::Certs(args) => return certs::run(args),
        command => Cli { command, ..cli },
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .init();
    // Before any thread starts: the helper forks.
    if let Command::RuntimeHelper = cli.command {
        kubox_agent::runtime::serve_helper();
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Ingress(args) => ingress::run(args).await,
            Command::Scheduler(args) => scheduler::run(args).await,
            Command::ControllerManager(args) => controller_manager::run(*args).await,
            Command::Uninstall(args) => net::uninstall(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Datastore(args) => datastore::run(args).await,
            Command::Secrets(args) => secrets::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Image(_) | Command::User(_) | Command::Certs(_) | Command::RuntimeHelper => {
                unreachable!("handled without a runtime")
            }
        }
    })
}
