//! Unpacking one image layer into a directory overlayfs can stack: the OCI
//! whiteout files become overlay whiteouts (0/0 character devices) and opaque
//! directories get the `trusted.overlay.opaque` attribute.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The reader's bytes, gunzipped if they are gzip.
pub fn decompressed(reader: impl Read + 'static) -> io::Result<Box<dyn Read>> {
    let mut buffered = BufReader::new(reader);
    let head = buffered.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    })
}

pub fn is_gzip(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 2];
    let n = File::open(path)?.read(&mut head)?;
    Ok(n == 2 && head == [0x1f, 0x8b])
}

pub fn unpack(blob: impl Read + 'static, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(decompressed(blob)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            entry.unpack_in(dir)?;
            continue;
        };
        if !name.starts_with(WHITEOUT_PREFIX) {
            entry.unpack_in(dir)?;
            continue;
        }
        // Whiteouts name paths inside the layer; refuse ones that climb out.
        if path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("whiteout {path:?} leaves the layer"),
            ));
        }
        let parent = dir.join(path.parent().unwrap_or(Path::new("")));
        fs::create_dir_all(&parent)?;
        if name == OPAQUE_MARKER {
            rustix::fs::setxattr(
                &parent,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )?;
        } else {
            let target = parent.join(&name[WHITEOUT_PREFIX.len()..]);
            let _ = fs::remove_dir_all(&target).or_else(|_| fs::remove_file(&target));
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn files_land_and_whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = layer(&[
            ("etc/motd", b"hi"),
            ("etc/.wh.passwd", b""),
            ("var/.wh..wh..opq", b""),
        ]);
        unpack(io::Cursor::new(bytes), dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("etc/motd")).unwrap(), b"hi");
        let wh = fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        let mut opaque = [0u8; 4];
        let n = rustix::fs::getxattr(
            dir.path().join("var"),
            "trusted.overlay.opaque",
            &mut opaque,
        )
        .unwrap();
        assert_eq!(&opaque[..n], b"y");
    }

    #[test]
    fn gzip_layers_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &layer(&[("a", b"1")])).unwrap();
        unpack(io::Cursor::new(gz.finish().unwrap()), dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"1");
    }
}
