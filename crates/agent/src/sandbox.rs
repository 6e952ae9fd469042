//! A pod's sandbox: the network, IPC and UTS namespaces its containers
//! share. The agent makes them itself, with no pause container: a
//! short-lived thread unshares them, sets the hostname, brings loopback up,
//! and bind-mounts each namespace onto a file, which keeps it alive after
//! the thread is gone and lets runtimes join it by path.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;
use rustix::thread::UnshareFlags;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Network,
    Ipc,
    Uts,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Network, Kind::Ipc, Kind::Uts];

    fn proc_name(self) -> &'static str {
        match self {
            Kind::Network => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn flag(self) -> UnshareFlags {
        match self {
            Kind::Network => UnshareFlags::NEWNET,
            Kind::Ipc => UnshareFlags::NEWIPC,
            Kind::Uts => UnshareFlags::NEWUTS,
        }
    }
}

/// Which of the pod's namespaces are the node's own (`hostNetwork`, `hostIPC`).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostShared {
    pub network: bool,
    pub ipc: bool,
}

impl HostShared {
    fn shares(self, kind: Kind) -> bool {
        match kind {
            // A pod on the host network has the node's hostname, as upstream.
            Kind::Network | Kind::Uts => self.network,
            Kind::Ipc => self.ipc,
        }
    }
}

/// The namespace files of one pod, under its directory.
#[derive(Clone, Debug)]
pub struct Sandbox {
    dir: PathBuf,
    host: HostShared,
}

impl Sandbox {
    pub fn new(pod_dir: &Path, host: HostShared) -> Self {
        Self {
            dir: pod_dir.join("ns"),
            host,
        }
    }

    /// The file a container joins for `kind`; `None` where it shares the node's.
    pub fn path(&self, kind: Kind) -> Option<PathBuf> {
        (!self.host.shares(kind)).then(|| self.dir.join(kind.proc_name()))
    }

    pub fn exists(&self) -> bool {
        self.dir.join("ready").exists()
    }

    /// Makes the namespaces; a no-op when they already exist.
    pub fn create(&self, hostname: &str) -> io::Result<()> {
        if self.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| !self.host.shares(*k))
            .collect();
        let targets: Vec<(Kind, PathBuf)> = kinds
            .iter()
            .map(|k| (*k, self.dir.join(k.proc_name())))
            .collect();
        let hostname = hostname.to_owned();
        std::thread::spawn(move || -> io::Result<()> {
            let flags = kinds
                .iter()
                .fold(UnshareFlags::empty(), |f, k| f | k.flag());
            // SAFETY: this thread is ours alone and ends right after; no
            // other code runs in the namespaces it moves into.
            unsafe { rustix::thread::unshare_unsafe(flags)? };
            if kinds.contains(&Kind::Uts) {
                rustix::system::sethostname(hostname.as_bytes())?;
            }
            if kinds.contains(&Kind::Network) {
                loopback_up()?;
            }
            for (kind, target) in &targets {
                std::fs::File::create(target)?;
                rustix::mount::mount_bind(
                    format!("/proc/thread-self/ns/{}", kind.proc_name()),
                    target,
                )?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        std::fs::File::create(self.dir.join("ready"))?;
        Ok(())
    }

    /// Releases the namespaces; what was never made is skipped.
    pub fn destroy(&self) -> io::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("ready"));
        for kind in Kind::ALL {
            let target = self.dir.join(kind.proc_name());
            match rustix::mount::unmount(&target, UnmountFlags::DETACH) {
                Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            match std::fs::remove_file(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Runs `f` in a short-lived thread that has joined `netns` (the node's
/// own when `None`), so sockets it opens live there; they stay in that
/// namespace when used from any other thread afterwards.
pub async fn in_netns<T: Send + 'static>(
    netns: Option<PathBuf>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            if let Some(ns) = netns {
                let file = std::fs::File::open(ns)?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
            }
            f()
        })();
        let _ = tx.send(result);
    });
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("the network namespace thread ended early")))
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq we own; the
    // socket is closed on every path.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut result = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if result == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(sock);
        if result < 0 { Err(err) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_ns(a: &Path, b: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    #[test]
    fn namespaces_are_made_kept_and_released() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(dir.path(), HostShared::default());
        sandbox.create("web-0").unwrap();
        let net = sandbox.path(Kind::Network).unwrap();
        assert!(
            !same_ns(&net, Path::new("/proc/self/ns/net")),
            "a new network namespace"
        );
        // The hostname was set inside the pod's UTS namespace, not the node's.
        let out = std::process::Command::new("nsenter")
            .arg(format!(
                "--uts={}",
                sandbox.path(Kind::Uts).unwrap().display()
            ))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web-0");
        sandbox.create("web-0").unwrap();
        sandbox.destroy().unwrap();
        assert!(!dir.path().join("ns").exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(dir.path().to_str().unwrap()),
            "nothing stays mounted"
        );
    }

    #[test]
    fn host_network_pods_share_the_nodes_network_and_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(
            dir.path(),
            HostShared {
                network: true,
                ipc: false,
            },
        );
        assert!(sandbox.path(Kind::Network).is_none());
        assert!(sandbox.path(Kind::Uts).is_none());
        assert!(sandbox.path(Kind::Ipc).is_some());
    }
}
