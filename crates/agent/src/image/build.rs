//! Building images on the node without a container engine: one new layer
//! of host files (and, on request, the shared libraries their programs
//! load) on top of a stored base image or of nothing, with the image
//! configuration's entrypoint, command, environment and ports set; and
//! saving a stored image as an OCI image layout tarball for registries.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::reference::Reference;
use super::store::{ImageError, ImageRecord, ImageStore, platform_architecture};

/// What to build. Paths in the image are absolute.
#[derive(Clone, Debug, Default)]
pub struct BuildSpec {
    /// The stored image to build on; `None` for an image of only the new layer.
    pub base: Option<Reference>,
    /// Host file or directory → where it goes in the image.
    pub add: Vec<(PathBuf, String)>,
    /// Also add the shared libraries (and the loader) that added programs need.
    pub libraries: bool,
    /// `KEY=value`, replacing the base's value of the same key.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `80/tcp` or `80` (tcp).
    pub expose: Vec<String>,
}

fn invalid(msg: String) -> ImageError {
    ImageError::Invalid(msg)
}

fn io_context(context: String) -> impl FnOnce(io::Error) -> ImageError {
    move |source| ImageError::Io { context, source }
}

/// A path in the image, as a tar entry name: relative, without `..`.
fn entry_name(image_path: &str) -> Result<String, ImageError> {
    let rel = image_path.trim_start_matches('/');
    if !image_path.starts_with('/')
        || rel.is_empty()
        || rel.split('/').any(|c| c == ".." || c == ".")
    {
        return Err(invalid(format!(
            "image path {image_path:?} must be absolute, without . or .."
        )));
    }
    Ok(rel.trim_end_matches('/').to_owned())
}

/// The shared objects `program` loads, as `ldd` resolves them; nothing for
/// files that are not dynamically linked programs.
fn libraries_of(program: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io_context("running ldd".into()))?;
    if !out.status.success() {
        return Ok(vec![]);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let target = line.split("=>").nth(1).unwrap_or(line).trim();
            let path = target.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Writes one layer: deterministic (owner root, time 0), parent directories
/// included, host symlinks kept inside added directories.
struct LayerWriter {
    tar: tar::Builder<File>,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl LayerWriter {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            self.dir(&prefix.clone(), 0o755)?;
        }
        Ok(())
    }

    fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        if !self.dirs.insert(name.to_owned()) {
            return Ok(());
        }
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, format!("{name}/"), io::empty())
    }

    fn file(&mut self, host: &Path, name: &str) -> io::Result<()> {
        if !self.files.insert(name.to_owned()) {
            return Ok(());
        }
        self.parents(name)?;
        let meta = fs::metadata(host)?;
        let mut h = Self::header(
            tar::EntryType::Regular,
            meta.permissions().mode() & 0o7777,
            meta.len(),
        );
        self.tar.append_data(&mut h, name, File::open(host)?)
    }

    fn symlink(&mut self, target: &Path, name: &str) -> io::Result<()> {
        if !self.files.insert(name.to_owned()) {
            return Ok(());
        }
        self.parents(name)?;
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, name, target)
    }

    /// A host file or directory tree at `name`, collecting the regular
    /// files added. A link named on the command line is followed; links
    /// inside a directory are kept as links.
    fn tree(
        &mut self,
        host: &Path,
        name: &str,
        top: bool,
        added: &mut Vec<PathBuf>,
    ) -> io::Result<()> {
        let meta = if top {
            fs::metadata(host)?
        } else {
            fs::symlink_metadata(host)?
        };
        if meta.file_type().is_symlink() {
            self.symlink(&fs::read_link(host)?, name)
        } else if meta.is_dir() {
            self.parents(name)?;
            self.dir(name, meta.mode() & 0o7777)?;
            let mut entries: Vec<_> = fs::read_dir(host)?.collect::<io::Result<_>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let child = format!("{name}/{}", e.file_name().to_string_lossy());
                self.tree(&e.path(), &child, false, added)?;
            }
            Ok(())
        } else {
            added.push(host.to_owned());
            self.file(host, name)
        }
    }
}

