//! `kubectl port-forward` on the node: every forwarded connection is a TCP
//! connection the agent opens to localhost inside the pod's network
//! namespace (from a short-lived thread that joined it). Two protocols:
//! SPDY (`portforward.k8s.io`, plain or tunnelled in a WebSocket), where
//! each connection is a pair of streams (data and error) named by a
//! `requestid` header, so one forward carries any number of connections;
//! and WebSocket `v4.channel.k8s.io`, one connection per requested port,
//! channel 2n its data and 2n+1 its errors, each first carrying the port.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::sandbox::in_netns;
use crate::spdy::{Incoming, Session, Stream, StreamWriter};

pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
pub const WEBSOCKET_PROTOCOL: &str = "v4.channel.k8s.io";

const BUFFER: usize = 64 * 1024;

/// The pod connections go to.
#[derive(Clone, Debug)]
pub struct Target {
    /// What errors call the pod: its UID, which is its sandbox's name here.
    pub sandbox: String,
    /// Its network namespace; `None` on the node's network.
    pub netns: Option<PathBuf>,
}

/// Go's words for a failed dial, which upstream's messages quote.
fn dial_error(family: &str, addr: SocketAddr, e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    let text = match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    };
    format!("dial {family} {addr}: connect: {text}")
}

impl Target {
    /// Connects to `port` on the pod's loopback, IPv4 first, then IPv6, as
    /// containerd does; upstream's message when neither answers.
    pub async fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let attempt = in_netns(self.netns.clone(), move || {
            Ok(match std::net::TcpStream::connect(v4) {
                Ok(s) => Ok(s),
                Err(e4) => std::net::TcpStream::connect(v6).map_err(|e6| (e4, e6)),
            })
        })
        .await;
        let namespace = self
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "host".into());
        let stream = match attempt {
            Ok(Ok(s)) => s,
            Ok(Err((e4, e6))) => {
                return Err(format!(
                    "failed to execute portforward in network namespace \"{namespace}\": failed to connect to localhost:{port} inside namespace \"{}\", IPv4: {} IPv6 {} ",
                    self.sandbox,
                    dial_error("tcp4", v4, &e4),
                    dial_error("tcp6", v6, &e6)
                ));
            }
            Err(e) => {
                return Err(format!(
                    "failed to execute portforward in network namespace \"{namespace}\": {e}"
                ));
            }
        };
        stream
            .set_nonblocking(true)
            .and_then(|_| TcpStream::from_std(stream))
            .map_err(|e| e.to_string())
    }

    fn failure(&self, port: u16, message: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid : {message}",
            self.sandbox
        )
    }
}

/// The ports of a WebSocket forward, from its query (`ports=80,443&ports=8080`).
pub fn ports_from_query(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "ports" {
            continue;
        }
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            match p.parse::<u16>() {
                Ok(0) => return Err(format!("port \"{v}\" must be > 0")),
                Ok(port) => ports.push(port),
                Err(e) => return Err(format!("unable to parse \"{v}\" as a port: {e}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Copies the pod's bytes to the client until the pod closes its side.
async fn pod_to_client<R: AsyncRead + Unpin>(mut pod: R, to: &StreamWriter) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match pod.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = to.finish().await;
}

/// One forwarded connection over SPDY: its data and error streams.
async fn forward_pair(target: Target, port: u16, mut data: Stream, error: Stream) {
    let out = data.writer();
    let errors = error.writer();
    match target.connect(port).await {
        Err(message) => {
            let text = target.failure(port, &message);
            tracing::debug!("{text}");
            let _ = errors.write(Bytes::from(text)).await;
        }
        Ok(conn) => {
            let (pod_read, mut pod_write) = conn.into_split();
            let upstream = async {
                loop {
                    match data.incoming.recv().await {
                        Some(Incoming::Data(bytes)) => {
                            if pod_write.write_all(&bytes).await.is_err() {
                                return false;
                            }
                        }
                        // The client is done writing: the pod sees its end of input.
                        None => {
                            let _ = pod_write.shutdown().await;
                            return true;
                        }
                        Some(Incoming::Reset) => return false,
                    }
                }
            };
            let downstream = pod_to_client(pod_read, &out);
            tokio::pin!(upstream, downstream);
            // A reset (or a pod that stops reading) ends the connection at once;
            // a half-close lets the pod's answer finish.
            tokio::select! {
                finished = &mut upstream => if finished { downstream.await },
                _ = &mut downstream => {}
            }
        }
    }
    let _ = out.finish().await;
    let _ = errors.finish().await;
}

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

/// The request a stream belongs to: its `requestid`, or for clients too old
/// to send one, upstream's guess from the stream ID.
fn request_id(stream: &Stream, kind: &str) -> String {
    match stream.header("requestid") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ if kind == "data" => stream.id.saturating_sub(2).to_string(),
        _ => stream.id.to_string(),
    }
}

/// Checks a stream's headers as kubelet does; the port, or why not.
fn stream_port(stream: &Stream) -> Result<(u16, &str), String> {
    let port = stream.header("port").unwrap_or_default();
    if port.is_empty() {
        return Err("\"port\" header is required".into());
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("port \"{port}\" must be > 0")),
        Ok(p) => p,
        Err(e) => return Err(format!("unable to parse \"{port}\" as a port: {e}")),
    };
    match stream.header("streamtype").unwrap_or_default() {
        "" => Err("\"streamType\" header is required".into()),
        kind @ ("data" | "error") => Ok((port, kind)),
        other => Err(format!("invalid stream type \"{other}\"")),
    }
}

/// Serves a SPDY port-forward connection until the client ends it.
pub async fn spdy(mut session: Session, target: Target) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    while let Some(stream) = session.accept().await {
        let (port, kind) = match stream_port(&stream) {
            Ok((port, kind)) => (port, kind.to_owned()),
            Err(e) => {
                tracing::debug!("port-forward stream refused: {e}");
                let _ = stream.writer().reset().await;
                continue;
            }
        };
        if stream.reply().await.is_err() {
            break;
        }
        let id = request_id(&stream, &kind);
        let pair = pairs.entry(id.clone()).or_default();
        let slot = if kind == "data" {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let message =
                format!("error processing stream for request {id}: {kind} stream already assigned");
            if let Some(e) = &pair.error {
                let _ = e.writer().write(Bytes::from(message)).await;
            }
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let pair = pairs.remove(&id).expect("just seen");
            let (data, error) = (pair.data.expect("both"), pair.error.expect("both"));
            forwards.spawn(forward_pair(target.clone(), port, data, error));
        }
        // Reap finished forwards as we go, so a long session does not collect them.
        while forwards.try_join_next().is_some() {}
    }
    // The client is gone: its connections go too (dropping the set aborts them).
    drop(forwards);
    session.close().await;
}

