//! A pod's volumes as host directories its containers bind-mount (an
//! emptyDir in memory a tmpfs).
//! ConfigMap and Secret volumes are written as upstream's atomic writer
//! does: files live in a timestamped directory that `..data` points at, each
//! key is a link through `..data`, and an update swaps the one link.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::Api;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// What upstream reports in the FailedMount event.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
    SetUp { volume: String, message: String },
}

/// A file of a volume: its path inside the volume, contents and mode.
pub(crate) type File = (String, Vec<u8>, Option<i32>);

pub(crate) fn setup_err(volume: &str, message: impl ToString) -> MountError {
    MountError::SetUp {
        volume: volume.to_owned(),
        message: message.to_string(),
    }
}

/// The two objects pods read configuration from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    pub fn noun(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "ConfigMap",
            Source::Secret => "Secret",
        }
    }

    /// Upstream's words for a missing object.
    pub fn not_found(self, name: &str) -> String {
        format!("{} \"{name}\" not found", self.noun())
    }
}

/// The keys and values of a ConfigMap (data and binaryData) or Secret;
/// `None` when it does not exist.
pub async fn key_values(
    client: &kube::Client,
    ns: &str,
    source: Source,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    Ok(match source {
        Source::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|obj| {
                let text = obj
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()));
                let binary = obj
                    .binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0));
                text.chain(binary).collect()
            }),
        Source::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|obj| {
                obj.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
    })
}

/// Makes every volume of the pod and returns where each one is on the host.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, MountError> {
    let mut paths = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let path = prepare_one(client, pod, v, pod_dir).await?;
        paths.insert(v.name.clone(), path);
    }
    Ok(paths)
}

/// An emptyDir with `medium: Memory` is a tmpfs, as kubelet makes it: its
/// pages are charged to the memory of the containers that write them.
/// Mounted once; an agent adopting the pod finds it mounted already.
fn mount_tmpfs(
    dir: &Path,
    size_limit: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    if std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev() {
        return Ok(());
    }
    let size = size_limit
        .and_then(|q| kubox_client::quantity::parse(&q.0))
        .map(|bytes| format!("size={}", bytes as u64))
        .unwrap_or_default();
    let data = std::ffi::CString::new(size).map_err(io::Error::other)?;
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(io::Error::from)
}

/// Unmounts the tmpfs volumes of a pod whose worker is gone.
pub fn unmount_memory_volumes(pod_dir: &Path) {
    let dirs = std::fs::read_dir(pod_dir.join("volumes").join("empty-dir"));
    for d in dirs.into_iter().flatten().flatten() {
        let _ = rustix::mount::unmount(d.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

async fn prepare_one(
    client: &kube::Client,
    pod: &Pod,
    v: &Volume,
    pod_dir: &Path,
) -> Result<PathBuf, MountError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir_for = |plugin: &str| pod_dir.join("volumes").join(plugin).join(&v.name);
    if let Some(empty) = &v.empty_dir {
        let dir = dir_for("empty-dir");
        std::fs::create_dir_all(&dir).map_err(|e| setup_err(&v.name, e))?;
        if empty.medium.as_deref() == Some("Memory") {
            mount_tmpfs(&dir, empty.size_limit.as_ref()).map_err(|e| setup_err(&v.name, e))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| setup_err(&v.name, e))?;
        return Ok(dir);
    }
    if let Some(host) = &v.host_path {
        let path = PathBuf::from(&host.path);
        match host.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&path).map_err(|e| setup_err(&v.name, e))?
            }
            "FileOrCreate" => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| setup_err(&v.name, e))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| setup_err(&v.name, e))?;
            }
            "Directory" if !path.is_dir() => {
                return Err(setup_err(
                    &v.name,
                    format!(
                        "hostPath type check failed: {} is not a directory",
                        host.path
                    ),
                ));
            }
            "File" if !path.is_file() => {
                return Err(setup_err(
                    &v.name,
                    format!("hostPath type check failed: {} is not a file", host.path),
                ));
            }
            _ => {}
        }
        return Ok(path);
    }
    if let Some(claim) = &v.persistent_volume_claim {
        return claimed_path(client, ns, &claim.claim_name)
            .await
            .map_err(|e| setup_err(&v.name, e));
    }
    let from_object = match (&v.config_map, &v.secret) {
        (Some(cm), _) => Some((
            Source::ConfigMap,
            cm.name.clone(),
            cm.optional,
            cm.items.as_deref(),
            cm.default_mode,
        )),
        (None, Some(s)) => Some((
            Source::Secret,
            s.secret_name.clone().unwrap_or_default(),
            s.optional,
            s.items.as_deref(),
            s.default_mode,
        )),
        (None, None) => None,
    };
    if let Some((source, name, optional, items, mode)) = from_object {
        let data = match key_values(client, ns, source, &name).await {
            Ok(Some(data)) => data,
            Ok(None) if optional.unwrap_or(false) => BTreeMap::new(),
            Ok(None) => return Err(setup_err(&v.name, source.not_found(&name))),
            Err(e) => return Err(setup_err(&v.name, e)),
        };
        let dir = dir_for(source.noun());
        write_atomic(&dir, &select(&data, items, &v.name)?, mode.unwrap_or(0o644))
            .map_err(|e| setup_err(&v.name, e))?;
        return Ok(dir);
    }
    if let Some(projected) = &v.projected {
        let dir = dir_for("projected");
        let files = crate::projected::files(client, pod, &v.name, projected, &dir).await?;
        write_atomic(&dir, &files, projected.default_mode.unwrap_or(0o644))
            .map_err(|e| setup_err(&v.name, e))?;
        return Ok(dir);
    }
    Err(setup_err(
        &v.name,
        "this volume type is not supported by kubox yet",
    ))
}

