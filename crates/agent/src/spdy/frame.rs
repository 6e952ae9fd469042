//! SPDY/3.1 frames on the wire (the draft-3 format, which 3.1 keeps, plus
//! its WINDOW_UPDATE). Header blocks are compressed with one zlib stream per
//! direction, primed with the protocol's dictionary and flushed (SYNC) at
//! the end of every block, so each block decodes as soon as it arrives.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::codec::{Decoder, Encoder};

/// The largest payload a frame can carry (its length field has 24 bits).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// A header block inflating beyond this is refused: no legitimate peer of
/// the streaming protocols sends more than a few hundred bytes of headers.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

/// Header names (lower case) with their values; several values of one
/// name travel joined by NUL.
pub type Headers = Vec<(String, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// (flags, id, value) triples.
    Settings(Vec<(u8, u32, u32)>),
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this side does not know: skipped, as the protocol asks.
    Unknown(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

fn protocol(message: impl Into<String>) -> FrameError {
    FrameError::Protocol(message.into())
}

/// The zlib dictionary of SPDY/3 (draft 3, section 2.6.10.1): length-prefixed
/// header names and common values, then a run of common text.
pub fn dictionary() -> Vec<u8> {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

fn encode_header_block(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.put_u32(headers.len() as u32);
    for (name, value) in headers {
        raw.put_u32(name.len() as u32);
        raw.put_slice(name.to_ascii_lowercase().as_bytes());
        raw.put_u32(value.len() as u32);
        raw.put_slice(value.as_bytes());
    }
    raw
}

fn decode_header_block(mut raw: &[u8]) -> Result<Headers, FrameError> {
    let bad = || protocol("truncated header block");
    let take = |raw: &mut &[u8]| -> Result<String, FrameError> {
        if raw.remaining() < 4 {
            return Err(bad());
        }
        let len = raw.get_u32() as usize;
        if raw.remaining() < len {
            return Err(bad());
        }
        let text = String::from_utf8_lossy(&raw[..len]).into_owned();
        raw.advance(len);
        Ok(text)
    };
    if raw.remaining() < 4 {
        return Err(bad());
    }
    let count = raw.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut raw)?.to_ascii_lowercase();
        let value = take(&mut raw)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Reads frames, inflating header blocks with the peer's zlib stream.
pub struct FrameDecoder {
    inflate: Decompress,
    dictionary: Vec<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            inflate: Decompress::new(true),
            dictionary: dictionary(),
        }
    }
}

impl FrameDecoder {
    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - before) as usize..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(protocol("header block too large"));
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }

    fn headers(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate(compressed)?;
        decode_header_block(&raw)
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 8 {
            return Ok(None);
        }
        let first = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let flags = src[4];
        let length = u32::from_be_bytes([0, src[5], src[6], src[7]]) as usize;
        if src.len() < 8 + length {
            src.reserve(8 + length - src.len());
            return Ok(None);
        }
        src.advance(8);
        let mut payload = src.split_to(length).freeze();
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            let stream = first & 0x7fff_ffff;
            if stream == 0 {
                return Err(protocol("data frame on stream 0"));
            }
            return Ok(Some(Frame::Data {
                stream,
                fin,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(protocol(format!("unsupported SPDY version {version}")));
        }
        let kind = (first & 0xffff) as u16;
        let need = |n: usize| {
            if length < n {
                Err(protocol(format!(
                    "control frame {kind} of {length} bytes is too short"
                )))
            } else {
                Ok(())
            }
        };
        let stream_id = |p: &mut Bytes| p.get_u32() & 0x7fff_ffff;
        let frame = match kind {
            SYN_STREAM => {
                need(10)?;
                let stream = stream_id(&mut payload);
                let associated = stream_id(&mut payload);
                let priority = payload.get_u8() >> 5;
                payload.advance(1);
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.headers(&payload)?,
                }
            }
            SYN_REPLY | HEADERS => {
                need(4)?;
                let stream = stream_id(&mut payload);
                let headers = self.headers(&payload)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream {
                    stream: stream_id(&mut payload),
                    status: payload.get_u32(),
                }
            }
            SETTINGS => {
                need(4)?;
                let count = payload.get_u32() as usize;
                if payload.remaining() < count.saturating_mul(8) {
                    return Err(protocol("truncated SETTINGS frame"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = payload.get_u32();
                        ((word >> 24) as u8, word & 0xff_ffff, payload.get_u32())
                    })
                    .collect();
                Frame::Settings(entries)
            }
            PING => {
                need(4)?;
                Frame::Ping(payload.get_u32())
            }
            GOAWAY => {
                need(8)?;
                Frame::GoAway {
                    last_good: stream_id(&mut payload),
                    status: payload.get_u32(),
                }
            }
            WINDOW_UPDATE => {
                need(8)?;
                Frame::WindowUpdate {
                    stream: stream_id(&mut payload),
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown(other),
        };
        Ok(Some(frame))
    }
}

/// Writes frames, deflating header blocks into this side's zlib stream.
pub struct FrameEncoder {
    deflate: Compress,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary())
            .expect("a fresh deflate stream takes a dictionary");
        Self { deflate }
    }
}

impl FrameEncoder {
    fn deflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(input.len() + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| protocol(format!("compressing headers: {e}")))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // A sync flush is complete once all input is taken and the output did not fill up.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

impl FrameEncoder {
    fn headers_frame(
        &mut self,
        dst: &mut BytesMut,
        kind: u16,
        stream: u32,
        fin: bool,
        headers: &Headers,
    ) -> Result<(), FrameError> {
        let block = self.deflate(&encode_header_block(headers))?;
        let mut p = Vec::with_capacity(4 + block.len());
        p.put_u32(stream);
        p.extend_from_slice(&block);
        control(dst, kind, if fin { FLAG_FIN } else { 0 }, &p);
        Ok(())
    }
}

fn control(dst: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) {
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u8(flags);
    dst.put_uint(payload.len() as u64, 3);
    dst.put_slice(payload);
}

impl Encoder<Frame> for FrameEncoder {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data { stream, fin, data } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(protocol("data frame too large"));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream & 0x7fff_ffff);
                dst.put_u8(fin_flag(fin));
                dst.put_uint(data.len() as u64, 3);
                dst.put_slice(&data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let block = self.deflate(&encode_header_block(&headers))?;
                let mut p = Vec::with_capacity(10 + block.len());
                p.put_u32(stream);
                p.put_u32(associated);
                p.put_u8(priority << 5);
                p.put_u8(0);
                p.extend_from_slice(&block);
                let flags = fin_flag(fin)
                    | if unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control(dst, SYN_STREAM, flags, &p);
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => self.headers_frame(dst, SYN_REPLY, stream, fin, &headers)?,
            Frame::Headers {
                stream,
                fin,
                headers,
            } => self.headers_frame(dst, HEADERS, stream, fin, &headers)?,
            Frame::RstStream { stream, status } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(stream);
                p.put_u32(status);
                control(dst, RST_STREAM, 0, &p);
            }
            Frame::Settings(entries) => {
                let mut p = Vec::with_capacity(4 + 8 * entries.len());
                p.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    p.put_u32(u32::from(flags) << 24 | (id & 0xff_ffff));
                    p.put_u32(value);
                }
                control(dst, SETTINGS, 0, &p);
            }
            Frame::Ping(id) => control(dst, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(last_good);
                p.put_u32(status);
                control(dst, GOAWAY, 0, &p);
            }
            Frame::WindowUpdate { stream, delta } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(stream);
                p.put_u32(delta);
                control(dst, WINDOW_UPDATE, 0, &p);
            }
            Frame::Unknown(kind) => return Err(protocol(format!("cannot send frame type {kind}"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: Vec<Frame>) {
        let (mut enc, mut dec) = (FrameEncoder::default(), FrameDecoder::default());
        let mut wire = BytesMut::new();
        for f in frames.clone() {
            enc.encode(f, &mut wire).unwrap();
        }
        let mut back = Vec::new();
        while let Some(f) = dec.decode(&mut wire).unwrap() {
            back.push(f);
        }
        assert_eq!(back, frames);
        assert!(wire.is_empty());
    }

    #[test]
    fn the_dictionary_is_the_protocols() {
        // zlib names a dictionary by its Adler-32; peers refuse any other.
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        let mut deflate = Compress::new(Compression::default(), true);
        assert_eq!(deflate.set_dictionary(&dict).unwrap(), 0xe3c6_a7c2);
    }

    #[test]
    fn every_frame_type_round_trips_with_one_compression_stream() {
        let headers = |t: &str| -> Headers {
            vec![
                ("streamtype".into(), t.into()),
                ("port".into(), "80".into()),
                ("requestid".into(), "0".into()),
            ]
        };
        round_trip(vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 7,
                fin: false,
                unidirectional: false,
                headers: headers("error"),
            },
            Frame::SynStream {
                stream: 3,
                associated: 0,
                priority: 0,
                fin: true,
                unidirectional: true,
                headers: headers("data"),
            },
            Frame::SynReply {
                stream: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Headers {
                stream: 3,
                fin: true,
                headers: headers("data"),
            },
            Frame::Data {
                stream: 3,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream: 1,
                status: CANCEL,
            },
            Frame::Settings(vec![(0, 4, 100), (1, 7, 65536)]),
            Frame::Ping(1),
            Frame::WindowUpdate {
                stream: 3,
                delta: 4096,
            },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ]);
    }

    #[test]
    fn frames_split_anywhere_decode_once_whole() {
        let mut enc = FrameEncoder::default();
        let mut wire = BytesMut::new();
        let frame = Frame::SynStream {
            stream: 5,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: vec![("streamtype".into(), "stdout".into())],
        };
        enc.encode(frame.clone(), &mut wire).unwrap();
        let whole = wire.split().freeze();
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let got = dec.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == whole.len() - 1);
            if let Some(f) = got {
                assert_eq!(f, frame);
            }
        }
    }

    #[test]
    fn bad_input_is_refused_not_a_panic() {
        let mut dec = FrameDecoder::default();
        // A SYN_STREAM whose header block is not zlib.
        let mut wire = BytesMut::new();
        control(
            &mut wire,
            SYN_STREAM,
            0,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 9, 9],
        );
        assert!(dec.decode(&mut wire).is_err());
        // A frame too short for its type.
        let mut wire = BytesMut::new();
        control(&mut wire, RST_STREAM, 0, &[0, 0, 0, 1]);
        assert!(FrameDecoder::default().decode(&mut wire).is_err());
        // Another protocol version.
        let mut wire = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(FrameDecoder::default().decode(&mut wire).is_err());
        // Unknown control types are skipped whole.
        let mut wire = BytesMut::new();
        control(&mut wire, 0x42, 0, b"abc");
        assert_eq!(
            FrameDecoder::default().decode(&mut wire).unwrap(),
            Some(Frame::Unknown(0x42))
        );
        assert!(wire.is_empty());
    }
}
