//! Pod phase and conditions from container states, by upstream kubelet's rules.

use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The pod's phase from its app containers' states (`getPhase` upstream).
pub fn phase(
    statuses: &[ContainerStatus],
    restart_policy: &str,
    init_done: bool,
    init_failed: bool,
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let state = s.state.as_ref();
        if state.and_then(|s| s.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            // Waiting to restart after ending: it has run, the pod is not pending.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

/// A condition, keeping its transition time when its status did not change.
pub fn condition(
    previous: Option<&[PodCondition]>,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    now: &Time,
) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_owned();
    let earlier = previous.and_then(|p| p.iter().find(|c| c.type_ == type_ && c.status == status));
    PodCondition {
        type_: type_.to_owned(),
        status,
        reason: reason.map(str::to_owned),
        last_transition_time: earlier
            .and_then(|c| c.last_transition_time.clone())
            .or_else(|| Some(now.clone())),
        last_probe_time: None,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    fn running() -> ContainerStatus {
        ContainerStatus {
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn ended(code: i32) -> ContainerStatus {
        ContainerStatus {
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn waiting(after_crash: bool) -> ContainerStatus {
        ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting::default()),
                ..Default::default()
            }),
            last_state: after_crash.then(|| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_upstream() {
        assert_eq!(phase(&[running()], "Always", true, false), "Running");
        assert_eq!(phase(&[waiting(false)], "Always", true, false), "Pending");
        assert_eq!(
            phase(&[waiting(true)], "Always", true, false),
            "Running",
            "CrashLoopBackOff pods are Running"
        );
        assert_eq!(phase(&[ended(0)], "Never", true, false), "Succeeded");
        assert_eq!(phase(&[ended(0), ended(1)], "Never", true, false), "Failed");
        assert_eq!(phase(&[ended(1)], "OnFailure", true, false), "Running");
        assert_eq!(phase(&[running()], "Always", false, false), "Pending");
        assert_eq!(phase(&[], "Never", false, true), "Failed");
    }
}
