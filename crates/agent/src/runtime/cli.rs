//! A runtime driven through the runc command line, which runc, crun and
//! youki all speak.

use std::path::{Path, PathBuf};
use std::process::Stdio as ProcessStdio;

use serde::Deserialize;
use tokio::process::Command;

use super::{ContainerRuntime, ContainerState, ExecStdio, RuntimeError, Status, Stdio};

pub struct RuntimeCli {
    name: String,
    program: PathBuf,
    /// Where the runtime keeps its own state (`--root`).
    root: PathBuf,
}

impl RuntimeCli {
    /// A runtime binary (a name on PATH or a path) keeping its state in a
    /// directory named for it under `runtimes`.
    pub fn new(program: impl Into<PathBuf>, runtimes: &Path) -> Self {
        let program = program.into();
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runc".into());
        Self {
            root: runtimes.join(&name),
            name,
            program,
        }
    }

    fn command(&self, id: &str) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(self.log_path(id))
            .arg("--log-format")
            .arg("json")
            .stdin(ProcessStdio::null());
        c
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.log"))
    }

    /// The runtime's own last error for a container, from its JSON log.
    fn last_error(&self, id: &str, fallback: &[u8]) -> String {
        let from_log = std::fs::read_to_string(self.log_path(id))
            .ok()
            .and_then(|log| {
                log.lines().rev().find_map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).ok()?;
                    (v["level"] == "error" || v["level"] == "fatal")
                        .then(|| v["msg"].as_str().unwrap_or_default().to_owned())
                })
            });
        from_log.unwrap_or_else(|| String::from_utf8_lossy(fallback).trim().to_owned())
    }

    async fn run(
        &self,
        action: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, RuntimeError> {
        let out = self
            .command(id)
            .args(args)
            .stdout(ProcessStdio::piped())
            .stderr(ProcessStdio::piped())
            .output()
            .await
            .map_err(|e| RuntimeError::Spawn(self.program.display().to_string(), e))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(action, id, &out.stderr))
        }
    }

    fn failed(&self, action: &'static str, id: &str, stderr: &[u8]) -> RuntimeError {
        RuntimeError::Failed {
            runtime: self.name.clone(),
            action,
            id: id.to_owned(),
            message: self.last_error(id, stderr),
        }
    }
}

#[derive(Deserialize)]
struct StateJson {
    status: String,
    pid: Option<u32>,
}

#[async_trait::async_trait]
impl ContainerRuntime for RuntimeCli {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let pid_file = bundle.join("pid");
        std::fs::create_dir_all(&self.root)
            .map_err(|e| RuntimeError::Spawn(self.root.display().to_string(), e))?;
        let _ = std::fs::remove_file(self.log_path(id));
        // runc passes its own standard output and error through to the
        // container's process, so they are the container's log pipes.
        let mut create = self.command(id);
        create
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(socket) = &stdio.console_socket {
            create.arg("--console-socket").arg(socket);
        }
        if let Some(stdin) = stdio.stdin {
            create.stdin(ProcessStdio::from(stdin));
        }
        let status = create
            .arg(id)
            .stdout(ProcessStdio::from(stdio.stdout))
            .stderr(ProcessStdio::from(stdio.stderr))
            .status()
            .await
            .map_err(|e| RuntimeError::Spawn(self.program.display().to_string(), e))?;
        if !status.success() {
            return Err(self.failed("create", id, b"exited with an error"));
        }
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| self.failed("create", id, b"wrote no pid file"))
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("start", id, &["start", id]).await.map(drop)
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        if !self.root.join(id).exists() {
            return Ok(None);
        }
        let out = self.run("state", id, &["state", id]).await?;
        let state: StateJson = serde_json::from_slice(&out).map_err(|e| RuntimeError::Failed {
            runtime: self.name.clone(),
            action: "state",
            id: id.to_owned(),
            message: e.to_string(),
        })?;
        let status = match state.status.as_str() {
            "created" | "creating" => Status::Created,
            "running" => Status::Running,
            "paused" | "pausing" => Status::Paused,
            _ => Status::Stopped,
        };
        Ok(Some(ContainerState {
            status,
            pid: state.pid.filter(|p| *p != 0),
        }))
    }

    async fn exec_detached(
        &self,
        id: &str,
        argv: &[String],
        stdio: ExecStdio,
    ) -> Result<u32, RuntimeError> {
        let pid_file = self
            .root
            .join(format!("{id}.exec-{}.pid", uuid::Uuid::new_v4().simple()));
        let mut c = self.command(id);
        c.args(["exec", "--detach", "--pid-file"]).arg(&pid_file);
        // Detached without a terminal, runc hands its own standard streams
        // to the process.
        match stdio {
            ExecStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => c.stdin(stdin).stdout(stdout).stderr(stderr),
            ExecStdio::Console(socket) => c
                // As containerd gives a command run with a terminal.
                .args(["--tty", "--env", "TERM=xterm", "--console-socket"])
                .arg(socket)
                .stdout(ProcessStdio::null())
                .stderr(ProcessStdio::null()),
        };
        let status = c
            .arg(id)
            .args(argv)
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| RuntimeError::Spawn(self.program.display().to_string(), e))?;
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let _ = std::fs::remove_file(&pid_file);
        match pid {
            Some(pid) if status.success() => Ok(pid),
            _ => Err(self.failed("exec", id, b"could not start the process")),
        }
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.run("kill", id, &["kill", id, &signal.to_string()])
            .await
            .map(drop)
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        self.run("delete", id, &["delete", "--force", id]).await?;
        let _ = std::fs::remove_file(self.log_path(id));
        Ok(())
    }
}
