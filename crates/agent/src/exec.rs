//! `kubectl exec` on the node: a WebSocket session in Kubernetes' channel
//! protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary
//! message starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the
//! final status, 4 terminal resizes; v5 adds 255, the client closing a
//! channel (its stdin). The command runs through the runtime's exec.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::Shared;
use crate::console::{self, ConsoleSocket};
use crate::runtime::{self, ExecStdio, ExitWatch};
use crate::server::{Body, text};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The channel protocols offered, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What an exec request asks for, from its query.
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    pub fn from_query(query: &str) -> Self {
        let mut r = ExecRequest {
            command: vec![],
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let on = v == "1" || v == "true";
            match k.as_ref() {
                "command" => r.command.push(v.into_owned()),
                "input" | "stdin" => r.stdin = on,
                "output" | "stdout" => r.stdout = on,
                "error" | "stderr" => r.stderr = on,
                "tty" => r.tty = on,
                _ => {}
            }
        }
        r
    }
}

/// The final status on the error channel, as upstream writes it.
fn status(code: Option<i32>, argv: &[String]) -> Vec<u8> {
    let body = match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => {
            json!({"metadata": {}, "status": "Failure", "message": "the command could not be run in the container"})
        }
    };
    let mut out = vec![ERROR];
    out.extend(body.to_string().into_bytes());
    out
}