/// Serves a WebSocket port-forward: one connection per port, for the
/// lifetime of the WebSocket.
pub async fn websocket<S>(ws: WebSocketStream<S>, ports: Vec<u16>, target: Target)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut messages) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    });
    let message = |channel: usize, data: &[u8]| {
        let mut m = Vec::with_capacity(data.len() + 1);
        m.push(channel as u8);
        m.extend_from_slice(data);
        Message::binary(m)
    };
    let mut inputs = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, error_ch) = (2 * i, 2 * i + 1);
        for ch in [data_ch, error_ch] {
            let _ = out_tx.send(message(ch, &port.to_le_bytes())).await;
        }
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(64);
        inputs.push(in_tx);
        let (out, target) = (out_tx.clone(), target.clone());
        forwards.spawn(async move {
            let conn = match target.connect(port).await {
                Ok(c) => c,
                Err(e) => {
                    let text = target.failure(port, &e);
                    let _ = out.send(message(error_ch, text.as_bytes())).await;
                    return;
                }
            };
            let (mut pod_read, mut pod_write) = conn.into_split();
            let upstream = async {
                while let Some(bytes) = in_rx.recv().await {
                    if pod_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            };
            let downstream = async {
                let mut buf = vec![0u8; BUFFER];
                while let Ok(n) = pod_read.read(&mut buf).await {
                    if n == 0 || out.send(message(data_ch, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = upstream => {}
                _ = downstream => {}
            }
        });
    }
    drop(out_tx);
    let reader = async {
        while let Some(Ok(m)) = messages.next().await {
            match m {
                Message::Binary(data) if !data.is_empty() => {
                    let channel = data[0] as usize;
                    if channel.is_multiple_of(2)
                        && let Some(tx) = inputs.get(channel / 2)
                    {
                        let _ = tx.send(data.slice(1..)).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // Ends when every forwarded connection has, or when the client leaves.
    tokio::select! {
        _ = reader => {}
        _ = async { while forwards.join_next().await.is_some() {} } => {}
    }
    drop(forwards);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(
            ports_from_query("ports=80,443&ports=8080"),
            Ok(vec![80, 443, 8080])
        );
        assert!(ports_from_query("").unwrap_err().contains("is required"));
        assert!(
            ports_from_query("ports=0")
                .unwrap_err()
                .contains("must be > 0")
        );
        assert!(ports_from_query("ports=http").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_reads_as_upstreams_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target {
            sandbox: "abc".into(),
            netns: None,
        };
        let e = target.connect(port).await.unwrap_err();
        assert!(
            e.starts_with(&format!(
                "failed to execute portforward in network namespace \"host\": failed to connect to localhost:{port} inside namespace \"abc\", IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 [::1]:{port}: connect: "
            )),
            "{e}"
        );
    }
}
