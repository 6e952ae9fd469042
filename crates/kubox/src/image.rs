//! `kubox image`: the node's images, without a running server.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kubox_agent::image::{BuildSpec, ImageStore, Reference, Removal};

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
    /// Build an image from host files, on a stored base image or on nothing.
    Build(BuildArgs),
    /// Write a stored image as an OCI image layout tarball (for `skopeo copy oci-archive:...`).
    Save {
        image: String,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// The new image's name, e.g. `kubox.local/go-multiroute:v1`.
    #[arg(short = 't', long = "tag", required = true)]
    tags: Vec<String>,
    /// A stored image to build on (as `FROM`).
    #[arg(long)]
    from: Option<String>,
    /// `HOST_PATH:IMAGE_PATH`: a file or directory to add.
    #[arg(long = "add", value_parser = parse_add)]
    add: Vec<(PathBuf, String)>,
    /// Also add the shared libraries the added programs need (found with ldd).
    #[arg(long)]
    libraries: bool,
    /// `KEY=value` for the image's environment.
    #[arg(long = "env")]
    env: Vec<String>,
    /// A JSON array (`["/app","--flag"]`) or words separated by spaces.
    #[arg(long, value_parser = parse_command)]
    entrypoint: Option<Argv>,
    /// The default arguments, in the same form as --entrypoint.
    #[arg(long, value_parser = parse_command)]
    cmd: Option<Argv>,
    #[arg(long)]
    workdir: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// A port the image listens on, e.g. `3000` or `53/udp`.
    #[arg(long)]
    expose: Vec<String>,
    /// Also write the image as an OCI image layout tarball.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

fn parse_add(s: &str) -> Result<(PathBuf, String), String> {
    let (host, image) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: use HOST_PATH:IMAGE_PATH"))?;
    Ok((PathBuf::from(host), image.to_owned()))
}

/// A command line, one value to clap (which would otherwise take a
/// `Vec` as repeated values).
#[derive(Clone)]
struct Argv(Vec<String>);

fn parse_command(s: &str) -> Result<Argv, String> {
    if s.trim_start().starts_with('[') {
        serde_json::from_str(s)
            .map(Argv)
            .map_err(|e| format!("{s:?}: not a JSON array of strings: {e}"))
    } else {
        Ok(Argv(s.split_whitespace().map(str::to_owned).collect()))
    }
}

fn reference(s: &str) -> anyhow::Result<Reference> {
    Reference::parse(s).map_err(|e| anyhow::anyhow!("invalid image name {:?}: {}", e.image, e.why))
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
        ImageCommand::Build(b) => {
            let names = b
                .tags
                .iter()
                .map(|t| reference(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let spec = BuildSpec {
                base: b.from.as_deref().map(reference).transpose()?,
                add: b.add,
                libraries: b.libraries,
                env: b.env,
                entrypoint: b.entrypoint.map(|a| a.0),
                cmd: b.cmd.map(|a| a.0),
                workdir: b.workdir,
                user: b.user,
                expose: b.expose,
            };
            let image = store.build(&spec, &names).context("building the image")?;
            println!("built {} ({})", names[0], image.id);
            if let Some(out) = b.output {
                store.save(&names[0], &out)?;
                println!("wrote {}", out.display());
            }
        }
        ImageCommand::Save { image, output } => store.save(&reference(&image)?, &output)?,
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
