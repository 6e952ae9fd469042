//! `kubox bench ...`

use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The storage engine: write latency and throughput, range reads, watch fan-out.
    Store {
        /// Skip measuring a real etcd side by side.
        #[arg(long)]
        no_etcd: bool,
        /// Seconds each throughput phase runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
    },
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Store {
            no_etcd,
            seconds,
            watchers,
            value_bytes,
        } => {
            let table = kubox_bench::store::run(kubox_bench::store::Options {
                etcd: !no_etcd,
                duration: Duration::from_secs(seconds),
                watchers,
                value_bytes,
            })
            .await?;
            println!("{table}");
        }
    }
    Ok(())
}
