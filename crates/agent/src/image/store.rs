//! The content-addressed image store: blobs by digest as in an OCI image
//! layout, each layer unpacked once into its own directory and shared by
//! every container that uses it (as an overlayfs lower directory).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layer;
use super::reference::Reference;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("image {0:?} not found")]
    NotFound(String),
}

type Result<T, E = ImageError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// One image the node has: its identity and where its pieces are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The config blob's digest, which upstream runtimes call the image ID.
    pub id: String,
    pub manifest_digest: String,
    /// Full references (`docker.io/library/busybox:latest`) naming it.
    pub tags: Vec<String>,
    /// `name@sha256:...`: how the image was pinned, and the imageID kubelet reports.
    pub repo_digests: Vec<String>,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// Bytes of all blobs, as `kubectl get node -o yaml` shows under images.
    pub size: u64,
}

/// What `remove` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Only this tag went; the image has others.
    Untagged(String),
    /// The image went, with the blobs no other image shares.
    Deleted(String),
}

pub struct ImageStore {
    root: PathBuf,
    /// The index as last read from `images.json`, with that file's
    /// modification time: `kubox image` changes it from other processes.
    index: Mutex<Index>,
}

/// Image records by ID, and the modification time of the file they came from.
type Index = (BTreeMap<String, ImageRecord>, Option<std::time::SystemTime>);

/// An exclusive lock on the index across processes, held while it is changed.
struct IndexLock {
    _file: File,
}

fn hex_of(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::Invalid(format!("unsupported digest {digest:?}")))
}

/// When `bytes` is a multi-platform index, the digest of its manifest for
/// this machine (linux and its architecture), or why there is none.
pub(crate) fn platform_manifest(bytes: &[u8]) -> Option<std::result::Result<String, String>> {
    let index = serde_json::from_slice::<ImageIndex>(bytes).ok()?;
    if !index.manifests().iter().any(|m| m.platform().is_some()) {
        return None;
    }
    let arch = platform_architecture();
    let chosen = index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| p.architecture().to_string() == arch && p.os().to_string() == "linux")
    });
    Some(chosen.map(|m| m.digest().to_string()).ok_or_else(|| {
        format!("no matching manifest for linux/{arch} in the manifest list entries")
    }))
}

