//! Where a pod's start goes: the time each step took, from the agent
//! seeing the pod to reporting it Running, logged once it runs
//! (`KUBOX_LOG=kubox_agent::startup=debug`).

use std::fmt::Write;
use std::time::{Duration, Instant};

pub struct Steps {
    began: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Steps {
    pub fn new() -> Self {
        Self {
            began: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Counts `took` towards `step`; a step taken again (a second
    /// container, a retry) adds up.
    pub fn record(&mut self, step: &'static str, took: Duration) {
        match self.steps.iter_mut().find(|(s, _)| *s == step) {
            Some((_, total)) => *total += took,
            None => self.steps.push((step, took)),
        }
    }

    /// Since the agent first saw the pod.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    pub fn log(&self, pod: &str) {
        let mut line = String::new();
        for (step, took) in &self.steps {
            let _ = write!(line, " {step}={:.1}ms", took.as_secs_f64() * 1000.0);
        }
        tracing::debug!(
            pod,
            "running {:.1}ms after the agent saw it:{line}",
            self.elapsed().as_secs_f64() * 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_taken_twice_adds_up() {
        let mut steps = Steps::new();
        steps.record("image", Duration::from_millis(50));
        steps.record("image", Duration::from_millis(50));
        steps.record("create", Duration::from_millis(1));
        assert_eq!(steps.steps.len(), 2);
        assert_eq!(steps.steps[0], ("image", Duration::from_millis(100)));
    }
}
