//! Leader election through a coordination.k8s.io Lease, as client-go's
//! leaderelection with a LeaseLock: one holder at a time, renewed every
//! retry period; a candidate takes over once the holder has not renewed
//! for a whole lease duration *as this process observed it*, so clocks that
//! disagree between machines do not matter. A candidate stopped with
//! [`Candidate::release`] gives the lease up, as client-go's
//! `ReleaseOnCancel`, so its successor (or itself restarted) need not wait
//! the lease out.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upstream's defaults for kube-controller-manager and kube-scheduler.
#[derive(Clone, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The holder record last seen and when this process first saw it.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

/// `<hostname>_<uuid>`, as upstream components name themselves.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

impl LeaderElection {
    /// Elects among the holders of Lease `namespace/name`; `identity` names this candidate.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: String) -> Self {
        Self::with_timing(client, namespace, name, identity, Timing::default())
    }

    pub fn with_timing(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: String,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            timing,
            observed: None,
        }
    }

    /// Campaigns in the background: runs `lead` whenever this candidate
    /// holds the lease, drops its future as soon as leadership is lost, then
    /// campaigns again, until the [`Candidate`] is released or dropped.
    pub fn spawn<F, Fut>(self, lead: F) -> Candidate
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run(lead, stopped));
        Candidate {
            stop: Some(stop),
            task,
        }
    }

    async fn run<F, Fut>(mut self, mut lead: F, mut stopped: oneshot::Receiver<()>)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let acquire = async {
                while !self.try_acquire_or_renew().await {
                    tokio::time::sleep(self.timing.retry_period).await;
                }
            };
            tokio::select! {
                () = acquire => {}
                _ = &mut stopped => return,
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            let leading = lead();
            tokio::select! {
                () = leading => continue,
                () = self.keep_renewing() => {
                    tracing::warn!(lease = %self.name, "leadership lost");
                    continue;
                }
                _ = &mut stopped => {
                    // The leader's work has stopped (its future dropped)
                    // before the lease says so.
                }
            }
            self.release().await;
            return;
        }
    }

    /// Ends this candidate's hold on the lease, as client-go's release: no
    /// holder, a one-second duration, the transitions kept; only while it
    /// still holds it (a lease taken over meanwhile is left alone).
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: spec.lease_transitions,
            ..Default::default()
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(e) => tracing::warn!(lease = %self.name, "releasing the lease: {e}"),
        }
    }

    /// Renews every retry period; returns once a renewal has not succeeded
    /// within the renew deadline.
    async fn keep_renewing(&mut self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            if self.try_acquire_or_renew().await {
                last_renewed = Instant::now();
            } else if last_renewed.elapsed() >= self.timing.renew_deadline {
                return;
            }
        }
    }

    fn record(&self, acquire_time: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs() as i32),
            acquire_time: Some(acquire_time),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt, as client-go's tryAcquireOrRenew: true when this
    /// candidate holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> bool {
        let now = MicroTime(Timestamp::now());
        let current = match self.api.get_opt(&self.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(lease = %self.name, "reading the lease: {e}");
                return false;
            }
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.record(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observed = Some((created.spec, Instant::now()));
                    true
                }
                Err(e) => {
                    tracing::debug!(lease = %self.name, "creating the lease: {e}");
                    false
                }
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| {
            seen.as_ref().map(|s| (&s.holder_identity, &s.renew_time))
                != Some((&spec.holder_identity, &spec.renew_time))
        }) {
            self.observed = Some((lease.spec.clone(), Instant::now()));
        }
        let held_by_me = spec.holder_identity.as_deref() == Some(&self.identity);
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let observed_at = self.observed.as_ref().map(|(_, at)| *at);
        if !held_by_me
            && !holder.is_empty()
            && observed_at.is_some_and(|at| at.elapsed() < duration)
        {
            return false;
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if held_by_me {
            LeaseSpec {
                renew_time: Some(now),
                lease_duration_seconds: Some(self.timing.lease_duration.as_secs() as i32),
                ..spec
            }
        } else {
            self.record(now, transitions + 1)
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observed = Some((updated.spec, Instant::now()));
                true
            }
            Err(e) => {
                tracing::debug!(lease = %self.name, "updating the lease: {e}");
                false
            }
        }
    }
}

/// A campaigning [`LeaderElection`]; dropping it stops campaigning (and
/// leading) at once, leaving the lease to expire.
pub struct Candidate {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    /// Stops leading and gives up the lease if held, waiting at most
    /// `timeout` for the API to take the release.
    pub async fn release(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(timeout, &mut self.task).await;
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
