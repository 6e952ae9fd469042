//! The embedded runtime: youki's libcontainer, built into kubox, so a node
//! needs no runtime binary. Its calls run in the helper process
//! (`super::helper`, which says why); this side sends them and waits.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ProcessStdio};
use std::sync::{Arc, Mutex};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::helper::{CONTROL_FD, HELPER_COMMAND};
use super::wire::{self, Answer, Reply, Request};
use super::{ContainerRuntime, ContainerState, ExecStdio, RuntimeError, Stdio, async_fd};

pub struct Embedded {
    /// libcontainer's state: one directory per container.
    root: PathBuf,
    helper: Mutex<Arc<Helper>>,
    /// libcontainer rewrites a container's state.json in place, so a call
    /// reading it while another writes can see it half written: calls that
    /// write it (create, start, kill, delete) take their container's lock
    /// alone, those that only read it (state, exec) share it.
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

/// A call's hold on its container's lock.
enum Hold {
    Read { _guard: OwnedRwLockReadGuard<()> },
    Write { _guard: OwnedRwLockWriteGuard<()> },
}

/// A call the helper took on: its reply socket, its worker's pidfd, and
/// the worker's outcome when it came before the pidfd.
type Handed = (AsyncFd<OwnedFd>, OwnedFd, Option<Result<Answer, String>>);

/// A running helper and the agent's end of its socket.
struct Helper {
    control: AsyncFd<OwnedFd>,
    process: Child,
}

impl Helper {
    /// Starts the helper: this very binary again, run as `kubox runtime-helper`.
    fn spawn() -> io::Result<Self> {
        let (ours, theirs) = socket_pair()?;
        let theirs_fd = theirs.as_raw_fd();
        let mut command = Command::new("/proc/self/exe");
        command
            .arg(HELPER_COMMAND)
            .stdin(ProcessStdio::null())
            .stdout(ProcessStdio::null());
        // SAFETY: between fork and exec the child only calls dup2 or fcntl,
        // both async-signal-safe, to put its end of the socket where the
        // helper looks for it, open across exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                let done = if theirs_fd == CONTROL_FD {
                    libc::fcntl(CONTROL_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(theirs_fd, CONTROL_FD)
                };
                if done < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command.spawn()?;
        drop(theirs);
        rustix::io::ioctl_fionbio(&ours, true)?;
        Ok(Self {
            control: async_fd(ours)?,
            process,
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // The helper ends once its socket closes, which follows this drop.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Connected SEQPACKET sockets, closed on exec; both ends block.
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

impl Embedded {
    /// The runtime's name, in container IDs (`embedded://...`) and `--runtime`.
    pub const NAME: &str = "embedded";

    /// Starts the helper; the runtime keeps its state in `runtimes/embedded`.
    pub fn start(runtimes: &Path) -> io::Result<Self> {
        let root = runtimes.join(Self::NAME);
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            helper: Mutex::new(Arc::new(Helper::spawn()?)),
            locks: Mutex::default(),
        })
    }

    async fn hold(&self, id: &str, writes: bool) -> Hold {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone();
        if writes {
            Hold::Write {
                _guard: lock.write_owned().await,
            }
        } else {
            Hold::Read {
                _guard: lock.read_owned().await,
            }
        }
    }

    /// Sends a call to the helper, starting a new helper once if this one
    /// has ended.
    async fn send(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let helper = self
            .helper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sent = helper
            .control
            .async_io(Interest::WRITABLE, |fd| {
                wire::send(fd.as_fd(), request, fds)
            })
            .await;
        match sent {
            // The helper never closes its end: it has ended.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::warn!("the embedded runtime's helper ended ({e}): starting it again");
                let fresh = {
                    let mut current = self.helper.lock().unwrap_or_else(|e| e.into_inner());
                    if Arc::ptr_eq(&current, &helper) {
                        *current = Arc::new(Helper::spawn()?);
                    }
                    current.clone()
                };
                fresh
                    .control
                    .async_io(Interest::WRITABLE, |fd| {
                        wire::send(fd.as_fd(), request, fds)
                    })
                    .await
            }
            other => other,
        }
    }

    /// Sends a call with a new reply socket and waits until the helper has
    /// forked its worker: the reply socket, the worker's pidfd and the
    /// worker's answer if it came first; `None` when the helper ended first.
    async fn hand_over(
        &self,
        request: &Request,
        fds: &[OwnedFd],
    ) -> Result<Option<Handed>, io::Error> {
        let (ours, theirs) = socket_pair()?;
        rustix::io::ioctl_fionbio(&ours, true)?;
        let mut passed = vec![theirs.as_fd()];
        passed.extend(fds.iter().map(|f| f.as_fd()));
        self.send(request, &passed).await?;
        drop(passed);
        drop(theirs);
        let replies = async_fd(ours)?;
        let mut done = None;
        loop {
            let reply = replies
                .async_io(Interest::READABLE, |fd| wire::recv::<Reply>(fd.as_fd()))
                .await?;
            match reply {
                Some((Reply::Forked, mut pidfd)) if !pidfd.is_empty() => {
                    return Ok(Some((replies, pidfd.remove(0), done)));
                }
                Some((Reply::NotForked(e), _)) => {
                    return Err(io::Error::other(format!("forking a worker: {e}")));
                }
                Some((Reply::Done(outcome), _)) => done = Some(outcome),
                Some((Reply::Forked, _)) => return Err(io::Error::other("no worker pidfd")),
                None => return Ok(None),
            }
        }
    }

    /// Runs one call and returns once its worker has ended.
    async fn call(
        &self,
        action: &'static str,
        id: &str,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<Answer, RuntimeError> {
        let failed = |message: String| RuntimeError::Failed {
            runtime: Self::NAME.to_owned(),
            action,
            id: id.to_owned(),
            message,
        };
        let io_failed = |e: io::Error| failed(format!("the runtime's helper: {e}"));
        let began = std::time::Instant::now();
        let writes = !matches!(request, Request::State { .. } | Request::Exec { .. });
        let deletes = matches!(request, Request::Delete { .. });
        let hold = self.hold(id, writes).await;
        // A helper that ends (killed) with the call still unread has taken
        // nothing on: the call goes to its successor.
        let mut handed = None;
        for _ in 0..2 {
            handed = self.hand_over(&request, &fds).await.map_err(io_failed)?;
            if handed.is_some() {
                break;
            }
        }
        let Some((replies, worker, mut done)) = handed else {
            return Err(failed("the runtime's helper ended".into()));
        };
        // A pidfd turns readable once its process has ended.
        let worker = async_fd(worker).map_err(io_failed)?;
        let _ = worker.readable().await.map_err(io_failed)?;
        if done.is_none()
            && let Ok(Some((Reply::Done(outcome), _))) = wire::recv(replies.get_ref().as_fd())
        {
            done = Some(outcome);
        }
        drop(hold);
        tracing::debug!(id, "{action} took {:?}", began.elapsed());
        if deletes && matches!(done, Some(Ok(_))) {
            self.locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        match done {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(failed(e)),
            None => Err(failed(
                "the runtime's worker ended without answering".into(),
            )),
        }
    }

    fn unexpected(&self, action: &'static str, id: &str, answer: Answer) -> RuntimeError {
        RuntimeError::Failed {
            runtime: Self::NAME.to_owned(),
            action,
            id: id.to_owned(),
            message: format!("unexpected answer {answer:?}"),
        }
    }

    async fn call_for_pid(
        &self,
        action: &'static str,
        id: &str,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<u32, RuntimeError> {
        match self.call(action, id, request, fds).await? {
            Answer::Pid(pid) => Ok(pid),
            other => Err(self.unexpected(action, id, other)),
        }
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for Embedded {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let request = Request::Create {
            root: self.root(),
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            stdin: stdio.stdin.is_some(),
            console: stdio.console_socket,
        };
        let fds = [stdio.stdout, stdio.stderr]
            .into_iter()
            .chain(stdio.stdin)
            .collect();
        self.call_for_pid("create", id, request, fds).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let request = Request::Start {
            root: self.root(),
            id: id.to_owned(),
        };
        self.call("start", id, request, vec![]).await.map(drop)
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let request = Request::State {
            root: self.root(),
            id: id.to_owned(),
        };
        match self.call("state", id, request, vec![]).await? {
            Answer::State(state) => Ok(state),
            other => Err(self.unexpected("state", id, other)),
        }
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let request = Request::Kill {
            root: self.root(),
            id: id.to_owned(),
            signal,
        };
        self.call("kill", id, request, vec![]).await.map(drop)
    }

    async fn exec_detached(
        &self,
        id: &str,
        argv: &[String],
        stdio: ExecStdio,
    ) -> Result<u32, RuntimeError> {
        let (console, fds) = match stdio {
            ExecStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => (None, vec![stdin, stdout, stderr]),
            ExecStdio::Console(socket) => (Some(socket), vec![]),
        };
        let request = Request::Exec {
            root: self.root(),
            id: id.to_owned(),
            argv: argv.to_vec(),
            console,
        };
        self.call_for_pid("exec", id, request, fds).await
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let request = Request::Delete {
            root: self.root(),
            id: id.to_owned(),
        };
        self.call("delete", id, request, vec![]).await.map(drop)
    }
}
