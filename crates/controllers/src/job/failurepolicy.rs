//! A Job's `podFailurePolicy` (upstream's matchPodFailurePolicy): the
//! first rule a failed pod satisfies, by a container's non-zero exit code
//! or by a pod condition, decides whether its failure fails the whole Job,
//! fails its index (of a Job with `backoffLimitPerIndex`), is ignored (not
//! counted toward `backoffLimit`, the pod replaced), or is counted as
//! usual. A pod no rule matches is counted.

use k8s_openapi::api::batch::v1::{Job, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

/// What a failed pod's failure does to its Job.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The Job fails (reason PodFailurePolicy) with this message.
    FailJob(String),
    /// Its index fails, not retried again; counted as a failure.
    FailIndex,
    /// Not counted toward the backoff limit.
    Ignore,
    /// Counted toward the backoff limit (Count, or no rule).
    Count,
}

impl Verdict {
    pub fn counts(&self) -> bool {
        !matches!(self, Verdict::Ignore)
    }
}

/// The verdict on `pod`, which failed, by `job`'s policy.
pub fn judge(job: &Job, pod: &Pod) -> Verdict {
    let Some(policy) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return Verdict::Count;
    };
    let status = pod.status.as_ref();
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(on_exit) = &rule.on_exit_codes {
            let containers = status.and_then(|s| s.container_statuses.as_deref());
            let inits = status.and_then(|s| s.init_container_statuses.as_deref());
            let Some((name, code)) =
                exit_matching(containers, on_exit).or_else(|| exit_matching(inits, on_exit))
            else {
                continue;
            };
            format!(
                "Container {name} for pod {}/{} failed with exit code {code} matching {} rule at index {index}",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                rule.action
            )
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let conditions = status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default();
            let Some(condition) = conditions.iter().find(|c| {
                patterns.iter().any(|p| {
                    p.type_ == c.type_ && p.status.as_deref().unwrap_or("True") == c.status
                })
            }) else {
                continue;
            };
            format!(
                "Pod {}/{} has condition {} matching {} rule at index {index}",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                condition.type_,
                rule.action
            )
        } else {
            continue;
        };
        match rule.action.as_str() {
            "FailJob" => return Verdict::FailJob(matched),
            "Ignore" => return Verdict::Ignore,
            "FailIndex" => return Verdict::FailIndex,
            "Count" => return Verdict::Count,
            // Unknown actions are skipped, as upstream asks of clients.
            _ => {}
        }
    }
    Verdict::Count
}

/// The first terminated container with a non-zero exit code the
/// requirement matches: its name and code.
fn exit_matching(
    statuses: Option<&[ContainerStatus]>,
    requirement: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(String, i32)> {
    statuses.into_iter().flatten().find_map(|c| {
        let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
        if code == 0
            || requirement
                .container_name
                .as_ref()
                .is_some_and(|n| *n != c.name)
        {
            return None;
        }
        let listed = requirement.values.contains(&code);
        let matches = match requirement.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        };
        matches.then(|| (c.name.clone(), code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(rules: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns"},
            "spec": {"podFailurePolicy": {"rules": rules},
                     "template": {"spec": {"containers": [{"name": "main"}]}}}
        }))
        .unwrap()
    }

    fn failed(exit: &[(&str, i32)], conditions: serde_json::Value) -> Pod {
        let statuses: Vec<_> = exit
            .iter()
            .map(|(n, c)| {
                json!({"name": n, "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": c}}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "containerStatuses": statuses, "conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let j = job(json!([
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1, 42]}},
        ]));
        assert_eq!(
            judge(&j, &failed(&[("side", 0), ("main", 42)], json!([]))),
            Verdict::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        // Another container's 42 is not main's.
        assert_eq!(
            judge(&j, &failed(&[("side", 42)], json!([]))),
            Verdict::Count
        );
        assert_eq!(
            judge(&j, &failed(&[("main", 3)], json!([]))),
            Verdict::Ignore
        );
        assert_eq!(
            judge(&j, &failed(&[("main", 1)], json!([]))),
            Verdict::Count
        );
        let disrupted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        assert_eq!(
            judge(&j, &failed(&[("main", 42)], disrupted)),
            Verdict::Ignore
        );
        let not_disrupted = json!([{"type": "DisruptionTarget", "status": "False"}]);
        assert!(matches!(
            judge(&j, &failed(&[("main", 42)], not_disrupted)),
            Verdict::FailJob(_)
        ));
    }

    #[test]
    fn pod_conditions_fail_the_job_with_upstreams_message() {
        let j = job(json!([{"action": "FailJob",
            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]));
        let pod = failed(&[], json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(
            judge(&j, &pod),
            Verdict::FailJob(
                "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 0".into()
            )
        );
    }
}
