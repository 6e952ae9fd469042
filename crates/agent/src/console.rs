//! Terminals for `kubectl exec -it`: the runtime creates the pseudo-terminal
//! inside the container and sends its master end over a Unix socket (runc's
//! `--console-socket`); the agent reads and writes that end and resizes it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A terminal's master end, read and written without blocking a thread.
pub struct Terminal(tokio::io::unix::AsyncFd<OwnedFd>);

impl Terminal {
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&master)?;
        rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open
        // and unchanged until it is dropped.
        Ok(Self(unsafe { tokio::io::unix::AsyncFd::register(master) }?))
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        resize(self.0.get_ref(), width, height)
    }
}

/// A terminal's output as a byte stream.
pub struct TerminalReader(Arc<Terminal>);

impl TerminalReader {
    pub fn new(terminal: Arc<Terminal>) -> Self {
        Self(terminal)
    }
}

impl tokio::io::AsyncRead for TerminalReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut ready = std::task::ready!(self.0.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                // EIO: no program holds the terminal any more, its end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
