//! How the agent runs containers: an OCI runtime takes a bundle (rootfs and
//! config.json the agent prepared) and runs it. Pod namespaces are made by
//! the agent itself (`crate::sandbox`), so runtimes only see containers.
//!
//! Two runtimes: [`Embedded`], youki's libcontainer inside kubox, and
//! [`RuntimeCli`], a runc-compatible binary (runc, crun).

mod cli;
mod embedded;
mod exit;
mod helper;
mod wire;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

pub use cli::RuntimeCli;
pub use embedded::Embedded;
pub use exit::{ExitWatch, Exited, become_subreaper};
pub use helper::{HELPER_COMMAND, serve_helper};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} {action} {id}: {message}")]
    Failed {
        runtime: String,
        action: &'static str,
        id: String,
        message: String,
    },
    #[error("running {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ContainerState {
    pub status: Status,
    pub pid: Option<u32>,
}

/// What a container's standard streams are connected to.
pub struct Stdio {
    /// `None`: no input (/dev/null).
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// For a process with a terminal (`process.terminal` in config.json):
    /// where the runtime sends the terminal's master end. Its standard
    /// streams are then the terminal; `stdout`/`stderr` get the runtime's own.
    pub console_socket: Option<PathBuf>,
}

/// What a process started in a running container is connected to.
pub enum ExecStdio {
    /// Its standard input, output and error.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A new terminal, whose master end the runtime sends to this Unix
    /// socket (`crate::console`) before the process runs.
    Console(PathBuf),
}

/// A pipe whose ends are closed on exec: (read, write). Both block; the
/// agent makes its own end non-blocking where it reads or writes it.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io::Error::from)
}

/// Registers a descriptor with tokio's reactor.
fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and
    // unchanged until it is dropped.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(fd) }?)
}

#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// A short name for container IDs (`runc://...`) and error messages.
    fn name(&self) -> &str;
    /// Creates the container from its bundle, stopped before its process
    /// runs; returns the process's PID.
    async fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError>;
    /// Lets a created container's process run.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// `None` when the runtime does not know the container.
    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError>;
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;
    /// Starts `argv` in a running container, as the container's own user
    /// and in its working directory, and returns its PID once it runs. By
    /// then it is the agent's child (the agent is a subreaper), so its end
    /// is read with [`ExitWatch`].
    async fn exec_detached(
        &self,
        id: &str,
        argv: &[String],
        stdio: ExecStdio,
    ) -> Result<u32, RuntimeError>;
    /// Forgets a container, killing it first if it still runs.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;

    /// Runs a command in a running container (probes, hooks), returning its
    /// exit code and combined output. Dropping the future kills the command.
    async fn exec(&self, id: &str, argv: &[String]) -> Result<(i32, Vec<u8>), RuntimeError> {
        let io_failed = |e: io::Error| RuntimeError::Failed {
            runtime: self.name().to_owned(),
            action: "exec",
            id: id.to_owned(),
            message: e.to_string(),
        };
        let (read, write) = pipe().map_err(io_failed)?;
        let stdio = ExecStdio::Pipes {
            stdin: std::fs::File::open("/dev/null").map_err(io_failed)?.into(),
            stdout: write.try_clone().map_err(io_failed)?,
            stderr: write,
        };
        let pid = self.exec_detached(id, argv, stdio).await?;
        let watch = ExitWatch::new(pid).map_err(io_failed)?;
        let killer = watch.killer().map_err(io_failed)?;
        let mut output =
            tokio::net::unix::pipe::Receiver::from_owned_fd(read).map_err(io_failed)?;
        // The reaping runs on its own, so a command killed because this
        // future was dropped is still reaped.
        let run = tokio::spawn(async move {
            let mut text = Vec::new();
            let (exited, _) = tokio::join!(watch.wait(), output.read_to_end(&mut text));
            (exited.code, text)
        });
        let result = run.await.map_err(|e| io_failed(io::Error::other(e)));
        killer.disarm();
        result
    }
}
