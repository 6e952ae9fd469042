//! A Job spec's defaults and checks beyond its pod template (upstream's
//! SetDefaults_Job and validateJobSpec), for Jobs and CronJobs' job
//! templates alike: the pod failure policy and what it requires.

use serde_json::{Value, json};

use crate::status::FieldError;
use crate::strategy::or_insert;
use crate::validation;

const MAX_RULES: usize = 20;
const MAX_EXIT_CODES: usize = 255;
const MAX_POD_CONDITIONS: usize = 20;
const ACTIONS: [&str; 4] = ["Count", "FailIndex", "FailJob", "Ignore"];
const OPERATORS: [&str; 2] = ["In", "NotIn"];
const CONDITION_STATUSES: [&str; 3] = ["False", "True", "Unknown"];

/// Upstream's defaults: one completion unless parallelism is given, and
/// pods replaced only once failed when a pod failure policy needs their
/// exit codes; a condition pattern's status is True.
pub fn default(spec: &mut Value) {
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec["completions"] = json!(1);
    }
    or_insert(spec, "parallelism", json!(1));
    or_insert(spec, "backoffLimit", json!(6));
    or_insert(spec, "completionMode", json!("NonIndexed"));
    or_insert(spec, "suspend", json!(false));
    let has_policy = spec["podFailurePolicy"].is_object();
    let replacement = if has_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    or_insert(spec, "podReplacementPolicy", json!(replacement));
    let rules = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut);
    for rule in rules.into_iter().flatten() {
        let patterns = rule
            .get_mut("onPodConditions")
            .and_then(Value::as_array_mut);
        for pattern in patterns.into_iter().flatten() {
            if pattern.is_object() {
                or_insert(pattern, "status", json!("True"));
            }
        }
    }
}

fn required(field: String, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field,
        message: format!("Required value: {detail}"),
    }
}

fn too_many(field: String, n: usize, max: usize) -> FieldError {
    FieldError {
        reason: "FieldValueTooMany",
        field,
        message: format!("Too many: {n}: must have at most {max} items"),
    }
}

/// An Invalid error whose value upstream omits.
fn invalid_omitted(field: String, why: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field,
        message: format!("Invalid value: {why}"),
    }
}

/// `valid values: ["A" "B"]`, as Go prints a list of strings with %q.
fn valid_values(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("valid values: [{}]", quoted.join(" "))
}

