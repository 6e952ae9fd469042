//! How a node's components retry a watch that failed.
//!
//! kube-runtime's default is client-go's reflector backoff, 0.8 s doubling
//! to 30 s with up to as much again of jitter: after a node was cut off for
//! a minute its watches would resume up to a minute after it is back, while
//! its pods replaced elsewhere keep running. A node's watches go to its
//! local load balancer (`failover`), which refuses at once while no server
//! answers, so retrying more often costs the servers nothing; the cap is
//! kubelet's node status period, 10 s with jitter.

use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;

const FIRST: Duration = Duration::from_millis(800);
/// Doubled by jitter at most: 10 s.
const MAX: Duration = Duration::from_secs(5);
/// The delays start again from the first after this long without failure.
const RESET_AFTER: Duration = Duration::from_secs(120);

/// The watch backoff of a node's components (`.backoff(node_watch_backoff())`).
pub fn node_watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(FIRST)
        .with_max_delay(MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(delays), RESET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_ten_seconds() {
        let delays: Vec<Duration> = node_watch_backoff().take(50).collect();
        assert!(delays[0] >= FIRST && delays[0] <= FIRST * 2, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX * 2), "{delays:?}");
        assert!(delays[10..].iter().all(|d| *d >= MAX), "{delays:?}");
    }
}
