//! Test images built on the spot, since tests reach no outside registry:
//! an OCI image layout tarball holding Debian's static busybox and a link
//! for each of its applets.

use std::path::Path;

use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("a short path");
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = header(path, data.len() as u64, mode, tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).expect("appending to an in-memory tar");
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(path, 0, mode, tar::EntryType::Directory);
    h.set_cksum();
    b.append(&h, std::io::empty())
        .expect("appending to an in-memory tar");
}

/// The one layer: busybox, its applets, and a minimal /etc.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("Debian's busybox-static at /bin/busybox");
    let applets = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("listing busybox applets");
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "root/", "var/", "home/"] {
        add_dir(&mut b, dir, 0o755);
    }
    add_dir(&mut b, "tmp/", 0o1777);
    add_file(&mut b, "bin/busybox", &busybox, 0o755);
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet == "busybox" {
            continue;
        }
        let mut h = header(&format!("bin/{applet}"), 0, 0o777, tar::EntryType::Symlink);
        h.set_link_name("busybox").expect("a short link");
        h.set_cksum();
        b.append(&h, std::io::empty())
            .expect("appending to an in-memory tar");
    }
    add_file(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        0o644,
    );
    add_file(&mut b, "etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644);
    b.into_inner().expect("finishing an in-memory tar")
}

/// Writes an OCI image layout tarball of busybox named `reference`
/// (for example `docker.io/library/busybox:latest`) to `path`.
pub fn write_busybox_archive(path: &Path, reference: &str) {
    let layer = busybox_layer();
    let layer_digest = digest(&layer);
    let config = serde_json::json!({
        "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": reference},
        }],
    })
    .to_string()
    .into_bytes();
    let mut b = tar::Builder::new(Vec::new());
    add_file(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    );
    add_file(&mut b, "index.json", &index, 0o644);
    add_dir(&mut b, "blobs/", 0o755);
    add_dir(&mut b, "blobs/sha256/", 0o755);
    for blob in [&layer, &config, &manifest] {
        let name = format!(
            "blobs/sha256/{}",
            digest(blob).trim_start_matches("sha256:")
        );
        add_file(&mut b, &name, blob, 0o644);
    }
    std::fs::write(path, b.into_inner().expect("finishing an in-memory tar"))
        .expect("writing the image archive");
}
