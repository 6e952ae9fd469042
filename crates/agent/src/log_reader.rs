//! Reading container logs back for `kubectl logs`: the CRI records of a
//! file turned back into the container's output, with upstream's options
//! (tailLines, sinceTime, timestamps, limitBytes) and, for follow, new
//! records as the writer reports them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::logs::{Active, parse_record};

#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// The log file of a pod's container: its current run, or the one before.
pub fn find(
    logs: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<PathBuf, String> {
    let prefix = format!("{namespace}_{pod}_");
    let pod_dir = std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path());
    let mut runs: Vec<(u32, PathBuf)> = pod_dir
        .and_then(|d| std::fs::read_dir(d.join(container)).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    runs.sort();
    let wanted = if previous {
        runs.len().checked_sub(2)
    } else {
        runs.len().checked_sub(1)
    };
    match wanted.and_then(|i| runs.get(i)) {
        Some((_, path)) => Ok(path.clone()),
        None if previous => Err(format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
        )),
        None => Err(format!(
            "container \"{container}\" in pod \"{pod}\" has no logs"
        )),
    }
}

/// Turns complete CRI lines into output bytes.
fn render(lines: &[&[u8]], opts: &ReadOptions) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        let Some(r) = parse_record(line) else {
            continue;
        };
        if let Some(since) = opts.since
            && r.time.parse::<Timestamp>().is_ok_and(|t| t < since)
        {
            continue;
        }
        if opts.timestamps {
            out.extend_from_slice(r.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.text);
        if !r.partial {
            out.push(b'\n');
        }
    }
    out
}

/// Splits off the complete lines of `buf`, leaving a trailing partial line in it.
fn complete_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let Some(last) = buf.iter().rposition(|b| *b == b'\n') else {
        return vec![];
    };
    let rest = buf.split_off(last + 1);
    let whole = std::mem::replace(buf, rest);
    whole
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

struct Reader {
    file: tokio::fs::File,
    pending: Vec<u8>,
    changes: Option<watch::Receiver<u64>>,
    opts: ReadOptions,
    sent: usize,
    started: bool,
}

impl Reader {
    async fn read_new(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        self.file.read_to_end(&mut self.pending).await?;
        Ok(complete_lines(&mut self.pending))
    }

    /// The next chunk of output, or `None` at the end.
    async fn next(&mut self) -> Option<Bytes> {
        if self.opts.limit_bytes.is_some_and(|l| self.sent >= l) {
            return None;
        }
        loop {
            let lines = if !self.started {
                self.started = true;
                let mut lines = self.read_new().await.ok()?;
                if let Some(n) = self.opts.tail_lines {
                    lines.drain(..lines.len().saturating_sub(n));
                }
                lines
            } else {
                let changes = self.changes.as_mut()?;
                // The writer dropping its end means the container ended: read what is left and stop.
                if changes.changed().await.is_err() {
                    self.changes = None;
                }
                self.read_new().await.ok()?
            };
            let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let mut out = render(&refs, &self.opts);
            if let Some(limit) = self.opts.limit_bytes {
                out.truncate(limit - self.sent);
            }
            if !out.is_empty() {
                self.sent += out.len();
                return Some(Bytes::from(out));
            }
            self.changes.as_ref()?;
        }
    }
}

/// The output of a log file as a stream of chunks, following it while it is written when asked.
pub async fn read(
    path: &Path,
    opts: ReadOptions,
    active: &Arc<Active>,
) -> std::io::Result<impl Stream<Item = Bytes> + Send + use<>> {
    // Subscribe before reading, so no record written in between is missed.
    let changes = if opts.follow {
        active.subscribe(path).map(|mut rx| {
            rx.mark_unchanged();
            rx
        })
    } else {
        None
    };
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let reader = Reader {
        file,
        pending: Vec::new(),
        changes,
        opts,
        sent: 0,
        started: false,
    };
    Ok(futures::stream::unfold(reader, |mut r| async move {
        r.next().await.map(|chunk| (chunk, r))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    const LOG: &[u8] = b"2026-01-01T00:00:01.000000000Z stdout F one\n\
2026-01-01T00:00:02.000000000Z stderr P tw\n\
2026-01-01T00:00:02.500000000Z stderr F o\n\
2026-01-01T00:00:03.000000000Z stdout F three\n";

    async fn output(opts: ReadOptions) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let chunks: Vec<Bytes> = read(&path, opts, &Arc::default())
            .await
            .unwrap()
            .collect()
            .await;
        String::from_utf8(chunks.concat()).unwrap()
    }

    #[tokio::test]
    async fn options_shape_the_output_as_upstream() {
        assert_eq!(output(ReadOptions::default()).await, "one\ntwo\nthree\n");
        let tail = ReadOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(output(tail).await, "three\n");
        let since = ReadOptions {
            since: Some("2026-01-01T00:00:02.600Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(output(since).await, "three\n");
        let stamped = ReadOptions {
            timestamps: true,
            limit_bytes: Some(39),
            ..Default::default()
        };
        assert_eq!(
            output(stamped).await,
            "2026-01-01T00:00:01.000000000Z one\n2026"
        );
    }

    #[test]
    fn the_latest_and_previous_runs_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("default_web_uid1/main");
        std::fs::create_dir_all(&c).unwrap();
        for n in [0, 1, 10] {
            std::fs::write(c.join(format!("{n}.log")), b"").unwrap();
        }
        assert_eq!(
            find(dir.path(), "default", "web", "main", false).unwrap(),
            c.join("10.log")
        );
        assert_eq!(
            find(dir.path(), "default", "web", "main", true).unwrap(),
            c.join("1.log")
        );
        assert!(
            find(dir.path(), "default", "web", "other", true)
                .unwrap_err()
                .contains("previous terminated container")
        );
    }
}
