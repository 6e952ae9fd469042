//! The connection upgrades of exec, attach and port-forward: a WebSocket
//! (`Upgrade: websocket`, subprotocols in Sec-WebSocket-Protocol) or
//! SPDY/3.1 (`Upgrade: SPDY/3.1`, subprotocols in X-Stream-Protocol-Version),
//! negotiated as kubelet does, the client's order first.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::server::{Body, text};

const STREAM_PROTOCOL: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS: &str = "x-accepted-stream-protocol-versions";

/// The connection an upgrade yields.
pub type Io = TokioIo<Upgraded>;

pub enum Transport {
    WebSocket { key: String, protocols: Vec<String> },
    Spdy { protocols: Vec<String> },
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn mentions(headers: &HeaderMap, name: impl hyper::header::AsHeaderName, word: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(word))
}

impl Transport {
    /// Which upgrade a request asks for; kubelet's refusal when none.
    pub fn of(req: &Request<Incoming>) -> Result<Self, Box<Response<Body>>> {
        let h = req.headers();
        if mentions(h, UPGRADE, "websocket") {
            let key = h
                .get(SEC_WEBSOCKET_KEY)
                .and_then(|k| k.to_str().ok())
                .ok_or_else(|| {
                    Box::new(text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"))
                })?;
            return Ok(Self::WebSocket {
                key: key.to_owned(),
                protocols: values(h, SEC_WEBSOCKET_PROTOCOL.as_str()),
            });
        }
        if mentions(h, UPGRADE, "SPDY/3.1") && mentions(h, CONNECTION, "upgrade") {
            return Ok(Self::Spdy {
                protocols: values(h, STREAM_PROTOCOL),
            });
        }
        Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        )))
    }
}

/// The first protocol the client offers that this side speaks.
pub fn negotiate(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o).copied())
}

/// Kubelet's answer when no offered SPDY protocol is spoken here.
pub fn unsupported_spdy(offered: &[String], supported: &[&'static str]) -> Response<Body> {
    let mut resp = text(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
        ),
    );
    for p in supported {
        resp.headers_mut()
            .append(ACCEPTED_PROTOCOLS, HeaderValue::from_static(p));
    }
    resp
}

pub fn unsupported_websocket(offered: &[String], supported: &[&'static str]) -> Response<Body> {
    text(
        StatusCode::BAD_REQUEST,
        format!("none of the requested protocols {offered:?} is supported; supports {supported:?}"),
    )
}

fn switching(upgrade: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static(upgrade));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

/// Answers a WebSocket upgrade with `protocol` and runs `serve` on the
/// connection once the client has it.
pub fn websocket<F, Fut>(
    mut req: Request<Incoming>,
    key: &str,
    protocol: &'static str,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(WebSocketStream<Io>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                serve(ws).await;
            }
            Err(e) => tracing::debug!("WebSocket upgrade: {e}"),
        }
    });
    let mut resp = switching("websocket");
    let h = resp.headers_mut();
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Answers a SPDY/3.1 upgrade with `protocol` and runs `serve` on the connection.
pub fn spdy<F, Fut>(mut req: Request<Incoming>, protocol: &'static str, serve: F) -> Response<Body>
where
    F: FnOnce(Io) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!("SPDY upgrade: {e}"),
        }
    });
    let mut resp = switching("SPDY/3.1");
    resp.headers_mut()
        .insert(STREAM_PROTOCOL, HeaderValue::from_static(protocol));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_order_decides() {
        let offered = vec![
            "v4.channel.k8s.io".to_owned(),
            "v3.channel.k8s.io".to_owned(),
        ];
        assert_eq!(
            negotiate(&offered, &["v3.channel.k8s.io", "v4.channel.k8s.io"]),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(negotiate(&offered, &["portforward.k8s.io"]), None);
    }
}
