//! What the embedded runtime and its helper say to each other: one JSON
//! message per Unix SEQPACKET packet, with file descriptors passed alongside
//! (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ContainerState;

/// The most descriptors one message carries: a reply socket and three streams.
const MAX_FDS: usize = 4;
/// The largest message: an exec's command line is the only long part.
const MAX_MESSAGE: usize = 64 * 1024;

/// One runtime call, for the containers whose state is under `root`. The
/// reply socket travels first among the descriptors, then those named here.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Descriptors: standard output and error, then input when `stdin`.
    Create {
        root: PathBuf,
        id: String,
        bundle: PathBuf,
        stdin: bool,
        /// Where the container's terminal goes, for `process.terminal`.
        console: Option<PathBuf>,
    },
    Start {
        root: PathBuf,
        id: String,
    },
    State {
        root: PathBuf,
        id: String,
    },
    Kill {
        root: PathBuf,
        id: String,
        signal: i32,
    },
    /// Descriptors: standard input, output and error, unless on a console.
    Exec {
        root: PathBuf,
        id: String,
        argv: Vec<String>,
        console: Option<PathBuf>,
    },
    Delete {
        root: PathBuf,
        id: String,
    },
}

/// What comes back on a call's reply socket: `Forked` or `NotForked` from
/// the helper, and `Done` from the worker it forked, in either order.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// A worker runs the call; its pidfd is attached.
    Forked,
    NotForked(String),
    Done(Result<Answer, String>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Pid(u32),
    State(Option<ContainerState>),
    Nothing,
}

pub fn send(socket: BorrowedFd, message: &impl Serialize, fds: &[BorrowedFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::other("the runtime call is too long"));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// The next message and its descriptors; `None` once the other end is closed.
pub fn recv<T: DeserializeOwned>(socket: BorrowedFd) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(io::Error::other("a runtime message was cut short"));
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[..got.bytes]).map_err(io::Error::other)?;
    Ok(Some((message, fds)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    use super::*;

    #[test]
    fn messages_carry_their_descriptors_and_the_end_is_seen() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (read, write) = super::super::pipe().unwrap();
        let request = Request::Kill {
            root: "/r".into(),
            id: "c1".into(),
            signal: 15,
        };
        send(a.as_fd(), &request, &[write.as_fd()]).unwrap();
        drop(write);
        let (got, fds): (Request, _) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(got, Request::Kill { signal: 15, ref id, .. } if id == "c1"));
        // The descriptor passed is the pipe's writing end.
        rustix::io::write(&fds[0], b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&read, &mut byte).unwrap(), 1);
        drop(a);
        assert!(recv::<Reply>(b.as_fd()).unwrap().is_none());
    }
}
