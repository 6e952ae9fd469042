//! `kubox image`: the node's images, without a running server.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kubox_agent::image::{ImageStore, Removal};

#[derive(Args)]
pub struct ImageArgs {
    /// The data directory of the node whose images these are.
    #[arg(long, default_value = "/var/lib/kubox", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import images from an OCI image layout or `docker save` tarball.
    Import { files: Vec<PathBuf> },
    /// List the node's images.
    Ls,
    /// Remove images by reference or ID.
    Rm { images: Vec<String> },
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    let store = ImageStore::open(&crate::agent::state_dir(&args.data_dir).join("images"))?;
    match args.command {
        ImageCommand::Import { files } => {
            for file in files {
                for image in store.import_archive(&file)? {
                    let name = image
                        .tags
                        .first()
                        .cloned()
                        .unwrap_or_else(|| image.id.clone());
                    println!("imported {name} ({})", image.id);
                }
            }
        }
        ImageCommand::Ls => {
            println!("{:<60} {:<20} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
            for image in store.list() {
                let id: String = image
                    .id
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(13)
                    .collect();
                let size = format!("{:.1}MB", image.size as f64 / 1e6);
                let names = if image.tags.is_empty() {
                    vec!["<none>".to_owned()]
                } else {
                    image.tags.clone()
                };
                for name in names {
                    println!("{name:<60} {id:<20} {size:>10}");
                }
            }
        }
        ImageCommand::Rm { images } => {
            for what in images {
                match store.remove(&what)? {
                    Removal::Untagged(tag) => println!("Untagged: {tag}"),
                    Removal::Deleted(id) => println!("Deleted: {id}"),
                }
            }
        }
    }
    Ok(())
}
