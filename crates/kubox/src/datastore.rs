//! `kubox datastore migrate`: a single server's embedded store copied into
//! etcd, so the cluster goes on with several servers (as k3s moves a SQLite
//! cluster to etcd). The server must be stopped.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kubox_store::{
    Compare, CompareOp, CompareTarget, EtcdConfig, EtcdStore, Op, RangeRequest, SqliteConfig,
    SqliteStore, Store, Txn,
};

#[derive(Args)]
pub struct DatastoreArgs {
    #[command(subcommand)]
    command: DatastoreCommand,
}

#[derive(Subcommand)]
enum DatastoreCommand {
    /// Copy every key of a stopped server's embedded store into an empty etcd.
    Migrate(MigrateArgs),
}

#[derive(Args)]
struct MigrateArgs {
    /// The stopped server's data directory (its store is DIR/db/state.db).
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    /// Comma-separated etcd client URLs to copy into.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
}

/// Keys copied per etcd transaction, well within etcd's default 128 operations.
const BATCH: usize = 100;
/// Keys under a lease (Events) get a new one in etcd lasting this long.
const LEASED_TTL_SECONDS: i64 = 3600;

pub async fn run(args: DatastoreArgs) -> anyhow::Result<()> {
    match args.command {
        DatastoreCommand::Migrate(args) => migrate(args).await,
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("db").join("state.db");
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: is {} a kubox server's data directory?",
        path.display(),
        args.data_dir.display()
    );
    let source = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .with_context(|| format!("opening {} (is the server stopped?)", path.display()))?;
    let target = EtcdStore::connect(EtcdConfig::new(args.etcd_endpoints.clone()))
        .await
        .context("connecting to etcd")?;
    let existing = target
        .range(RangeRequest {
            count_only: true,
            ..RangeRequest::prefix("/registry/")
        })
        .await
        .context("reading etcd")?
        .count;
    anyhow::ensure!(
        existing == 0,
        "etcd already holds a cluster ({existing} keys under /registry/): migrate into an empty one"
    );
    let mut lease = None;
    let (mut copied, mut start) = (0usize, None);
    loop {
        let page = source
            .range(RangeRequest {
                start: start.clone(),
                limit: BATCH,
                ..RangeRequest::prefix("/")
            })
            .await
            .context("reading the embedded store")?;
        let mut txn = Txn::default();
        for kv in &page.kvs {
            let lease = if kv.lease == 0 {
                0
            } else if let Some(id) = lease {
                id
            } else {
                let id = target.lease_grant(LEASED_TTL_SECONDS).await?;
                lease = Some(id);
                id
            };
            // Create-if-absent: a rerun after a failure never overwrites.
            txn.compares.push(Compare::new(
                kv.key.clone(),
                CompareOp::Equal,
                CompareTarget::ModRevision(0),
            ));
            txn.success.push(Op::Put {
                key: kv.key.clone(),
                value: kv.value.clone(),
                lease,
            });
        }
        if !txn.success.is_empty() {
            let resp = target.txn(txn).await.context("writing to etcd")?;
            anyhow::ensure!(
                resp.succeeded,
                "etcd already holds one of the keys from {:?} on",
                page.kvs[0].key
            );
        }
        copied += page.kvs.len();
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => start = Some(format!("{}\0", last.key)),
            _ => break,
        }
    }
    println!(
        "kubox datastore migrate: copied {copied} keys from {} to etcd; start the servers with --datastore etcd --etcd-endpoints {}",
        path.display(),
        args.etcd_endpoints.join(",")
    );
    Ok(())
}
