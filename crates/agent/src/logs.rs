//! Container output to log files in the CRI format
//! (`<RFC 3339 time> <stream> <P|F> <text>`). A container writes to named
//! pipes it holds open for both reading and writing, so its writes never
//! fail while the agent is away: they wait in the pipe until an agent
//! (perhaps a restarted one) reopens the pipe and copies them on.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::attach::ContainerIo;
use crate::console::{Terminal, TerminalReader};
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, watch};

/// Lines longer than this are split into partial (`P`) records, as containerd does.
const MAX_RECORD: usize = 16 * 1024;

/// The log files being written now, each with a counter bumped after every
/// record, so `kubectl logs -f` is woken by writes instead of polling, and
/// learns the container ended when the writer drops its end.
#[derive(Default)]
pub struct Active(std::sync::Mutex<HashMap<PathBuf, watch::Receiver<u64>>>);

impl Active {
    fn register(&self, path: &Path) -> watch::Sender<u64> {
        let (tx, rx) = watch::channel(0);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), rx);
        tx
    }

    fn unregister(&self, path: &Path) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
    }

    /// Changes to a log being written; `None` when nothing writes it.
    pub fn subscribe(&self, path: &Path) -> Option<watch::Receiver<u64>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }
}

pub struct Pipes {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Pipes {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
        }
    }

    pub fn create(&self) -> io::Result<()> {
        for p in [&self.stdout, &self.stderr] {
            match rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            ) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The ends the container writes to.
    pub fn writers(&self) -> io::Result<(OwnedFd, OwnedFd)> {
        let open = |p: &Path| -> io::Result<OwnedFd> {
            Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)?
                .into())
        };
        Ok((open(&self.stdout)?, open(&self.stderr)?))
    }

    /// Copies both pipes into `log` until the container's side is closed,
    /// handing each chunk to attached clients too.
    pub fn copy_to(
        &self,
        log: &Path,
        active: &Arc<Active>,
        attached: Arc<ContainerIo>,
    ) -> io::Result<tokio::task::JoinHandle<()>> {
        let readers = [
            (
                "stdout",
                pipe::OpenOptions::new().open_receiver(&self.stdout)?,
            ),
            (
                "stderr",
                pipe::OpenOptions::new().open_receiver(&self.stderr)?,
            ),
        ];
        copy_all(log, active, attached, readers)
    }
}

/// Copies a terminal's output into `log` as stdout, until the terminal is
/// left, handing each chunk to attached clients too.
pub fn copy_terminal(
    terminal: Arc<Terminal>,
    log: &Path,
    active: &Arc<Active>,
    attached: Arc<ContainerIo>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    copy_all(
        log,
        active,
        attached,
        [("stdout", TerminalReader::new(terminal))],
    )
}

fn copy_all<R, const N: usize>(
    log: &Path,
    active: &Arc<Active>,
    attached: Arc<ContainerIo>,
    readers: [(&'static str, R); N],
) -> io::Result<tokio::task::JoinHandle<()>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let file = Arc::new(Mutex::new(tokio::fs::File::from_std(file)));
    let written = Arc::new(active.register(log));
    let (active, log) = (active.clone(), log.to_owned());
    Ok(tokio::spawn(async move {
        let copies = readers
            .map(|(stream, rx)| copy(stream, rx, file.clone(), written.clone(), attached.clone()));
        futures::future::join_all(copies).await;
        attached.output_ended();
        active.unregister(&log);
    }))
}

async fn copy<R: AsyncRead + Unpin>(
    stream: &'static str,
    mut rx: R,
    file: Arc<Mutex<tokio::fs::File>>,
    written: Arc<watch::Sender<u64>>,
    attached: Arc<ContainerIo>,
) {
    let mut buf = vec![0u8; MAX_RECORD];
    let mut line: Vec<u8> = Vec::new();
    let wrap = crate::attach::wrap(stream);
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("reading container {stream}: {e}");
                0
            }
        };
        if n == 0 {
            break;
        }
        // Attached clients get output as it comes; the log gets it by lines.
        attached.publish(wrap(Bytes::copy_from_slice(&buf[..n])));
        line.extend_from_slice(&buf[..n]);
        let mut records = Vec::new();
        while let Some(end) = line.iter().position(|b| *b == b'\n') {
            records.extend(record(stream, &line[..=end]));
            line.drain(..=end);
        }
        while line.len() >= MAX_RECORD {
            records.extend(record(stream, &line[..MAX_RECORD]));
            line.drain(..MAX_RECORD);
        }
        if !records.is_empty() && !write_records(&file, &written, &records).await {
            return;
        }
    }
    if !line.is_empty() {
        write_records(&file, &written, &record(stream, &line)).await;
    }
}

async fn write_records(
    file: &Mutex<tokio::fs::File>,
    written: &watch::Sender<u64>,
    records: &[u8],
) -> bool {
    // tokio's File writes in the background: the flush is what waits for
    // the bytes to be in the file, before readers are told of them.
    let mut file = file.lock().await;
    if let Err(e) = async {
        file.write_all(records).await?;
        file.flush().await
    }
    .await
    {
        tracing::warn!("writing a container log: {e}");
        return false;
    }
    written.send_modify(|n| *n += 1);
    true
}

fn record(stream: &str, line: &[u8]) -> Vec<u8> {
    let (tag, text) = match line.strip_suffix(b"\n") {
        Some(text) => ("F", text),
        None => ("P", line),
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = format!("{now:.9} {stream} {tag} ").into_bytes();
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// One record of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a [u8],
}

pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let partial = parts.next()? == b"P";
    let text = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        partial,
        text: text.strip_suffix(b"\n").unwrap_or(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = record("stdout", b"hello world\n");
        let parsed = parse_record(&r).unwrap();
        assert_eq!(
            (parsed.stream, parsed.partial, parsed.text),
            ("stdout", false, &b"hello world"[..])
        );
        assert!(parsed.time.ends_with('Z'));
        let p = record("stderr", b"no newline");
        assert!(parse_record(&p).unwrap().partial);
    }

    #[tokio::test]
    async fn output_written_before_the_reader_opens_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pipes = Pipes::in_dir(dir.path());
        pipes.create().unwrap();
        let (out, err) = pipes.writers().unwrap();
        let mut out = std::fs::File::from(out);
        let mut err = std::fs::File::from(err);
        std::io::Write::write_all(&mut out, b"one\ntwo\n").unwrap();
        std::io::Write::write_all(&mut err, b"oops\n").unwrap();
        let log = dir.path().join("0.log");
        let copier = pipes
            .copy_to(&log, &Arc::default(), ContainerIo::new(false))
            .unwrap();
        drop((out, err));
        copier.await.unwrap();
        let text = std::fs::read(&log).unwrap();
        let records: Vec<_> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(parse_record)
            .collect();
        let mut lines: Vec<_> = records.iter().map(|r| (r.stream, r.text)).collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                ("stderr", &b"oops"[..]),
                ("stdout", b"one"),
                ("stdout", b"two")
            ]
        );
    }
}
