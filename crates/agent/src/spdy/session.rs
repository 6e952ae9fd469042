//! The server side of a SPDY/3.1 connection as Kubernetes' streaming
//! protocols use it: the client opens every stream (odd IDs), the server
//! replies and writes. As client-go's own implementation, flow control is
//! left to the transport (TCP): WINDOW_UPDATE and SETTINGS are read and
//! ignored, and a stream whose reader falls behind holds up the others.

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{
    CANCEL, Frame, FrameDecoder, FrameEncoder, Headers, MAX_PAYLOAD, PROTOCOL_ERROR,
};

/// What arrives on a stream; the channel closing is the peer's FIN (or the
/// connection's end).
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Data(Bytes),
    /// The peer abandoned the stream (RST_STREAM): nothing more goes either way.
    Reset,
}

enum Command {
    Frame(Frame),
    /// GOAWAY, flush, and end the connection.
    Close,
}

/// Sends frames on the connection; clones share one ordered queue.
#[derive(Clone)]
struct Outbox(mpsc::Sender<Command>);

impl Outbox {
    async fn send(&self, frame: Frame) -> io::Result<()> {
        self.0
            .send(Command::Frame(frame))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

/// One stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub incoming: mpsc::Receiver<Incoming>,
    writer: StreamWriter,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Accepts the stream (SYN_REPLY); the client waits for this before it writes.
    pub async fn reply(&self) -> io::Result<()> {
        self.writer
            .out
            .send(Frame::SynReply {
                stream: self.id,
                fin: false,
                headers: vec![],
            })
            .await
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }
}

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: Outbox,
}

