//! SPDY tunnelled through a WebSocket, as kubectl 1.31+ port-forwards
//! (`SPDY/3.1+portforward.k8s.io`): the payloads of binary messages, one
//! after another, are the bytes of a SPDY connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{Sink, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::io::StreamReader;

/// The byte stream the peer's messages carry, ending at its close.
pub fn reader<S>(
    messages: futures::stream::SplitStream<WebSocketStream<S>>,
) -> impl AsyncRead + Send + Unpin
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let payloads = messages
        .take_while(|m| std::future::ready(m.as_ref().is_ok_and(|m| !m.is_close())))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(data)) => Some(Ok::<Bytes, io::Error>(data)),
                _ => None,
            })
        });
    StreamReader::new(Box::pin(payloads))
}

/// Each write becomes one binary message; shutting down sends a normal close.
pub struct Writer<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    closing: bool,
}

impl<S> Writer<S> {
    pub fn new(sink: SplitSink<WebSocketStream<S>, Message>) -> Self {
        Self {
            sink,
            closing: false,
        }
    }
}

fn io_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Writer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let sink = Pin::new(&mut self.sink);
        ready!(sink.poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.sink)
            .start_send(Message::binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sink).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            ready!(Pin::new(&mut self.sink).poll_ready(cx)).map_err(io_error)?;
            let normal = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            Pin::new(&mut self.sink)
                .start_send(Message::Close(Some(normal)))
                .map_err(io_error)?;
            self.closing = true;
        }
        Pin::new(&mut self.sink).poll_close(cx).map_err(io_error)
    }
}