fn merge_env(env: &mut Vec<String>, set: &[String]) {
    for kv in set {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
}

impl ImageStore {
    /// Builds `spec` and records the image under `names`.
    pub fn build(&self, spec: &BuildSpec, names: &[Reference]) -> Result<ImageRecord, ImageError> {
        let (mut config, mut layers): (Value, Vec<Value>) = match &spec.base {
            Some(base) => {
                let record = self
                    .resolve(base)
                    .ok_or_else(|| ImageError::NotFound(base.to_string()))?;
                let manifest: Value =
                    serde_json::from_slice(&self.read_blob(&record.manifest_digest)?)
                        .map_err(|e| invalid(format!("manifest of {base}: {e}")))?;
                let config = serde_json::from_slice(&self.read_blob(&record.id)?)
                    .map_err(|e| invalid(format!("config of {base}: {e}")))?;
                let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
                (config, layers)
            }
            None => (
                json!({
                    "architecture": platform_architecture(),
                    "os": "linux",
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []},
                }),
                vec![],
            ),
        };
        let (layer_digest, layer_size) = self.write_layer(spec)?;
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }));
        // An uncompressed layer's diff ID is its digest.
        match config["rootfs"]["diff_ids"].as_array_mut() {
            Some(ids) => ids.push(json!(layer_digest)),
            None => config["rootfs"] = json!({"type": "layers", "diff_ids": [layer_digest]}),
        }
        let c = &mut config["config"];
        if !c.is_object() {
            *c = json!({});
        }
        let mut env: Vec<String> = serde_json::from_value(c["Env"].clone()).unwrap_or_default();
        merge_env(&mut env, &spec.env);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        c["Env"] = json!(env);
        if let Some(entrypoint) = &spec.entrypoint {
            c["Entrypoint"] = json!(entrypoint);
            // As a Dockerfile's ENTRYPOINT: the base's command no longer applies.
            if spec.cmd.is_none() {
                c.as_object_mut().map(|o| o.remove("Cmd"));
            }
        }
        if let Some(cmd) = &spec.cmd {
            c["Cmd"] = json!(cmd);
        }
        if let Some(dir) = &spec.workdir {
            c["WorkingDir"] = json!(dir);
        }
        if let Some(user) = &spec.user {
            c["User"] = json!(user);
        }
        for port in &spec.expose {
            let port = if port.contains('/') {
                port.clone()
            } else {
                format!("{port}/tcp")
            };
            c["ExposedPorts"][port] = json!({});
        }
        let history = json!({
            "created": "1970-01-01T00:00:00Z",
            "created_by": "kubox image build",
        });
        match config["history"].as_array_mut() {
            Some(h) => h.push(history),
            None => config["history"] = json!([history]),
        }
        let config_bytes = serde_json::to_vec(&config).expect("JSON values serialise");
        let config_digest = self.put_blob(config_bytes.as_slice(), None)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers,
        });
        let manifest_digest = self.put_blob(manifest.to_string().as_bytes(), None)?;
        self.commit(&manifest_digest, names, None)
    }

    fn write_layer(&self, spec: &BuildSpec) -> Result<(String, u64), ImageError> {
        let path = self.temp_path("build-layer");
        let context = format!("writing the new layer at {}", path.display());
        let file = File::create(&path).map_err(io_context(context.clone()))?;
        let mut layer = LayerWriter {
            tar: tar::Builder::new(file),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        };
        let mut programs = Vec::new();
        for (host, image_path) in &spec.add {
            let name = entry_name(image_path)?;
            layer
                .tree(host, &name, true, &mut programs)
                .map_err(io_context(format!("adding {}", host.display())))?;
        }
        if spec.libraries {
            let mut libraries = BTreeSet::new();
            for program in &programs {
                libraries.extend(libraries_of(program)?);
            }
            for lib in libraries {
                let name = entry_name(&lib.to_string_lossy())?;
                layer
                    .file(&lib, &name)
                    .map_err(io_context(format!("adding {}", lib.display())))?;
            }
        }
        let file = layer
            .tar
            .into_inner()
            .map_err(io_context(context.clone()))?;
        let size = file.metadata().map_err(io_context(context.clone()))?.len();
        drop(file);
        let digest = File::open(&path)
            .map_err(io_context(context))
            .and_then(|f| self.put_blob(f, None));
        let _ = fs::remove_file(&path);
        Ok((digest?, size))
    }

    /// Writes the stored image `reference` names as an OCI image layout
    /// tarball (what `skopeo copy oci-archive:` and `kubox image import` read).
    pub fn save(&self, reference: &Reference, out: &Path) -> Result<(), ImageError> {
        let record = self
            .resolve(reference)
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let manifest = self.read_blob(&record.manifest_digest)?;
        let context = format!("writing {}", out.display());
        let file = File::create(out).map_err(io_context(context.clone()))?;
        let mut tar = tar::Builder::new(file);
        let mut add = |name: &str, bytes: &[u8]| -> io::Result<()> {
            let mut h = LayerWriter::header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            tar.append_data(&mut h, name, bytes)
        };
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": record.manifest_digest,
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": reference.to_string(),
                    "org.opencontainers.image.ref.name": reference.to_string(),
                },
            }],
        });
        let blobs = std::iter::once(record.manifest_digest.clone())
            .chain(std::iter::once(record.id.clone()))
            .chain(record.layers.iter().cloned());
        let write = || -> Result<(), ImageError> {
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                .and_then(|_| add("index.json", index.to_string().as_bytes()))
                .map_err(io_context(context.clone()))?;
            for digest in blobs {
                let hex = digest.trim_start_matches("sha256:");
                add(&format!("blobs/sha256/{hex}"), &self.read_blob(&digest)?)
                    .map_err(io_context(context.clone()))?;
            }
            Ok(())
        };
        write()?;
        tar.into_inner().map_err(io_context(context)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_must_be_absolute_and_stay_inside() {
        assert_eq!(entry_name("/multiroute").unwrap(), "multiroute");
        assert_eq!(entry_name("/usr/bin/").unwrap(), "usr/bin");
        for bad in ["multiroute", "/", "/a/../etc", "/./a"] {
            assert!(entry_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_is_merged_by_key() {
        let mut env = vec!["PATH=/bin".to_owned(), "VERSION=v1".to_owned()];
        merge_env(&mut env, &["VERSION=v2".to_owned(), "MODE=x".to_owned()]);
        assert_eq!(env, ["PATH=/bin", "VERSION=v2", "MODE=x"]);
    }

    #[test]
    fn a_built_image_holds_its_files_and_libraries_and_saves_and_imports() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("store")).unwrap();
        let app = dir.path().join("app");
        fs::create_dir_all(app.join("static")).unwrap();
        fs::write(app.join("static/index.html"), "hi").unwrap();
        std::os::unix::fs::symlink("index.html", app.join("static/home.html")).unwrap();
        let name = Reference::parse("kubox.local/ls:v1").unwrap();
        let spec = BuildSpec {
            add: vec![
                (PathBuf::from("/bin/ls"), "/bin/ls".into()),
                (app.join("static"), "/srv/static".into()),
            ],
            libraries: true,
            env: vec!["VERSION=v1".into()],
            entrypoint: Some(vec!["/bin/ls".into()]),
            expose: vec!["3000".into()],
            ..Default::default()
        };
        let record = store.build(&spec, std::slice::from_ref(&name)).unwrap();
        assert_eq!(record.tags, ["kubox.local/ls:v1"]);
        let config = store.config(&record).unwrap();
        let c = config.config().as_ref().unwrap();
        assert_eq!(c.entrypoint().as_deref(), Some(&["/bin/ls".to_owned()][..]));
        assert!(c.env().as_ref().unwrap().contains(&"VERSION=v1".to_owned()));
        let layer = &store.layer_dirs(&record).unwrap()[0];
        assert!(layer.join("bin/ls").is_file());
        assert_eq!(
            fs::read_link(layer.join("srv/static/home.html")).unwrap(),
            Path::new("index.html")
        );
        // ls is dynamically linked on Debian: its C library came along.
        let libc = libraries_of(Path::new("/bin/ls")).unwrap();
        assert!(!libc.is_empty(), "ldd found ls's libraries");
        for lib in libc {
            assert!(
                layer.join(lib.strip_prefix("/").unwrap()).is_file(),
                "{lib:?}"
            );
        }
        // A second image on top of the first keeps its layers and settings.
        let top = Reference::parse("kubox.local/ls:v2").unwrap();
        let derived = store
            .build(
                &BuildSpec {
                    base: Some(name.clone()),
                    env: vec!["VERSION=v2".into()],
                    ..Default::default()
                },
                std::slice::from_ref(&top),
            )
            .unwrap();
        assert_eq!(derived.layers.len(), 2);
        assert_eq!(derived.layers[0], record.layers[0]);
        let derived_config = store.config(&derived).unwrap();
        let env = derived_config
            .config()
            .as_ref()
            .unwrap()
            .env()
            .clone()
            .unwrap();
        assert!(env.contains(&"VERSION=v2".to_owned()) && !env.contains(&"VERSION=v1".to_owned()));

        let archive = dir.path().join("ls.tar");
        store.save(&top, &archive).unwrap();
        let other = ImageStore::open(&dir.path().join("other")).unwrap();
        let imported = other.import_archive(&archive).unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].id, derived.id);
        assert_eq!(imported[0].tags, ["kubox.local/ls:v2"]);
    }
}
