//! What `kubectl exec` and `kubectl attach` exchange with the agent, apart
//! from the protocol that carries it: input (stdin, its end, terminal
//! resizes), output (stdout, stderr) and a final status. Two carriers:
//! WebSocket in Kubernetes' channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`: every binary message starts with its channel, 0
//! stdin, 1 stdout, 2 stderr, 3 the status, 4 resizes; v5 adds 255, the
//! client closing a channel) and SPDY/3.1 (one stream per channel, named by
//! its `streamtype` header; `v4` to `v2.channel.k8s.io`).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::spdy::{Incoming, Session, StreamWriter};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// WebSocket channel protocols, best first.
pub const WEBSOCKET_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// SPDY stream protocols, best first. v4 sends the status as JSON, v3 and
/// v2 as text and only on failure; v2 has no resize stream.
pub const SPDY_PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];

/// How long a SPDY client has to open its streams, as kubelet's default.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum Input {
    Stdin(Bytes),
    /// The client will send no more input.
    StdinClosed,
    Resize {
        width: u16,
        height: u16,
    },
}

#[derive(Clone, Debug)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The final status (a metav1.Status); nothing follows it.
    Status(Value),
}

/// One client's session. `input` ending means the client is gone; the
/// session ends with `Output::Status`, or without one when the client left.
pub struct Client {
    pub input: mpsc::Receiver<Input>,
    pub output: mpsc::Sender<Output>,
}

/// The streams a request asks for, from its query (`stdin=true` or `=1`...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Streams {
    pub fn from_query(query: &str) -> Self {
        let mut r = Streams::default();
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
        // A terminal merges stderr into its output, as kubelet does.
        if r.tty {
            r.stderr = false;
        }
        r
    }

    /// Kubelet's refusal of a request that asks for no stream at all.
    pub fn check(&self) -> Result<(), String> {
        if !self.stdin && !self.stdout && !self.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(())
    }
}

pub fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// A command's non-zero exit, as upstream's NonZeroExitCode status.
pub fn exited(code: i32, argv: &[String]) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// An internal error, worded as apimachinery's NewInternalError.
pub fn internal_error(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

fn resize_message(data: &[u8]) -> Option<Input> {
    let size: Value = serde_json::from_slice(data).ok()?;
    Some(Input::Resize {
        width: size["Width"].as_u64()?.try_into().ok()?,
        height: size["Height"].as_u64()?.try_into().ok()?,
    })
}

/// Serves a client over an upgraded WebSocket in the channel protocol;
/// `closable` is v5's close signal.
pub fn websocket<S>(ws: WebSocketStream<S>, closable: bool) -> Client
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut messages) = ws.split();
    let (in_tx, input) = mpsc::channel(16);
    let (output, mut out_rx) = mpsc::channel::<Output>(16);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let data = match message {
                Message::Binary(data) if !data.is_empty() => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let input = match (data[0], data.get(1)) {
                (STDIN, _) => Input::Stdin(data.slice(1..)),
                (CLOSE, Some(&STDIN)) if closable => Input::StdinClosed,
                (RESIZE, _) => match resize_message(&data[1..]) {
                    Some(r) => r,
                    None => continue,
                },
                _ => continue,
            };
            // Input nobody takes any more is dropped; the read goes on to see the close.
            let _ = in_tx.send(input).await;
        }
    });
    tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let (channel, data, last) = match out {
                Output::Stdout(b) => (STDOUT, b, false),
                Output::Stderr(b) => (STDERR, b, false),
                Output::Status(v) => (ERROR, Bytes::from(v.to_string()), true),
            };
            let mut message = Vec::with_capacity(data.len() + 1);
            message.push(channel);
            message.extend_from_slice(&data);
            if sink.send(Message::binary(message)).await.is_err() {
                break;
            }
            if last {
                break;
            }
        }
        // A close without a code reads as an error to client-go; 1000 is the end of the stream.
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
        // The client answers the close; one that does not is not waited for.
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    });
    Client { input, output }
}

/// The status on SPDY's error stream: JSON from v4 on, before that the
/// message of a failure only.
fn spdy_status(protocol: &str, status: &Value) -> Option<Bytes> {
    if protocol == SPDY_PROTOCOLS[0] {
        return Some(Bytes::from(status.to_string()));
    }
    (status["status"] != "Success").then(|| {
        Bytes::from(
            status["message"]
                .as_str()
                .unwrap_or("error executing command")
                .to_owned(),
        )
    })
}

