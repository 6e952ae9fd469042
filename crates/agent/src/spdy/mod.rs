//! SPDY/3.1, which kubectl and client-go speak for exec, attach and
//! port-forward when WebSocket is not used, and which kubectl 1.31+ tunnels
//! inside a WebSocket for port-forward. No maintained Rust crate serves
//! its server side, so the framing and a small server session live here.

pub mod frame;
pub mod session;

pub use session::{Incoming, Session, Stream, StreamWriter};
