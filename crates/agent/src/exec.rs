//! `kubectl exec` on the node: the runtime starts the command in the
//! container and returns once it runs, so its process is the agent's child
//! (the agent is a subreaper) and its exit status is read through a pidfd.
//! A client that leaves gets its process killed. With a terminal the
//! runtime hands its master end over a console socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::Shared;
use crate::console::{ConsoleSocket, Terminal, TerminalReader};
use crate::remote::{self, Client, Input, Output, Streams};
use crate::runtime::{self, ExecStdio, ExitWatch};

/// Where a client's input goes.
enum InputSink {
    Pipe(pipe::Sender),
    Terminal(Arc<Terminal>),
}

impl InputSink {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            InputSink::Pipe(p) => {
                p.write_all(data).await?;
                p.flush().await
            }
            InputSink::Terminal(t) => t.write_all(data).await,
        }
    }
}

/// Forwards one output of the process to the client.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    wrap: fn(Bytes) -> Output,
    to: mpsc::Sender<Output>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || to
                .send(wrap(Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
        {
            return;
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs `req.command` in container `id` for `client`, then sends the final status.
pub async fn run(shared: Arc<Shared>, id: String, req: Streams, mut client: Client) {
    if let Some(status) = execute(&shared, &id, &req, &mut client).await {
        let _ = client.output.send(Output::Status(status)).await;
    }
}

fn not_run(argv: &[String], why: &str) -> Value {
    remote::internal_error(&format!(
        "error executing command in container: failed to exec in container: {why}: [{}]",
        argv.join(" ")
    ))
}

/// The final status, or `None` when the client left first.
async fn execute(shared: &Shared, id: &str, req: &Streams, client: &mut Client) -> Option<Value> {
    let argv = &req.command;
    // Socket paths are limited to 107 bytes: the state directory may be deeper.
    let scratch =
        std::env::temp_dir().join(format!("kubox-exec-{}", uuid::Uuid::new_v4().simple()));
    let console = if req.tty {
        match ConsoleSocket::bind(&scratch.with_extension("sock")) {
            Ok(socket) => Some(socket),
            Err(e) => return Some(not_run(argv, &format!("a console socket: {e}"))),
        }
    } else {
        None
    };
    let mut input = None;
    let mut pumps = Vec::new();
    let stdio = match &console {
        Some(socket) => ExecStdio::Console(socket.path().to_owned()),
        None => match pipes(req) {
            Ok((stdio, stdin, stdout, stderr)) => {
                input = stdin.map(InputSink::Pipe);
                for (from, wrap) in [
                    (stdout, Output::Stdout as fn(Bytes) -> Output),
                    (stderr, Output::Stderr),
                ] {
                    if let Some(from) = from {
                        pumps.push(tokio::spawn(pump(from, wrap, client.output.clone())));
                    }
                }
                stdio
            }
            Err(e) => return Some(not_run(argv, &format!("pipes: {e}"))),
        },
    };
    let pid = match shared.runtime.exec_detached(id, argv, stdio).await {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!("exec in {id}: {e}");
            return Some(not_run(argv, "the runtime could not start the command"));
        }
    };
    let mut terminal = None;
    if let Some(socket) = &console {
        // The runtime sent the terminal before the process ran.
        let master = tokio::time::timeout(Duration::from_secs(5), socket.receive())
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the runtime sent no terminal")));
        let t = match master.and_then(Terminal::new) {
            Ok(t) => Arc::new(t),
            Err(e) => return Some(not_run(argv, &format!("the terminal: {e}"))),
        };
        pumps.push(tokio::spawn(pump(
            TerminalReader::new(t.clone()),
            Output::Stdout,
            client.output.clone(),
        )));
        if req.stdin {
            input = Some(InputSink::Terminal(t.clone()));
        }
        terminal = Some(t);
    }
    let Ok(watch) = ExitWatch::new(pid) else {
        return Some(not_run(argv, "the command's process is gone"));
    };
    let exited = watch.wait();
    tokio::pin!(exited);
    // A terminal is read until every program left it; one still held by a
    // background program is not read past the end of the exec.
    let _stop_reading = AbortOnDrop(pumps.iter().map(|p| p.abort_handle()).collect());
    let outputs = futures::future::join_all(pumps);
    tokio::pin!(outputs);
    let mut client_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            message = client.input.recv(), if client_open => match message {
                Some(Input::Stdin(data)) => {
                    if let Some(w) = input.as_mut() && w.write(&data).await.is_err() {
                        input = None;
                    }
                }
                Some(Input::StdinClosed) => input = None,
                Some(Input::Resize { width, height }) => {
                    if let Some(t) = &terminal {
                        let _ = t.resize(width, height);
                    }
                }
                None => {
                    // The client is gone: its command goes too.
                    client_open = false;
                    input = None;
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
            },
            done = &mut exited, if code.is_none() => {
                code = Some(done.code);
                if terminal.is_some() {
                    // A terminal stays open while anything holds it: take
                    // what the command wrote last, then stop reading.
                    let _ = tokio::time::timeout(Duration::from_millis(200), &mut outputs).await;
                    break;
                }
            }
            _ = &mut outputs, if terminal.is_none() => {
                if code.is_none() {
                    code = Some((&mut exited).await.code);
                }
                break;
            }
        }
    }
    if !client_open {
        return None;
    }
    Some(match code {
        Some(0) => remote::success(),
        Some(code) => remote::exited(code, argv),
        None => not_run(argv, "the command's end was not seen"),
    })
}

/// The exec's standard streams, and the agent's ends of those the client
/// asked for: stdin's to write, stdout's and stderr's to read. A stream not
/// asked for is /dev/null.
type Pipes = (
    ExecStdio,
    Option<pipe::Sender>,
    Option<pipe::Receiver>,
    Option<pipe::Receiver>,
);

fn pipes(req: &Streams) -> std::io::Result<Pipes> {
    let null = || -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into())
    };
    let (stdin, input) = if req.stdin {
        let (read, write) = runtime::pipe()?;
        (read, Some(pipe::Sender::from_owned_fd(write)?))
    } else {
        (null()?, None)
    };
    let output = |wanted: bool| -> std::io::Result<_> {
        if !wanted {
            return Ok((null()?, None));
        }
        let (read, write) = runtime::pipe()?;
        Ok((write, Some(pipe::Receiver::from_owned_fd(read)?)))
    };
    let (stdout, out) = output(req.stdout)?;
    let (stderr, err) = output(req.stderr)?;
    Ok((
        ExecStdio::Pipes {
            stdin,
            stdout,
            stderr,
        },
        input,
        out,
        err,
    ))
}
