//! `kubectl exec` on the node: the command runs through the runtime's exec,
//! detached (`--detach --pid-file`), so its process becomes the agent's
//! child (the agent is a subreaper) and its exit status is read through a
//! pidfd. A client that leaves gets its process killed. With a terminal
//! the runtime hands its master end over a console socket.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use crate::Shared;
use crate::console::{ConsoleSocket, Terminal, TerminalReader};
use crate::remote::{self, Client, Input, Output, Streams};
use crate::runtime::ExitWatch;

/// Where a client's input goes.
enum InputSink {
    Pipe(ChildStdin),
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
    let pid_file = scratch.with_extension("pid");
    let console = if req.tty {
        match ConsoleSocket::bind(&scratch.with_extension("sock")) {
            Ok(socket) => Some(socket),
            Err(e) => return Some(not_run(argv, &format!("a console socket: {e}"))),
        }
    } else {
        None
    };
    let mut cmd = shared.runtime.exec_command(
        id,
        argv,
        &pid_file,
        console.as_ref().map(ConsoleSocket::path),
    );
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    match &console {
        None => cmd
            .stdin(piped(req.stdin))
            .stdout(piped(req.stdout))
            .stderr(piped(req.stderr)),
        Some(_) => cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Some(not_run(argv, &e.to_string())),
    };
    let mut input = child.stdin.take().map(InputSink::Pipe);
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(
            out,
            Output::Stdout,
            client.output.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            err,
            Output::Stderr,
            client.output.clone(),
        )));
    }
    let mut terminal = None;
    if let Some(socket) = &console {
        // runc sends the terminal before it exits: wait for both, the
        // terminal first, so a quick exit cannot hide a terminal already sent.
        let master = tokio::select! {
            biased;
            fd = socket.receive() => fd,
            status = child.wait() => match status {
                Ok(s) if s.success() => tokio::time::timeout(Duration::from_secs(5), socket.receive())
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("the runtime sent no terminal"))),
                other => Err(std::io::Error::other(format!("the runtime ended first: {other:?}"))),
            },
        };
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
    let started = child.wait().await.is_ok_and(|s| s.success());
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let _ = std::fs::remove_file(&pid_file);
    let (Some(pid), true) = (pid, started) else {
        for p in pumps {
            let _ = p.await;
        }
        return Some(not_run(argv, "the runtime could not start the command"));
    };
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
