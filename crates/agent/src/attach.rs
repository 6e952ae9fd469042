//! `kubectl attach`: clients join a running container's main process. Its
//! output reaches them as the log writer reads it (a fan-out beside the
//! log file; a client that falls behind misses what it could not take, as
//! the log keeps everything); its input, when the container has `stdin:
//! true`, is a named pipe the agent writes, or with `tty: true` the
//! terminal the runtime made for it.
//!
//! The pipe outlives the agent when the container holds it open for
//! writing too; with `stdinOnce` it must not (its end is the end of the
//! first attach), so such a container sees its input end if the agent
//! restarts. A terminal's master end lives in the agent only: an agent
//! restart hangs it up.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, broadcast};

use crate::console::Terminal;
use crate::remote::{self, Client, Input, Output, Streams};

/// How many output chunks wait for an attached client that is behind.
const BACKLOG: usize = 1024;

enum StdinWriter {
    Pipe(pipe::Sender),
    Terminal(Arc<Terminal>),
}

/// A running container's standard streams, as attach clients see them.
pub struct ContainerIo {
    /// `None` once the container's output has ended.
    output: std::sync::Mutex<Option<broadcast::Sender<Output>>>,
    stdin: Mutex<Option<StdinWriter>>,
    stdin_once: bool,
    terminal: std::sync::Mutex<Option<Arc<Terminal>>>,
}

impl ContainerIo {
    pub fn new(stdin_once: bool) -> Arc<Self> {
        Arc::new(Self {
            output: std::sync::Mutex::new(Some(broadcast::channel(BACKLOG).0)),
            stdin: Mutex::new(None),
            stdin_once,
            terminal: std::sync::Mutex::new(None),
        })
    }

    /// Hands what the container wrote to the clients attached now.
    pub fn publish(&self, out: Output) {
        if let Some(tx) = self
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && tx.receiver_count() > 0
        {
            let _ = tx.send(out);
        }
    }

    /// The container's output has ended: attached clients are done.
    pub fn output_ended(&self) {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Output>> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(broadcast::Sender::subscribe)
    }

    pub async fn set_stdin_pipe(&self, writer: pipe::Sender) {
        *self.stdin.lock().await = Some(StdinWriter::Pipe(writer));
    }

    pub async fn set_terminal(&self, terminal: Arc<Terminal>) {
        *self.terminal.lock().unwrap_or_else(|e| e.into_inner()) = Some(terminal.clone());
        *self.stdin.lock().await = Some(StdinWriter::Terminal(terminal));
    }

    fn terminal(&self) -> Option<Arc<Terminal>> {
        self.terminal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn write_stdin(&self, data: &[u8]) {
        let mut stdin = self.stdin.lock().await;
        let failed = match stdin.as_mut() {
            Some(StdinWriter::Pipe(p)) => p.write_all(data).await.is_err(),
            Some(StdinWriter::Terminal(t)) => t.write_all(data).await.is_err(),
            None => false,
        };
        if failed {
            *stdin = None;
        }
    }

    /// With `stdinOnce`, the first attach's end is the end of the
    /// container's input. A terminal stays: closing it would hang it up.
    async fn client_left(&self) {
        let mut stdin = self.stdin.lock().await;
        if self.stdin_once && matches!(*stdin, Some(StdinWriter::Pipe(_))) {
            *stdin = None;
        }
    }
}

/// The container's end of its stdin pipe and the agent's: the container
/// holds it for writing too unless its input is to end with the first attach.
pub fn stdin_pipe(path: &Path, once: bool) -> io::Result<(OwnedFd, pipe::Sender)> {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    // Opened read-write first, so neither open waits for the other side.
    let writer = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)?;
    let container = std::fs::OpenOptions::new()
        .read(true)
        .write(!once)
        .open(path)?;
    Ok((container.into(), writer))
}

/// Reopens the agent's end of a container's stdin pipe after a restart.
pub fn reopen_stdin(path: &Path) -> io::Result<pipe::Sender> {
    pipe::OpenOptions::new().read_write(true).open_sender(path)
}

/// Serves an attached client until the container's output ends or the
/// client leaves.
pub async fn run(io: Arc<ContainerIo>, want: Streams, mut client: Client) {
    let Some(mut output) = io.subscribe() else {
        let _ = client.output.send(Output::Status(remote::success())).await;
        return;
    };
    let mut client_open = true;
    loop {
        tokio::select! {
            out = output.recv() => match out {
                Ok(Output::Stdout(b)) if want.stdout => {
                    if client.output.send(Output::Stdout(b)).await.is_err() {
                        break;
                    }
                }
                Ok(Output::Stderr(b)) if want.stderr => {
                    if client.output.send(Output::Stderr(b)).await.is_err() {
                        break;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                // The container's output has ended: so has the attach.
                Err(broadcast::error::RecvError::Closed) => break,
            },
            input = client.input.recv(), if client_open => match input {
                Some(Input::Stdin(data)) if want.stdin => io.write_stdin(&data).await,
                Some(Input::StdinClosed) if want.stdin => {
                    io.client_left().await;
                }
                Some(Input::Resize { width, height }) => {
                    if let Some(t) = io.terminal() {
                        let _ = t.resize(width, height);
                    }
                }
                Some(_) => {}
                None => {
                    client_open = false;
                    if want.stdin {
                        io.client_left().await;
                    }
                    break;
                }
            },
        }
    }
    if client_open {
        let _ = client.output.send(Output::Status(remote::success())).await;
    }
}

/// What the output fan-out of a stream looks like to clients.
pub fn wrap(stream: &str) -> fn(Bytes) -> Output {
    if stream == "stderr" {
        Output::Stderr
    } else {
        Output::Stdout
    }
}