/// Answers the WebSocket upgrade and runs the session in the background.
pub fn upgrade(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    container_id: String,
) -> Response<Body> {
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "none of the requested protocols {offered:?} is supported; supports {PROTOCOLS:?}"
            ),
        );
    };
    let Some(key) = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade is required");
    };
    let request = ExecRequest::from_query(req.uri().query().unwrap_or_default());
    let closable = *protocol == PROTOCOLS[0];
    let shared = shared.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(&shared, ws, &container_id, request, closable).await;
            }
            Err(e) => tracing::debug!("exec upgrade: {e}"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Forwards one output stream to the client, prefixed with its channel.
async fn pump(mut from: impl AsyncRead + Unpin, channel: u8, to: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf[0] = channel;
                if to.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn session<S>(
    shared: &Shared,
    ws: WebSocketStream<S>,
    id: &str,
    req: ExecRequest,
    closable: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A close without a code reads as an error to client-go; 1000 is the end of the stream.
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    });
    // The runtime returns once the process runs; it is then the agent's
    // child (the agent is a subreaper) and watched.
    let console = if req.tty {
        // Socket paths are limited to 107 bytes: the state directory may be deeper.
        let path =
            std::env::temp_dir().join(format!("kubox-exec-{}.sock", uuid::Uuid::new_v4().simple()));
        match ConsoleSocket::bind(&path) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!("exec in {id}: a console socket: {e}");
                return finish(out_tx, writer, status(None, &req.command)).await;
            }
        }
    } else {
        None
    };
    let mut input: Option<Box<dyn AsyncWrite + Unpin + Send>> = None;
    let mut pumps = Vec::new();
    let stdio = match &console {
        Some(socket) => ExecStdio::Console(socket.path().to_owned()),
        None => match pipes(req.stdin) {
            Ok((stdio, stdin, stdout, stderr)) => {
                input = stdin.map(|s| Box::new(s) as _);
                pumps.push(tokio::spawn(pump(stdout, STDOUT, out_tx.clone())));
                pumps.push(tokio::spawn(pump(stderr, STDERR, out_tx.clone())));
                stdio
            }
            Err(e) => {
                tracing::warn!("exec in {id}: pipes: {e}");
                return finish(out_tx, writer, status(None, &req.command)).await;
            }
        },
    };
    let pid = match shared.runtime.exec_detached(id, &req.command, stdio).await {
        Ok(pid) => pid,
        Err(e) => {
            tracing::warn!("exec in {id}: {e}");
            return finish(out_tx, writer, status(None, &req.command)).await;
        }
    };
    // With a terminal, its master end carries input and output both ways.
    let mut terminal: Option<OwnedFd> = None;
    if let Some(socket) = &console {
        // The runtime sent the terminal before the process ran.
        let master = tokio::time::timeout(std::time::Duration::from_secs(5), socket.receive())
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the runtime sent no terminal")));
        let dups = master.and_then(|fd| Ok((fd.try_clone()?, fd.try_clone()?, fd)));
        let (reader, writer_fd, control) = match dups {
            Ok(fds) => fds,
            Err(e) => {
                tracing::warn!("exec in {id}: the terminal: {e}");
                return finish(out_tx, writer, status(None, &req.command)).await;
            }
        };
        pumps.push(tokio::spawn(pump(
            tokio::fs::File::from_std(reader.into()),
            STDOUT,
            out_tx.clone(),
        )));
        if req.stdin {
            input = Some(Box::new(tokio::fs::File::from_std(writer_fd.into())));
        }
        terminal = Some(control);
    }
    let Ok(watch) = ExitWatch::new(pid) else {
        return finish(out_tx, writer, status(None, &req.command)).await;
    };
    let exited = watch.wait();
    tokio::pin!(exited);
    let outputs = futures::future::join_all(pumps);
    tokio::pin!(outputs);
    let mut client_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            message = incoming.next(), if client_open => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match (data[0], data.get(1)) {
                    (STDIN, _) => {
                        if let Some(w) = input.as_mut()
                            && (w.write_all(&data[1..]).await.is_err() || w.flush().await.is_err())
                        {
                            input = None;
                        }
                    }
                    (CLOSE, Some(&STDIN)) if closable => input = None,
                    (RESIZE, _) => {
                        let size: serde_json::Value = serde_json::from_slice(&data[1..]).unwrap_or_default();
                        if let (Some(fd), Some(w), Some(h)) = (&terminal, size["Width"].as_u64(), size["Height"].as_u64()) {
                            let _ = console::resize(fd, w as u16, h as u16);
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client is gone: its command goes too.
                    client_open = false;
                    input = None;
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
                Some(Ok(_)) => {}
            },
            done = &mut exited, if code.is_none() => {
                code = Some(done.code);
                if terminal.is_some() {
                    // A terminal stays open while anything holds it: take
                    // what the command wrote last, then stop reading.
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), &mut outputs).await;
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
    if client_open {
        finish(out_tx, writer, status(code, &req.command)).await;
    }
}

/// The exec's standard streams, and the agent's ends of them: stdin's (when
/// asked for; the process reads /dev/null otherwise), stdout's and stderr's.
fn pipes(
    stdin: bool,
) -> std::io::Result<(
    ExecStdio,
    Option<pipe::Sender>,
    pipe::Receiver,
    pipe::Receiver,
)> {
    let (stdin, input) = if stdin {
        let (read, write) = runtime::pipe()?;
        (read, Some(pipe::Sender::from_owned_fd(write)?))
    } else {
        (std::fs::File::open("/dev/null")?.into(), None)
    };
    let (out_read, out_write) = runtime::pipe()?;
    let (err_read, err_write) = runtime::pipe()?;
    let stdio = ExecStdio::Pipes {
        stdin,
        stdout: out_write,
        stderr: err_write,
    };
    Ok((
        stdio,
        input,
        pipe::Receiver::from_owned_fd(out_read)?,
        pipe::Receiver::from_owned_fd(err_read)?,
    ))
}

/// Sends the final status and waits until everything queued is written.
async fn finish(out: mpsc::Sender<Message>, writer: tokio::task::JoinHandle<()>, status: Vec<u8>) {
    let _ = out.send(Message::binary(status)).await;
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_the_command_and_streams() {
        let r = ExecRequest::from_query(
            "command=sh&command=-c&command=echo+hi&stdin=true&stdout=true&tty=false",
        );
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert!(r.stdin && r.stdout && !r.stderr && !r.tty);
    }

    #[test]
    fn exit_codes_become_upstream_statuses() {
        let ok = status(Some(0), &[]);
        assert_eq!(ok[0], ERROR);
        assert_eq!(&ok[1..], br#"{"metadata":{},"status":"Success"}"#);
        let failed: serde_json::Value =
            serde_json::from_slice(&status(Some(3), &["sh".into()])[1..]).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
