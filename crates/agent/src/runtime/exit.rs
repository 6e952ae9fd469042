//! Learning when and how a container's process ends. The agent is a child
//! subreaper, so a container's first process, orphaned when the runtime's
//! `create` exits, becomes the agent's child and its exit status can be read
//! through a pidfd. A container adopted after an agent restart is not the
//! agent's child: its end is still seen, but not its status.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;

/// How a container's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    /// The exit code, or 128 + the signal that killed it, as shells and upstream report it.
    pub code: i32,
    /// False when the process was not the agent's child, so its status was lost.
    pub known: bool,
}

/// Makes orphaned descendants (container processes) children of this process.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

impl Exited {
    /// A container whose end the agent could not see; upstream reports it as killed.
    pub const UNKNOWN: Exited = Exited {
        code: 137,
        known: false,
    };
}

pub struct ExitWatch {
    pidfd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    pub fn new(pid: u32) -> io::Result<Self> {
        let pid = Pid::from_raw(pid as i32)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK)?;
        let pidfd = super::async_fd(fd)?;
        Ok(Self { pidfd })
    }

    /// Something that kills the process when dropped, unless disarmed first.
    pub fn killer(&self) -> io::Result<Killer> {
        Ok(Killer(Some(self.pidfd.get_ref().try_clone()?)))
    }

    /// Waits for the process to end and reaps it when it is this process's child.
    pub async fn wait(self) -> Exited {
        // A pidfd turns readable once its process has exited.
        if let Ok(mut ready) = self.pidfd.readable().await {
            ready.retain_ready();
        }
        let status = rustix::process::waitid(
            WaitId::PidFd(self.pidfd.get_ref().as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
        match status {
            Ok(Some(s)) => Exited {
                code: s
                    .exit_status()
                    .or_else(|| s.terminating_signal().map(|sig| 128 + sig))
                    .unwrap_or(255),
                known: true,
            },
            _ => Exited::UNKNOWN,
        }
    }
}

/// Kills a process through its pidfd, which cannot name another process
/// that reused the PID, when dropped while still armed.
pub struct Killer(Option<OwnedFd>);

impl Killer {
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(fd) = &self.0 {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The watch reaps the children through their pidfds, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn exit_codes_and_signals_of_children_are_read() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let exited = ExitWatch::new(child.id()).unwrap().wait().await;
        assert_eq!(
            exited,
            Exited {
                code: 3,
                known: true
            }
        );

        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let watch = ExitWatch::new(child.id()).unwrap();
        rustix::process::kill_process(
            Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        assert_eq!(
            watch.wait().await,
            Exited {
                code: 137,
                known: true
            }
        );
    }
}
