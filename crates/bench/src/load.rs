//! Driving an operation from many concurrent clients for a fixed time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::Latencies;

/// Runs `op(client, iteration)` from `clients` concurrent tasks for
/// `duration`; returns operations per second and their latencies.
pub async fn load<F, Fut>(
    clients: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<(f64, Latencies)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Latencies::default();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(c, i).await?;
                    lat.record(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Latencies::default();
    for t in tasks {
        all.merge(&t.await??);
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}