/// Checks the spec at `path` (`spec`, or `spec.jobTemplate.spec`).
pub fn validate(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let policy = &spec["podFailurePolicy"];
    if !policy.is_object() {
        return errs;
    }
    let restart = &spec["template"]["spec"]["restartPolicy"];
    if restart != "Never" {
        errs.push(FieldError::invalid(
            format!("{path}.template.spec.restartPolicy"),
            restart,
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    let replacement = &spec["podReplacementPolicy"];
    if replacement.is_string() && replacement != "Failed" {
        errs.push(FieldError::not_supported(
            format!("{path}.podReplacementPolicy"),
            replacement,
            &["Failed"],
        ));
    }
    let pod_spec = &spec["template"]["spec"];
    let containers: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod_spec[k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let rules_path = format!("{path}.podFailurePolicy.rules");
    let rules = policy["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.len() > MAX_RULES {
        errs.push(too_many(rules_path.clone(), rules.len(), MAX_RULES));
    }
    for (i, rule) in rules.iter().enumerate() {
        errs.extend(validate_rule(
            spec,
            rule,
            &format!("{rules_path}[{i}]"),
            &containers,
        ));
    }
    errs
}

fn validate_rule(spec: &Value, rule: &Value, path: &str, containers: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let action = &rule["action"];
    let action_path = format!("{path}.action");
    match action.as_str().unwrap_or_default() {
        "" => errs.push(required(action_path, &valid_values(&ACTIONS))),
        "FailIndex" if spec["backoffLimitPerIndex"].is_null() => errs.push(FieldError::invalid(
            action_path,
            action,
            "requires the backoffLimitPerIndex to be set",
        )),
        a if !ACTIONS.contains(&a) => {
            errs.push(FieldError::not_supported(action_path, action, &ACTIONS))
        }
        _ => {}
    }
    let on_exit = &rule["onExitCodes"];
    let patterns = rule["onPodConditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if on_exit.is_object() {
        errs.extend(validate_exit_codes(
            on_exit,
            &format!("{path}.onExitCodes"),
            containers,
        ));
    }
    if !patterns.is_empty() {
        let at = format!("{path}.onPodConditions");
        if patterns.len() > MAX_POD_CONDITIONS {
            errs.push(too_many(at.clone(), patterns.len(), MAX_POD_CONDITIONS));
        }
        for (j, pattern) in patterns.iter().enumerate() {
            let type_ = pattern["type"].as_str().unwrap_or_default();
            let type_path = format!("{at}[{j}].type");
            if type_.is_empty() {
                errs.push(FieldError::invalid(
                    type_path,
                    &json!(""),
                    "name part must be non-empty",
                ));
            } else if let Some(why) = validation::qualified_name(type_) {
                errs.push(FieldError::invalid(type_path, &json!(type_), why));
            }
            let status = &pattern["status"];
            let status_path = format!("{at}[{j}].status");
            match status.as_str().unwrap_or_default() {
                "" => errs.push(required(status_path, &valid_values(&CONDITION_STATUSES))),
                s if !CONDITION_STATUSES.contains(&s) => errs.push(FieldError::not_supported(
                    status_path,
                    status,
                    &CONDITION_STATUSES,
                )),
                _ => {}
            }
        }
    }
    match (on_exit.is_object(), !patterns.is_empty()) {
        (true, true) => errs.push(invalid_omitted(
            path.to_owned(),
            "specifying both OnExitCodes and OnPodConditions is not supported",
        )),
        (false, false) => errs.push(invalid_omitted(
            path.to_owned(),
            "specifying one of OnExitCodes and OnPodConditions is required",
        )),
        _ => {}
    }
    errs
}

/// Go's `%#v` of a `[]int32`, as upstream shows an invalid list of codes.
fn go_int32s(values: &[i64]) -> String {
    let shown: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("[]int32{{{}}}", shown.join(", "))
}

fn validate_exit_codes(on_exit: &Value, path: &str, containers: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let operator = &on_exit["operator"];
    let operator_path = format!("{path}.operator");
    match operator.as_str().unwrap_or_default() {
        "" => errs.push(required(operator_path, &valid_values(&OPERATORS))),
        o if !OPERATORS.contains(&o) => errs.push(FieldError::not_supported(
            operator_path,
            operator,
            &OPERATORS,
        )),
        _ => {}
    }
    if let Some(name) = on_exit["containerName"].as_str()
        && !containers.contains(&name)
    {
        errs.push(FieldError::invalid(
            format!("{path}.containerName"),
            &json!(name),
            "must be one of the container or initContainer names in the pod template",
        ));
    }
    let values: Vec<i64> = on_exit["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect();
    let values_path = format!("{path}.values");
    if values.is_empty() {
        errs.push(invalid_omitted(
            values_path.clone(),
            &format!("{}: at least one value is required", go_int32s(&values)),
        ));
    } else if values.len() > MAX_EXIT_CODES {
        errs.push(too_many(values_path.clone(), values.len(), MAX_EXIT_CODES));
    }
    let mut seen = std::collections::HashSet::new();
    for (j, v) in values.iter().enumerate() {
        let at = format!("{values_path}[{j}]");
        if operator == "In" && *v == 0 {
            errs.push(FieldError::invalid(
                at.clone(),
                &json!(v),
                "must not be 0 for the In operator",
            ));
        }
        if !seen.insert(*v) {
            errs.push(FieldError::duplicate(at, &json!(v)));
        }
    }
    if values.windows(2).any(|w| w[0] > w[1]) {
        errs.push(invalid_omitted(
            values_path,
            &format!("{}: must be ordered", go_int32s(&values)),
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: Value) -> Value {
        let mut spec = json!({
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox"}]}},
            "podFailurePolicy": policy,
        });
        default(&mut spec);
        spec
    }

    fn messages(spec: &Value) -> Vec<String> {
        validate(spec, "spec")
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_policy_defaults_replacement_of_failed_pods_and_true_conditions() {
        let s = spec(json!({"rules": [{"action": "Ignore",
            "onPodConditions": [{"type": "DisruptionTarget"}]}]}));
        assert_eq!(s["podReplacementPolicy"], "Failed");
        assert_eq!(
            s["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"],
            "True"
        );
        assert!(messages(&s).is_empty(), "{:?}", messages(&s));
        let mut plain = json!({"template": {}});
        default(&mut plain);
        assert_eq!(plain["podReplacementPolicy"], "TerminatingOrFailed");
    }

    #[test]
    fn bad_policies_are_refused_with_upstreams_causes() {
        let s = spec(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1, 0, 2]}},
            {"action": "Ignore", "onExitCodes": {"containerName": "xyz", "operator": "In", "values": [5, 3, 3]}},
            {"action": "Explode", "onExitCodes": {"operator": "Between", "values": [1]},
             "onPodConditions": [{"type": "DisruptionTarget", "status": "Maybe"}]},
            {"action": "FailIndex"},
        ]}));
        assert_eq!(
            messages(&s),
            [
                "spec.podFailurePolicy.rules[0].onExitCodes.values[1]: Invalid value: 0: must not be 0 for the In operator",
                "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: []int32{1, 0, 2}: must be ordered",
                "spec.podFailurePolicy.rules[1].onExitCodes.containerName: Invalid value: \"xyz\": must be one of the container or initContainer names in the pod template",
                "spec.podFailurePolicy.rules[1].onExitCodes.values[2]: Duplicate value: 3",
                "spec.podFailurePolicy.rules[1].onExitCodes.values: Invalid value: []int32{5, 3, 3}: must be ordered",
                "spec.podFailurePolicy.rules[2].action: Unsupported value: \"Explode\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
                "spec.podFailurePolicy.rules[2].onExitCodes.operator: Unsupported value: \"Between\": supported values: \"In\", \"NotIn\"",
                "spec.podFailurePolicy.rules[2].onPodConditions[0].status: Unsupported value: \"Maybe\": supported values: \"False\", \"True\", \"Unknown\"",
                "spec.podFailurePolicy.rules[2]: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported",
                "spec.podFailurePolicy.rules[3].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set",
                "spec.podFailurePolicy.rules[3]: Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
            ]
        );
        let mut on_failure = spec(json!({"rules": []}));
        on_failure["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        on_failure["podReplacementPolicy"] = json!("TerminatingOrFailed");
        assert_eq!(
            messages(&on_failure),
            [
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified",
                "spec.podReplacementPolicy: Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\"",
            ]
        );
    }
}
