//! The rules of the pod eviction subresource (policy/v1 Eviction), as
//! upstream's registry applies them: which PodDisruptionBudget guards a
//! pod, and whether the budget lets it go now, taking one disruption from it.

use http::StatusCode;
use serde_json::{Value, json};

use crate::selectors::LabelSelector;
use crate::status::{ApiError, ApiResult};

/// More evictions than this not yet seen by the disruption controller
/// refuse further ones, as upstream's MaxDisruptedPodSize.
const MAX_DISRUPTED_PODS: usize = 2000;

/// Pods whose eviction disrupts nothing: finished, not yet started, or
/// already going.
pub fn ignores_budgets(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || pod["metadata"]["deletionTimestamp"].is_string()
}

/// The budgets (of the pod's namespace) whose selector selects the pod;
/// policy/v1's empty selector selects every pod.
pub fn guarding<'a>(budgets: &'a [Value], pod: &Value) -> Vec<&'a Value> {
    budgets
        .iter()
        .filter(|b| {
            LabelSelector::from_value(&b["spec"]["selector"])
                .is_ok_and(|s| s.matches(&pod["metadata"]["labels"]))
        })
        .collect()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn too_many_requests(why: String) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    )
    .with_causes(vec![json!({"reason": "DisruptionBudget", "message": why})])
}

/// Whether `budget` lets `pod` go. `Ok(true)`: it took one disruption
/// (its status changed, to be written before the pod is deleted);
/// `Ok(false)`: the pod may go without taking one (it is unhealthy and the
/// budget is met anyway); an error: the eviction is refused.
pub fn take(budget: &mut Value, pod: &Value, now: &str) -> ApiResult<bool> {
    let name = budget["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let status = &budget["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let (current, desired) = (
        int(&status["currentHealthy"]),
        int(&status["desiredHealthy"]),
    );
    if !ready(pod) {
        let policy = budget["spec"]["unhealthyPodEvictionPolicy"]
            .as_str()
            .unwrap_or("IfHealthyBudget");
        if policy == "AlwaysAllow" || (current >= desired && desired > 0) {
            return Ok(false);
        }
    }
    if int(&status["observedGeneration"]) < int(&budget["metadata"]["generation"]) {
        return Err(too_many_requests(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    let allowed = int(&status["disruptionsAllowed"]);
    if allowed < 0 {
        return Err(ApiError::forbidden(format!(
            "poddisruptionbudgets.policy \"{name}\" is forbidden: pdb disruptions allowed is negative"
        )));
    }
    let disrupted = status["disruptedPods"].as_object().map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::forbidden(format!(
            "poddisruptionbudgets.policy \"{name}\" is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller"
        )));
    }
    if allowed == 0 {
        return Err(too_many_requests(format!(
            "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
        )));
    }
    let status = &mut budget["status"];
    status["disruptionsAllowed"] = json!(allowed - 1);
    if !status["disruptedPods"].is_object() {
        status["disruptedPods"] = json!({});
    }
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    status["disruptedPods"][pod_name] = json!(now);
    if allowed == 1
        && let Some(conditions) = status["conditions"].as_array_mut()
    {
        for c in conditions
            .iter_mut()
            .filter(|c| c["type"] == "DisruptionAllowed")
        {
            if c["status"] != "False" {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!("False");
            c["reason"] = json!("InsufficientPods");
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ready: bool) -> Value {
        json!({"metadata": {"name": "web-1", "labels": {"app": "web"}},
               "status": {"phase": "Running",
                          "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    fn budget(allowed: i64, current: i64, desired: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": 1},
               "spec": {"selector": {"matchLabels": {"app": "web"}}},
               "status": {"observedGeneration": 1, "disruptionsAllowed": allowed,
                          "currentHealthy": current, "desiredHealthy": desired,
                          "conditions": [{"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods"}]}})
    }

    #[test]
    fn a_budget_with_room_takes_one_disruption_and_names_the_pod() {
        let mut b = budget(1, 3, 2);
        assert_eq!(take(&mut b, &pod(true), "2026-01-01T00:00:00Z"), Ok(true));
        assert_eq!(b["status"]["disruptionsAllowed"], 0);
        assert_eq!(
            b["status"]["disruptedPods"]["web-1"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(b["status"]["conditions"][0]["reason"], "InsufficientPods");
    }

    #[test]
    fn a_spent_budget_refuses_with_429_and_its_numbers() {
        let err = take(&mut budget(0, 2, 2), &pod(true), "now").unwrap_err();
        let status = err.to_status();
        assert_eq!(status["code"], 429);
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(
            status["message"],
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert_eq!(
            status["details"]["causes"][0],
            json!({"reason": "DisruptionBudget", "message": "The disruption budget web needs 2 healthy pods and has 2 currently"})
        );
    }

    #[test]
    fn an_unhealthy_pod_goes_free_when_the_budget_is_met() {
        assert_eq!(take(&mut budget(0, 2, 2), &pod(false), "now"), Ok(false));
        assert!(take(&mut budget(0, 1, 2), &pod(false), "now").is_err());
    }

    #[test]
    fn budgets_select_by_label_and_pending_pods_ignore_them() {
        let budgets = [
            budget(1, 1, 1),
            json!({"spec": {"selector": {"matchLabels": {"app": "db"}}}}),
        ];
        assert_eq!(guarding(&budgets, &pod(true)).len(), 1);
        assert!(!ignores_budgets(&pod(true)));
        assert!(ignores_budgets(&json!({"status": {"phase": "Pending"}})));
    }
}