impl StreamWriter {
    pub async fn write(&self, data: Bytes) -> io::Result<()> {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_PAYLOAD));
            self.out
                .send(Frame::Data {
                    stream: self.id,
                    fin: false,
                    data: chunk,
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes the stream: this side writes no more.
    pub async fn finish(&self) -> io::Result<()> {
        self.out
            .send(Frame::Data {
                stream: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await
    }

    /// Abandons the stream both ways.
    pub async fn reset(&self) -> io::Result<()> {
        self.out
            .send(Frame::RstStream {
                stream: self.id,
                status: CANCEL,
            })
            .await
    }
}

/// A running server connection. Dropping it stops reading; frames already
/// queued are still written.
pub struct Session {
    streams: mpsc::Receiver<Stream>,
    out: Outbox,
    closed: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How many frames may wait for the writer, and how many data frames for a
/// stream's reader, before the other side is held up.
const QUEUE: usize = 64;

impl Session {
    pub fn start<R, W>(read: R, write: W) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        let out = Outbox(tx);
        tokio::spawn(write_frames(write, rx));
        let (stream_tx, streams) = mpsc::channel(QUEUE);
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn(read_frames(read, out.clone(), stream_tx, closed_tx));
        Self {
            streams,
            out,
            closed,
            reader,
        }
    }

    /// The next stream the client opens; `None` once the connection has ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.streams.recv().await
    }

    /// Resolves once the client's side of the connection has ended.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            let _ = closed.wait_for(|c| *c).await;
        }
    }

    /// Ends the connection after everything queued so far (GOAWAY, then close).
    pub async fn close(&self) {
        let _ = self.out.0.send(Command::Close).await;
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(write: W, mut rx: mpsc::Receiver<Command>) {
    let mut framed = FramedWrite::new(write, FrameEncoder::default());
    framed.set_backpressure_boundary(256 * 1024);
    loop {
        let Some(command) = rx.recv().await else {
            let _ = framed.close().await;
            return;
        };
        let mut next = Some(command);
        // Queue everything waiting, then write it out at once.
        while let Some(command) = next.take() {
            match command {
                Command::Frame(frame) => {
                    if framed.feed(frame).await.is_err() {
                        return;
                    }
                }
                Command::Close => {
                    let _ = framed
                        .feed(Frame::GoAway {
                            last_good: 0,
                            status: 0,
                        })
                        .await;
                    let _ = framed.close().await;
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if framed.flush().await.is_err() {
            return;
        }
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    read: R,
    out: Outbox,
    accepted: mpsc::Sender<Stream>,
    closed: watch::Sender<bool>,
) {
    let mut frames = FramedRead::new(read, FrameDecoder::default());
    let mut open: HashMap<u32, mpsc::Sender<Incoming>> = HashMap::new();
    let mut last_id = 0u32;
    while let Some(frame) = frames.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("SPDY connection: {e}");
                let _ = out
                    .send(Frame::GoAway {
                        last_good: last_id,
                        status: PROTOCOL_ERROR,
                    })
                    .await;
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                headers,
                fin,
                ..
            } => {
                // Client streams are odd and each newer than the last.
                if stream % 2 == 0 || stream <= last_id {
                    let _ = out
                        .send(Frame::RstStream {
                            stream,
                            status: PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                }
                last_id = stream;
                let (tx, rx) = mpsc::channel(QUEUE);
                if !fin {
                    open.insert(stream, tx);
                }
                let s = Stream {
                    id: stream,
                    headers,
                    incoming: rx,
                    writer: StreamWriter {
                        id: stream,
                        out: out.clone(),
                    },
                };
                if accepted.send(s).await.is_err() {
                    // Nobody takes new streams any more.
                    let _ = out
                        .send(Frame::RstStream {
                            stream,
                            status: super::frame::REFUSED_STREAM,
                        })
                        .await;
                }
            }
            Frame::Data { stream, fin, data } => {
                if !data.is_empty()
                    && let Some(tx) = open.get(&stream)
                    && tx.send(Incoming::Data(data)).await.is_err()
                {
                    open.remove(&stream);
                }
                if fin {
                    open.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                if let Some(tx) = open.remove(&stream) {
                    let _ = tx.send(Incoming::Reset).await;
                }
            }
            Frame::Headers { stream, fin, .. } => {
                if fin {
                    open.remove(&stream);
                }
            }
            // Pings from the client (odd IDs) are answered; this side sends none.
            Frame::Ping(id) if id % 2 == 1 => {
                let _ = out.send(Frame::Ping(id)).await;
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. }
            | Frame::Settings(_)
            | Frame::Ping(_)
            | Frame::WindowUpdate { .. }
            | Frame::Unknown(_) => {}
        }
    }
    drop(open);
    let _ = closed.send(true);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::codec::{Decoder, Encoder};

    /// The client's end of a connection, speaking raw frames.
    pub(crate) struct Client {
        io: DuplexStream,
        enc: FrameEncoder,
        dec: FrameDecoder,
        buf: BytesMut,
    }

    impl Client {
        pub(crate) fn connect() -> (Self, Session) {
            let (client, server) = tokio::io::duplex(1 << 20);
            let (r, w) = tokio::io::split(server);
            let client = Client {
                io: client,
                enc: FrameEncoder::default(),
                dec: FrameDecoder::default(),
                buf: BytesMut::new(),
            };
            (client, Session::start(r, w))
        }

        pub(crate) async fn send(&mut self, frame: Frame) {
            let mut wire = BytesMut::new();
            self.enc.encode(frame, &mut wire).unwrap();
            self.io.write_all(&wire).await.unwrap();
        }

        pub(crate) async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
            let headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.send(Frame::SynStream {
                stream: id,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers,
            })
            .await;
        }

        /// The next frame, or `None` once the server closed the connection.
        pub(crate) async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap();
                if n == 0 {
                    return None;
                }
            }
        }
    }

    #[tokio::test]
    async fn streams_are_accepted_replied_and_carry_data_both_ways() {
        let (mut client, mut session) = Client::connect();
        client.open(1, &[("streamtype", "stdin")]).await;
        let mut stream = session.accept().await.unwrap();
        assert_eq!(stream.header("StreamType"), Some("stdin"));
        stream.reply().await.unwrap();
        assert!(matches!(
            client.next().await,
            Some(Frame::SynReply { stream: 1, .. })
        ));
        client
            .send(Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"in"),
            })
            .await;
        assert_eq!(
            stream.incoming.recv().await,
            Some(Incoming::Data(Bytes::from_static(b"in")))
        );
        assert_eq!(stream.incoming.recv().await, None, "FIN ends the stream");
        let w = stream.writer();
        w.write(Bytes::from_static(b"out")).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(
            client.next().await,
            Some(Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from_static(b"out")
            })
        );
        assert!(matches!(
            client.next().await,
            Some(Frame::Data {
                stream: 1,
                fin: true,
                ..
            })
        ));
        // Pings are answered.
        client.send(Frame::Ping(7)).await;
        assert_eq!(client.next().await, Some(Frame::Ping(7)));
        session.close().await;
        assert!(matches!(client.next().await, Some(Frame::GoAway { .. })));
        assert_eq!(client.next().await, None);
    }

    #[tokio::test]
    async fn resets_and_bad_stream_ids_are_handled() {
        let (mut client, mut session) = Client::connect();
        client.open(1, &[]).await;
        let mut stream = session.accept().await.unwrap();
        client
            .send(Frame::RstStream {
                stream: 1,
                status: CANCEL,
            })
            .await;
        assert_eq!(stream.incoming.recv().await, Some(Incoming::Reset));
        // An even (server-side) ID, and one not newer than the last.
        client.open(2, &[]).await;
        client.open(1, &[]).await;
        for _ in 0..2 {
            assert!(matches!(
                client.next().await,
                Some(Frame::RstStream {
                    status: PROTOCOL_ERROR,
                    ..
                })
            ));
        }
        // Garbage ends the connection with a GOAWAY.
        client
            .io
            .write_all(&[
                0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 2,
            ])
            .await
            .unwrap();
        assert!(matches!(
            client.next().await,
            Some(Frame::GoAway {
                status: PROTOCOL_ERROR,
                ..
            })
        ));
        session.closed().await;
        assert!(session.accept().await.is_none());
    }
}
