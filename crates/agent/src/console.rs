//! Terminals for `kubectl exec -it`: the runtime creates the pseudo-terminal
//! inside the container and sends its master end over a Unix socket (runc's
//! `--console-socket`); the agent reads and writes that end and resizes it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::net::UnixListener;

/// A socket waiting for a runtime to hand over a terminal; removed on drop.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        Ok(Self {
            path: path.to_owned(),
            listener: UnixListener::bind(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The terminal's master end, once the runtime sends it.
    pub async fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            // runc names the terminal in the message body; only the descriptor matters.
            let mut name = [0u8; 4096];
            let received = rustix::net::recvmsg(
                stream.as_fd(),
                &mut [io::IoSliceMut::new(&mut name)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            match received {
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(mut fds) = message
                    && let Some(fd) = fds.next()
                {
                    return Ok(fd);
                }
            }
            return Err(io::Error::other("the runtime sent no terminal"));
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets a terminal's size, as a resize message from kubectl asks.
pub fn resize(master: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let size = rustix::termios::Winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size).map_err(io::Error::from)
}
