//! The probe schedule of one container run: the startup probe until it
//! succeeds, then liveness and readiness side by side, each with its
//! initial delay, period, timeout and thresholds. Verdicts go to the pod's
//! worker; every failed attempt is an Unhealthy event, as upstream.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use kubox_client::events::{Type, pod_reference};
use tokio::sync::mpsc;

use crate::Shared;
use crate::probe::{self, Action, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A probe crossed its success or failure threshold.
#[derive(Debug)]
pub struct Verdict {
    pub container: String,
    pub container_id: String,
    pub kind: Kind,
    pub healthy: bool,
}

/// What one container run needs probing with.
pub struct Run {
    pub shared: Arc<Shared>,
    pub pod: Pod,
    pub container: Container,
    pub container_id: String,
    pub netns: Option<std::path::PathBuf>,
    pub verdicts: mpsc::UnboundedSender<Verdict>,
}

fn seconds(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.map(|s| s.max(0) as u64).unwrap_or(default))
}

impl Run {
    /// Whether the container has any probe at all.
    pub fn needed(c: &Container) -> bool {
        c.startup_probe.is_some() || c.liveness_probe.is_some() || c.readiness_probe.is_some()
    }

    pub async fn probe(self) {
        let this = Arc::new(self);
        let c = &this.container;
        if let Some(p) = c.startup_probe.clone()
            && !this.clone().follow(Kind::Startup, p).await
        {
            return;
        }
        let liveness = c
            .liveness_probe
            .clone()
            .map(|p| this.clone().follow(Kind::Liveness, p));
        let readiness = c
            .readiness_probe
            .clone()
            .map(|p| this.clone().follow(Kind::Readiness, p));
        futures::future::join(
            async {
                if let Some(l) = liveness {
                    l.await;
                }
            },
            async {
                if let Some(r) = readiness {
                    r.await;
                }
            },
        )
        .await;
    }

    fn tell(&self, kind: Kind, healthy: bool) -> bool {
        self.verdicts
            .send(Verdict {
                container: self.container.name.clone(),
                container_id: self.container_id.clone(),
                kind,
                healthy,
            })
            .is_ok()
    }

    /// Runs one probe on its schedule. Returns true when a startup probe
    /// succeeded; liveness and startup stop once they fail for good.
    async fn follow(self: Arc<Self>, kind: Kind, p: Probe) -> bool {
        let field_path = format!("spec.containers{{{}}}", self.container.name);
        let action = match Action::from_probe(&p, &self.container) {
            Ok(Some(a)) => a,
            Ok(None) => return true,
            Err(e) => {
                let reference = pod_reference(&self.pod, Some(field_path));
                self.shared.events.record(
                    reference,
                    Type::Warning,
                    "Unhealthy",
                    format!("{} probe errored: {e}", kind.name()),
                );
                return false;
            }
        };
        let target = Target {
            container_id: &self.container_id,
            netns: self.netns.clone(),
            runtime: self.shared.runtime.as_ref(),
        };
        let period = seconds(p.period_seconds, 10);
        let timeout = seconds(p.timeout_seconds, 1);
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
        let (mut successes, mut failures) = (0, 0);
        let mut verdict: Option<bool> = None;
        loop {
            match probe::run(&action, &target, timeout).await {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                    if successes >= success_threshold && verdict != Some(true) {
                        verdict = Some(true);
                        if !self.tell(kind, true) || kind == Kind::Startup {
                            return true;
                        }
                    }
                }
                Err(message) => {
                    successes = 0;
                    failures += 1;
                    let reference = pod_reference(&self.pod, Some(field_path.clone()));
                    self.shared.events.record(
                        reference,
                        Type::Warning,
                        "Unhealthy",
                        format!("{} probe failed: {message}", kind.name()),
                    );
                    if failures >= failure_threshold && verdict != Some(false) {
                        verdict = Some(false);
                        if !self.tell(kind, false) || kind != Kind::Readiness {
                            return false;
                        }
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}