/// Serves a client over a SPDY connection: waits for the streams `want`
/// implies (error, stdin, stdout, stderr, resize), then carries them.
/// `None` when the client did not open them in time.
pub async fn spdy(mut session: Session, protocol: &'static str, want: &Streams) -> Option<Client> {
    let resizable = want.tty && protocol != SPDY_PROTOCOLS[2];
    let expected = 1
        + usize::from(want.stdin)
        + usize::from(want.stdout)
        + usize::from(want.stderr)
        + usize::from(resizable);
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    let mut received = 0;
    while received < expected {
        let stream = tokio::select! {
            s = session.accept() => s?,
            _ = &mut deadline => {
                tracing::debug!("a SPDY client did not open its streams in time");
                session.close().await;
                return None;
            }
        };
        let slot = match stream.header("streamtype").unwrap_or_default() {
            "error" => &mut error,
            "stdin" => &mut stdin,
            "stdout" => &mut stdout,
            "stderr" => &mut stderr,
            "resize" => &mut resize,
            other => {
                tracing::debug!("unexpected SPDY stream type {other:?}");
                continue;
            }
        };
        stream.reply().await.ok()?;
        *slot = Some(stream);
        received += 1;
    }
    let (in_tx, input) = mpsc::channel(16);
    let (output, mut out_rx) = mpsc::channel::<Output>(16);
    if let Some(mut s) = stdin {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            while let Some(Incoming::Data(data)) = s.incoming.recv().await {
                if tx.send(Input::Stdin(data)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::StdinClosed).await;
        });
    }
    if let Some(mut s) = resize {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            // Resizes arrive as JSON objects one after another.
            let mut pending = Vec::new();
            while let Some(Incoming::Data(data)) = s.incoming.recv().await {
                pending.extend_from_slice(&data);
                let mut objects =
                    serde_json::Deserializer::from_slice(&pending).into_iter::<Value>();
                let mut used = 0;
                while let Some(Ok(v)) = objects.next() {
                    used = objects.byte_offset();
                    if let Some(r) = resize_message(v.to_string().as_bytes())
                        && tx.send(r).await.is_err()
                    {
                        return;
                    }
                }
                pending.drain(..used);
            }
        });
    }
    // The client is gone once its connection ends.
    let closed = session.closed();
    tokio::spawn(async move {
        closed.await;
        drop(in_tx);
    });
    let writers: Vec<StreamWriter> = [&stdout, &stderr]
        .into_iter()
        .flatten()
        .map(|s| s.writer())
        .collect();
    let (stdout, stderr) = (stdout.map(|s| s.writer()), stderr.map(|s| s.writer()));
    let error = error.map(|s| s.writer());
    tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let sent = match (out, &stdout, &stderr) {
                (Output::Stdout(b), Some(w), _) | (Output::Stderr(b), _, Some(w)) => {
                    w.write(b).await
                }
                (Output::Status(status), _, _) => {
                    for w in &writers {
                        let _ = w.finish().await;
                    }
                    if let (Some(w), Some(text)) = (&error, spdy_status(protocol, &status)) {
                        let _ = w.write(text).await;
                    }
                    if let Some(w) = &error {
                        let _ = w.finish().await;
                    }
                    break;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        session.close().await;
    });
    Some(Client { input, output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::frame::Frame;
    use crate::spdy::session::tests::Client as SpdyClient;

    #[test]
    fn queries_name_the_command_and_streams() {
        let r = Streams::from_query(
            "command=sh&command=-c&command=echo+hi&stdin=true&stdout=1&stderr=true&tty=true",
        );
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert!(r.stdin && r.stdout && r.tty);
        assert!(!r.stderr, "a terminal has no separate stderr");
        assert!(Streams::default().check().is_err());
    }

    #[test]
    fn statuses_read_as_upstreams() {
        assert_eq!(
            success().to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed = exited(3, &["sh".into()]);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(spdy_status("v3.channel.k8s.io", &success()), None);
        assert!(spdy_status("v2.channel.k8s.io", &failed).is_some());
    }

    #[tokio::test]
    async fn a_spdy_client_gets_output_and_the_status_then_the_end() {
        let (mut client, session) = SpdyClient::connect();
        let want = Streams {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let served = tokio::spawn(async move { spdy(session, SPDY_PROTOCOLS[0], &want).await });
        client.open(1, &[("streamtype", "error")]).await;
        client.open(3, &[("streamtype", "stdin")]).await;
        client.open(5, &[("streamtype", "stdout")]).await;
        let mut served = served.await.unwrap().expect("all streams opened");
        for _ in 0..3 {
            assert!(matches!(client.next().await, Some(Frame::SynReply { .. })));
        }
        client
            .send(Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"typed"),
            })
            .await;
        assert!(matches!(served.input.recv().await, Some(Input::Stdin(b)) if b == "typed"));
        assert!(matches!(
            served.input.recv().await,
            Some(Input::StdinClosed)
        ));
        served
            .output
            .send(Output::Stdout(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        served
            .output
            .send(Output::Status(exited(3, &[])))
            .await
            .unwrap();
        let mut frames = Vec::new();
        while let Some(f) = client.next().await {
            frames.push(f);
        }
        assert_eq!(
            frames[0],
            Frame::Data {
                stream: 5,
                fin: false,
                data: Bytes::from_static(b"hi")
            }
        );
        let status = frames.iter().find_map(|f| match f {
            Frame::Data {
                stream: 1, data, ..
            } if !data.is_empty() => serde_json::from_slice::<Value>(data).ok(),
            _ => None,
        });
        assert_eq!(status.unwrap()["reason"], "NonZeroExitCode");
        assert!(matches!(frames.last(), Some(Frame::GoAway { .. })));
    }
}