/// The architecture name images use for this machine.
pub fn platform_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(dir))
                .map_err(io_err(format!("creating {}", root.join(dir).display())))?;
        }
        // Leftovers of an import or unpack cut short; nothing refers to them.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
        let store = Self {
            root: root.to_owned(),
            index: Mutex::new((BTreeMap::new(), None)),
        };
        drop(store.index()?);
        Ok(store)
    }

    /// The current index, read again when another process changed it.
    fn index(&self) -> Result<std::sync::MutexGuard<'_, Index>> {
        let path = self.root.join("images.json");
        let mut guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified != guard.1 || modified.is_none() {
            guard.0 = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(io_err("reading images.json")(e)),
            };
            guard.1 = modified;
        }
        Ok(guard)
    }

    fn lock(&self) -> Result<IndexLock> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("images.lock"))
            .map_err(io_err("locking the image index"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("locking the image index")(e.into()))?;
        Ok(IndexLock { _file: f })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// A fresh path in the store's scratch directory (emptied on open).
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{}", uuid::Uuid::new_v4().simple()))
    }

    fn save_index(&self, index: &BTreeMap<String, ImageRecord>) -> Result<()> {
        let tmp = self.temp_path("images.json");
        let bytes = serde_json::to_vec_pretty(index).expect("image records serialise");
        let mut f = File::create(&tmp).map_err(io_err("writing the image index"))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(io_err("writing the image index"))?;
        fs::rename(&tmp, self.root.join("images.json")).map_err(io_err("writing the image index"))
    }

    /// Streams a blob in, checking it against `expected` when given, and
    /// returns its digest. A blob already present is kept as it is.
    pub fn put_blob(&self, mut reader: impl Read, expected: Option<&str>) -> Result<String> {
        let tmp = self.temp_path("blob");
        let mut file = File::create(&tmp).map_err(io_err("creating a blob"))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(io_err("reading a blob"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(io_err("writing a blob"))?;
        }
        file.sync_all().map_err(io_err("writing a blob"))?;
        let digest = format!("sha256:{:x}", hasher.finalize());
        if let Some(expected) = expected
            && expected != digest
        {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::DigestMismatch {
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        fs::rename(&tmp, self.blob_path(&digest)?).map_err(io_err("storing a blob"))?;
        Ok(digest)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        fs::read(self.blob_path(digest)?).map_err(io_err(format!("reading blob {digest}")))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// The directory holding a layer's files, unpacking it on first use.
    pub fn layer_dir(&self, digest: &str) -> Result<PathBuf> {
        let dir = self.root.join("layers").join(hex_of(digest)?);
        if dir.exists() {
            return Ok(dir);
        }
        let tmp = self.temp_path("layer");
        let blob = File::open(self.blob_path(digest)?)
            .map_err(io_err(format!("opening layer {digest}")))?;
        layer::unpack(blob, &tmp).map_err(io_err(format!("unpacking layer {digest}")))?;
        match fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another container unpacked the same layer meanwhile.
            Err(_) if dir.exists() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => Err(io_err("storing an unpacked layer")(e)),
        }
    }

    /// Records the image a stored manifest describes under `names`, making
    /// sure every blob it needs is present and its layers are unpacked.
    /// `index_digest` is the multi-platform index it was chosen from, which
    /// also pins it.
    pub fn commit(
        &self,
        manifest_digest: &str,
        names: &[Reference],
        index_digest: Option<&str>,
    ) -> Result<ImageRecord> {
        let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| ImageError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
        let config = manifest.config().digest().to_string();
        if !self.has_blob(&config) {
            return Err(ImageError::Invalid(format!(
                "config blob {config} is missing"
            )));
        }
        let mut size = manifest.config().size();
        let mut layers = Vec::new();
        for l in manifest.layers() {
            let digest = l.digest().to_string();
            self.layer_dir(&digest)?;
            size += l.size();
            layers.push(digest);
        }
        let _lock = self.lock()?;
        let mut guard = self.index()?;
        let index = &mut guard.0;
        let mut record = index.remove(&config).unwrap_or_else(|| ImageRecord {
            id: config.clone(),
            manifest_digest: manifest_digest.to_owned(),
            tags: vec![],
            repo_digests: vec![],
            layers,
            size,
        });
        for name in names {
            if let Some(tag) = &name.tag {
                let full = format!("{}:{tag}", name.name());
                // A tag names one image: moving it leaves the old image untagged.
                for other in index.values_mut() {
                    other.tags.retain(|t| *t != full);
                }
                if !record.tags.contains(&full) {
                    record.tags.push(full);
                }
            }
            for digest in std::iter::once(manifest_digest).chain(index_digest) {
                let pinned = format!("{}@{digest}", name.name());
                if !record.repo_digests.contains(&pinned) {
                    record.repo_digests.push(pinned);
                }
            }
        }
        index.insert(config, record.clone());
        self.save_index(index)?;
        guard.1 = fs::metadata(self.root.join("images.json"))
            .and_then(|m| m.modified())
            .ok();
        Ok(record)
    }

    /// The stored image a reference names: by digest when pinned, else by tag.
    pub fn resolve(&self, reference: &Reference) -> Option<ImageRecord> {
        let guard = self.index().ok()?;
        let index = &guard.0;
        let found = match &reference.digest {
            Some(digest) => {
                let pinned = format!("{}@{digest}", reference.name());
                index.values().find(|r| r.repo_digests.contains(&pinned))
            }
            None => index
                .values()
                .find(|r| r.tags.contains(&reference.to_string())),
        };
        found.cloned()
    }

    pub fn config(&self, record: &ImageRecord) -> Result<ImageConfiguration> {
        serde_json::from_slice(&self.read_blob(&record.id)?)
            .map_err(|e| ImageError::Invalid(format!("image config {}: {e}", record.id)))
    }

    pub fn layer_dirs(&self, record: &ImageRecord) -> Result<Vec<PathBuf>> {
        record.layers.iter().map(|l| self.layer_dir(l)).collect()
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.index()
            .map(|g| g.0.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets an image by ID (a unique prefix will do), or a tag of it: an
    /// image with other tags only loses that one, as `docker rmi` does. Blobs
    /// and layers no other image uses are dropped.
    pub fn remove(&self, what: &str) -> Result<Removal> {
        let _lock = self.lock()?;
        let mut guard = self.index()?;
        let index = &mut guard.0;
        let by_ref = Reference::parse(what).ok().map(|r| r.to_string());
        let matches: Vec<String> = index
            .values()
            .filter(|r| {
                by_ref.as_ref().is_some_and(|full| r.tags.contains(full))
                    || r.id
                        .trim_start_matches("sha256:")
                        .starts_with(what.trim_start_matches("sha256:"))
            })
            .map(|r| r.id.clone())
            .collect();
        let [id] = matches.as_slice() else {
            return Err(ImageError::NotFound(what.to_owned()));
        };
        if let Some(tag) = &by_ref
            && let Some(record) = index.get_mut(id)
            && record.tags.contains(tag)
            && record.tags.len() > 1
        {
            record.tags.retain(|t| t != tag);
            let name = tag.rsplit_once(':').map_or(tag.as_str(), |(n, _)| n);
            record
                .repo_digests
                .retain(|d| !d.starts_with(&format!("{name}@")));
            self.save_index(index)?;
            return Ok(Removal::Untagged(tag.clone()));
        }
        let removed = index.remove(id).expect("matched above");
        self.save_index(index)?;
        let still_used = |digest: &String| {
            index.values().any(|r| {
                r.id == *digest || r.manifest_digest == *digest || r.layers.contains(digest)
            })
        };
        for digest in [&removed.id, &removed.manifest_digest]
            .into_iter()
            .chain(&removed.layers)
        {
            if still_used(digest) {
                continue;
            }
            if let Ok(p) = self.blob_path(digest) {
                let _ = fs::remove_file(p);
            }
            if let Ok(hex) = hex_of(digest) {
                let _ = fs::remove_dir_all(self.root.join("layers").join(hex));
            }
        }
        Ok(Removal::Deleted(removed.id))
    }

    /// Imports every image in an OCI image layout or docker-archive tarball.
    pub fn import_archive(&self, archive: &Path) -> Result<Vec<ImageRecord>> {
        let dir = self.temp_path("import");
        let file = File::open(archive).map_err(io_err(format!("opening {}", archive.display())))?;
        let result = layer::decompressed(file)
            .and_then(|r| tar::Archive::new(r).unpack(&dir))
            .map_err(io_err(format!("reading {}", archive.display())))
            .and_then(|_| self.import_dir(&dir));
        let _ = fs::remove_dir_all(&dir);
        result
    }

    fn import_dir(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        if dir.join("index.json").exists() {
            self.import_oci_layout(dir)
        } else if dir.join("manifest.json").exists() {
            self.import_docker_archive(dir)
        } else {
            Err(ImageError::Invalid(
                "not an image archive: neither index.json (OCI layout) nor manifest.json (docker save) found".into(),
            ))
        }
    }

    fn copy_blob_from(&self, dir: &Path, digest: &str) -> Result<()> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let path = dir.join("blobs/sha256").join(hex_of(digest)?);
        let f = File::open(&path).map_err(io_err(format!("archive blob {digest}")))?;
        self.put_blob(f, Some(digest)).map(drop)
    }

    fn import_oci_layout(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        let read_json = |digest: &str| -> Result<Vec<u8>> {
            self.copy_blob_from(dir, digest)?;
            self.read_blob(digest)
        };
        let index: ImageIndex = serde_json::from_slice(
            &fs::read(dir.join("index.json")).map_err(io_err("reading index.json"))?,
        )
        .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
        let mut records = Vec::new();
        for desc in index.manifests() {
            let annotations = desc.annotations().clone().unwrap_or_default();
            let names: Vec<Reference> = [
                "io.containerd.image.name",
                "org.opencontainers.image.ref.name",
            ]
            .iter()
            .filter_map(|k| annotations.get(*k))
            .filter_map(|n| Reference::parse(n).ok())
            .take(1)
            .collect();
            let mut digest = desc.digest().to_string();
            let outer = digest.clone();
            let mut bytes = read_json(&digest)?;
            // A multi-platform image: pick this machine's manifest.
            if let Some(chosen) = platform_manifest(&bytes) {
                let chosen = chosen.map_err(ImageError::Invalid)?;
                digest = chosen;
                bytes = read_json(&digest)?;
            }
            let manifest: ImageManifest = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Invalid(format!("manifest {digest}: {e}")))?;
            self.copy_blob_from(dir, manifest.config().digest().as_ref())?;
            for l in manifest.layers() {
                self.copy_blob_from(dir, l.digest().as_ref())?;
            }
            let index_digest = (outer != digest).then_some(outer.as_str());
            records.push(self.commit(&digest, &names, index_digest)?);
        }
        Ok(records)
    }

    fn import_docker_archive(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(
            &fs::read(dir.join("manifest.json")).map_err(io_err("reading manifest.json"))?,
        )
        .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
        let mut records = Vec::new();
        for entry in entries {
            let put_file = |rel: &str| -> Result<(String, u64)> {
                let path = dir.join(rel);
                if !path.starts_with(dir) || rel.contains("..") {
                    return Err(ImageError::Invalid(format!(
                        "path {rel:?} leaves the archive"
                    )));
                }
                let size = fs::metadata(&path)
                    .map_err(io_err(format!("archive file {rel}")))?
                    .len();
                let f = File::open(&path).map_err(io_err(format!("archive file {rel}")))?;
                Ok((self.put_blob(f, None)?, size))
            };
            let (config, config_size) = put_file(&entry.config)?;
            let mut layers = Vec::new();
            for l in &entry.layers {
                let (digest, size) = put_file(l)?;
                let gz =
                    layer::is_gzip(&self.blob_path(&digest)?).map_err(io_err("reading a layer"))?;
                layers.push(serde_json::json!({
                    "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
                    "digest": digest,
                    "size": size,
                }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
                "layers": layers,
            });
            let digest = self.put_blob(manifest.to_string().as_bytes(), None)?;
            let names: Vec<Reference> = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| Reference::parse(t).ok())
                .collect();
            records.push(self.commit(&digest, &names, None)?);
        }
        Ok(records)
    }
}