/// The host directory of the PersistentVolume a claim is bound to; only
/// hostPath volumes (what the local-path provisioner makes) are mounted.
async fn claimed_path(client: &kube::Client, ns: &str, name: &str) -> Result<PathBuf, String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
    let phase = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if phase != "Bound" || volume.is_empty() {
        return Err(format!(
            "PVC {ns}/{name} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume:?})"
        ));
    }
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes.get(&volume).await.map_err(|e| e.to_string())?;
    let Some(host) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) else {
        return Err(format!(
            "persistent volume {volume:?} is of a type kubox cannot mount yet"
        ));
    };
    let path = PathBuf::from(&host.path);
    std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// The files a volume shows: every key, or just `items` under their paths.
pub(crate) fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    volume: &str,
) -> Result<Vec<File>, MountError> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                let value = data.get(&item.key).ok_or_else(|| {
                    setup_err(
                        volume,
                        format!("configmap references non-existent config key: {}", item.key),
                    )
                })?;
                Ok((item.path.clone(), value.clone(), item.mode))
            })
            .collect(),
    }
}

/// Writes a new generation of files and switches `..data` to it in one rename.
fn write_atomic(dir: &Path, files: &[File], default_mode: i32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    // Unchanged content keeps the current generation, so readers see no churn.
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current = dir.join(current);
        let same = files
            .iter()
            .all(|(p, v, _)| std::fs::read(current.join(p)).is_ok_and(|c| c == *v))
            && count_files(&current) == files.len();
        if same {
            return Ok(());
        }
    }
    let generation = format!("..{}", k8s_openapi::jiff::Timestamp::now().as_nanosecond());
    let gen_dir = dir.join(&generation);
    for (path, value, mode) in files {
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid path {path:?}"),
            ));
        }
        let target = gen_dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap_or(&gen_dir))?;
        std::fs::write(&target, value)?;
        std::fs::set_permissions(
            &target,
            std::fs::Permissions::from_mode(mode.unwrap_or(default_mode) as u32 & 0o777),
        )?;
    }
    std::fs::create_dir_all(&gen_dir)?;
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&generation, &tmp_link)?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link)?;
    for (path, _, _) in files {
        let top = path.split('/').next().unwrap_or(path);
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    // Keys gone from the object lose their links.
    let keep: Vec<&str> = files
        .iter()
        .map(|(p, _, _)| p.split('/').next().unwrap_or(p))
        .collect();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_swap_the_data_link_and_drop_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_atomic(
            d,
            &[
                ("a".into(), b"1".to_vec(), None),
                ("b".into(), b"2".to_vec(), None),
            ],
            0o644,
        )
        .unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"1");
        let first = std::fs::read_link(d.join("..data")).unwrap();
        write_atomic(
            d,
            &[
                ("a".into(), b"1".to_vec(), None),
                ("b".into(), b"2".to_vec(), None),
            ],
            0o644,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(d.join("..data")).unwrap(),
            first,
            "no change, no new generation"
        );
        write_atomic(d, &[("a".into(), b"9".to_vec(), Some(0o400))], 0o644).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"9");
        assert!(std::fs::symlink_metadata(d.join("b")).is_err());
        assert!(!d.join(first).exists(), "the old generation is gone");
        let mode = std::fs::metadata(d.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
    }
}
