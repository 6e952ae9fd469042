//! How the agent runs containers: an OCI runtime takes a bundle (rootfs and
//! config.json the agent prepared) and runs it. Pod namespaces are made by
//! the agent itself (`crate::sandbox`), so runtimes only see containers.

mod cli;
mod exit;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use cli::RuntimeCli;
pub use exit::{ExitWatch, Exited, become_subreaper};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Clone, Debug)]
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
    /// The command that starts `argv` in a running container and returns
    /// once it runs, writing its PID to `pid_file`; the process keeps the
    /// standard streams the caller connects. With a console socket it gets a
    /// terminal instead, whose master end the runtime sends to that socket.
    fn exec_command(
        &self,
        id: &str,
        argv: &[String],
        pid_file: &Path,
        console_socket: Option<&Path>,
    ) -> tokio::process::Command;
    /// Runs a command in a running container (probes, hooks), returning its
    /// exit code and combined output. Dropping the future ends the command.
    async fn exec(&self, id: &str, argv: &[String]) -> Result<(i32, Vec<u8>), RuntimeError>;
    /// Forgets a container, killing it first if it still runs.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;
}
