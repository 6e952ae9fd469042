//! Names outside the cluster go to the upstream resolvers, as CoreDNS's
//! `forward . /etc/resolv.conf`: each in turn until one answers, over UDP,
//! and again over TCP when the answer was truncated.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The largest UDP answer asked of upstreams: the DNS flag day's size,
/// which avoids fragmentation.
const UDP_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers")]
    NoUpstreams,
    #[error("encoding the query: {0}")]
    Encode(#[from] hickory_proto::ProtoError),
    #[error("no upstream answered: {0}")]
    Unanswered(String),
}

#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { upstreams, timeout }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The first upstream's answer to `query`, whatever its response code.
    pub async fn forward(&self, query: &Query) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let id: u16 = rand::random();
        let mut message = Message::new();
        message
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        message.set_edns(edns);
        let bytes = message.to_vec()?;
        let mut failures = Vec::new();
        for upstream in &self.upstreams {
            let answer = tokio::time::timeout(self.timeout, async {
                let answer = udp(*upstream, &bytes, id).await?;
                if answer.truncated() {
                    tcp(*upstream, &bytes, id).await
                } else {
                    Ok(answer)
                }
            })
            .await;
            match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => failures.push(format!("{upstream}: {e}")),
                Err(_) => failures.push(format!("{upstream}: timed out")),
            }
        }
        Err(ForwardError::Unanswered(failures.join("; ")))
    }
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

async fn udp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(UDP_PAYLOAD).max(4096)];
    loop {
        let n = socket.recv(&mut buf).await?;
        // A stray or forged datagram is not the answer: keep waiting.
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && answer.id() == id
        {
            return Ok(answer);
        }
    }
}

async fn tcp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(invalid)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let answer = Message::from_vec(&buf).map_err(invalid)?;
    if answer.id() != id {
        return Err(invalid("the answer is for another query"));
    }
    Ok(answer)
}
