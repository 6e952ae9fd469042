//! A Job spec's defaults and checks beyond its pod template (upstream's
//! SetDefaults_Job and validateJobSpec), for Jobs and CronJobs' job
//! templates alike: Indexed Jobs' per-index backoff and success policy,
//! the pod failure policy, and what each requires.

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
const COMPLETION_MODES: [&str; 2] = ["NonIndexed", "Indexed"];
const MAX_PARALLELISM_INDEXED: i64 = 100_000;
const MAX_FAILED_INDEXES: i64 = 100_000;
/// Above this many completions, a per-index backoff needs tighter limits.
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
const HIGH_COMPLETIONS_LIMIT: i64 = 10_000;
const MAX_SUCCESS_RULES: usize = 20;
const MAX_SUCCEEDED_INDEXES_LEN: usize = 64 * 1024;

/// Upstream's defaults: one completion unless parallelism is given, no
/// Job-wide backoff limit when each index has its own, and pods replaced
/// only once failed when a pod failure policy needs their exit codes; a
/// condition pattern's status is True.
pub fn default(spec: &mut Value) {
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec["completions"] = json!(1);
    }
    or_insert(spec, "parallelism", json!(1));
    let backoff_limit = if spec["backoffLimitPerIndex"].is_null() {
        6
    } else {
        i32::MAX
    };
    or_insert(spec, "backoffLimit", json!(backoff_limit));
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

fn negative(field: String, value: &Value) -> FieldError {
    FieldError::invalid(field, value, "must be greater than or equal to 0")
}

/// Checks the spec at `path` (`spec`, or `spec.jobTemplate.spec`).
pub fn validate(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for field in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if spec[field].as_i64().is_some_and(|v| v < 0) {
            errs.push(negative(format!("{path}.{field}"), &spec[field]));
        }
    }
    let per_index = &spec["backoffLimitPerIndex"];
    let max_failed = &spec["maxFailedIndexes"];
    if !max_failed.is_null() && per_index.is_null() {
        errs.push(required(
            format!("{path}.backoffLimitPerIndex"),
            "when maxFailedIndexes is specified",
        ));
    }
    errs.extend(validate_completion_mode(spec, path));
    if spec["podFailurePolicy"].is_object() {
        errs.extend(validate_failure_policy(spec, path));
    }
    let success = &spec["successPolicy"];
    if success.is_object() {
        if spec["completionMode"] == "Indexed" {
            errs.extend(validate_success_policy(spec, path));
        } else {
            errs.push(invalid_omitted(
                format!("{path}.successPolicy"),
                "requires indexed completion mode",
            ));
        }
    }
    errs
}

fn validate_completion_mode(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mode = &spec["completionMode"];
    let (completions, parallelism) = (spec["completions"].as_i64(), spec["parallelism"].as_i64());
    let per_index = &spec["backoffLimitPerIndex"];
    let max_failed = &spec["maxFailedIndexes"];
    let mode_str = mode.as_str().unwrap_or("NonIndexed");
    if !COMPLETION_MODES.contains(&mode_str) {
        errs.push(FieldError::not_supported(
            format!("{path}.completionMode"),
            mode,
            &COMPLETION_MODES,
        ));
    }
    if mode_str == "Indexed" {
        if completions.is_none() {
            errs.push(required(
                format!("{path}.completions"),
                "when completion mode is Indexed",
            ));
        }
        if parallelism.is_some_and(|p| p > MAX_PARALLELISM_INDEXED) {
            errs.push(FieldError::invalid(
                format!("{path}.parallelism"),
                &spec["parallelism"],
                format!(
                    "must be less than or equal to {MAX_PARALLELISM_INDEXED} when completion mode is Indexed"
                ),
            ));
        }
        let max = max_failed.as_i64();
        if let (Some(c), Some(m)) = (completions, max)
            && m > c
        {
            errs.push(FieldError::invalid(
                format!("{path}.maxFailedIndexes"),
                max_failed,
                "must be less than or equal to completions",
            ));
        }
        if max.is_some_and(|m| m > MAX_FAILED_INDEXES) {
            errs.push(FieldError::invalid(
                format!("{path}.maxFailedIndexes"),
                max_failed,
                format!("must be less than or equal to {MAX_FAILED_INDEXES}"),
            ));
        }
        if completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT) && !per_index.is_null() {
            let high = format!(
                "must be less than or equal to {HIGH_COMPLETIONS_LIMIT} when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
            );
            if max.is_none() {
                errs.push(required(
                    format!("{path}.maxFailedIndexes"),
                    &format!(
                        "must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"
                    ),
                ));
            }
            if parallelism.is_some_and(|p| p > HIGH_COMPLETIONS_LIMIT) {
                errs.push(FieldError::invalid(
                    format!("{path}.parallelism"),
                    &spec["parallelism"],
                    &high,
                ));
            }
            if max.is_some_and(|m| m > HIGH_COMPLETIONS_LIMIT) {
                errs.push(FieldError::invalid(
                    format!("{path}.maxFailedIndexes"),
                    max_failed,
                    &high,
                ));
            }
        }
    } else {
        for (field, value) in [
            ("backoffLimitPerIndex", per_index),
            ("maxFailedIndexes", max_failed),
        ] {
            if !value.is_null() {
                errs.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    value,
                    "requires indexed completion mode",
                ));
            }
        }
    }
    errs
}

fn validate_success_policy(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let completions = spec["completions"].as_i64().unwrap_or(0);
    let rules_path = format!("{path}.successPolicy.rules");
    let rules = spec["successPolicy"]["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() {
        errs.push(required(
            rules_path.clone(),
            "at least one rules must be specified when the successPolicy is specified",
        ));
    }
    if rules.len() > MAX_SUCCESS_RULES {
        errs.push(too_many(rules_path.clone(), rules.len(), MAX_SUCCESS_RULES));
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{rules_path}[{i}]");
        let (count, listed) = (&rule["succeededCount"], &rule["succeededIndexes"]);
        if count.is_null() && listed.is_null() {
            errs.push(required(
                at.clone(),
                "at least one of succeededCount or succeededIndexes must be specified",
            ));
        }
        let mut total = 0;
        if let Some(indexes) = listed.as_str() {
            let field = format!("{at}.succeededIndexes");
            if indexes.len() > MAX_SUCCEEDED_INDEXES_LEN {
                errs.push(FieldError {
                    reason: "FieldValueTooLong",
                    field: field.clone(),
                    message: format!(
                        "Too long: may not be more than {MAX_SUCCEEDED_INDEXES_LEN} bytes"
                    ),
                });
            }
            match count_indexes(indexes, completions) {
                Ok(n) => total = n,
                Err(why) => errs.push(FieldError::invalid(
                    field,
                    listed,
                    format!("error parsing succeededIndexes: {why}"),
                )),
            }
        }
        if let Some(n) = count.as_i64() {
            let field = format!("{at}.succeededCount");
            if n < 0 {
                errs.push(negative(field.clone(), count));
            }
            if n > completions {
                errs.push(FieldError::invalid(
                    field.clone(),
                    count,
                    format!(
                        "must be less than or equal to {completions} (the number of specified completions)"
                    ),
                ));
            }
            if listed.is_string() && n > total {
                errs.push(FieldError::invalid(
                    field,
                    count,
                    format!(
                        "must be less than or equal to {total} (the number of indexes in the specified succeededIndexes field)"
                    ),
                ));
            }
        }
    }
    errs
}

/// How many indexes `1,3-5` holds, each below `completions` and in
/// increasing order (upstream's validateIndexesFormat).
fn count_indexes(s: &str, completions: i64) -> Result<i64, String> {
    if s.is_empty() {
        return Ok(0);
    }
    let mut last: Option<i64> = None;
    let mut total = 0;
    for fragment in s.split(',') {
        let limits: Vec<&str> = fragment.split('-').collect();
        if limits.len() > 2 {
            return Err(format!(
                "the fragment {fragment:?} violates the requirement that an index interval can have at most two parts separated by '-'"
            ));
        }
        for (i, limit) in limits.iter().enumerate() {
            let x: i64 = limit
                .parse::<i32>()
                .map_err(|_| format!("cannot convert string to integer for index: {limit:?}"))?
                .into();
            if x >= completions {
                return Err(format!("too large index: {limit:?}"));
            }
            if let Some(prev) = last
                && prev >= x
            {
                return Err(format!(
                    "non-increasing order, previous: {prev}, current: {x}"
                ));
            }
            total += if i == 0 { 1 } else { x - last.unwrap_or(x) };
            last = Some(x);
        }
    }
    Ok(total)
}

fn validate_failure_policy(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let policy = &spec["podFailurePolicy"];
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

    fn indexed(extra: Value) -> Value {
        let mut spec = json!({
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox"}]}},
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        default(&mut spec);
        spec
    }

    #[test]
    fn a_per_index_backoff_lifts_the_job_wide_limit_and_needs_indexed_mode() {
        let s = indexed(json!({"completionMode": "Indexed", "completions": 3,
            "backoffLimitPerIndex": 1, "maxFailedIndexes": 2}));
        assert_eq!(s["backoffLimit"], i32::MAX);
        assert!(messages(&s).is_empty(), "{:?}", messages(&s));
        assert_eq!(indexed(json!({}))["backoffLimit"], 6);
        assert_eq!(
            messages(&indexed(
                json!({"backoffLimitPerIndex": -1, "maxFailedIndexes": 1})
            )),
            [
                "spec.backoffLimitPerIndex: Invalid value: -1: must be greater than or equal to 0",
                "spec.backoffLimitPerIndex: Invalid value: -1: requires indexed completion mode",
                "spec.maxFailedIndexes: Invalid value: 1: requires indexed completion mode",
            ]
        );
        assert_eq!(
            messages(&indexed(
                json!({"completionMode": "Indexed", "completions": 3,
                "maxFailedIndexes": 4})
            )),
            [
                "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
                "spec.maxFailedIndexes: Invalid value: 4: must be less than or equal to completions",
            ]
        );
        assert_eq!(
            messages(&indexed(
                json!({"completionMode": "Indexed", "completions": 200_000,
                "parallelism": 20_000, "backoffLimitPerIndex": 1})
            )),
            [
                "spec.maxFailedIndexes: Required value: must be specified when completions is above 100000",
                "spec.parallelism: Invalid value: 20000: must be less than or equal to 10000 when completions are above 100000 and used with backoff limit per index",
            ]
        );
    }

    #[test]
    fn success_policies_are_checked_as_upstream_checks_them() {
        let ok = indexed(json!({"completionMode": "Indexed", "completions": 5,
            "successPolicy": {"rules": [{"succeededIndexes": "0,2-4", "succeededCount": 2},
                                        {"succeededCount": 5}]}}));
        assert!(messages(&ok).is_empty(), "{:?}", messages(&ok));
        assert_eq!(
            messages(&indexed(
                json!({"successPolicy": {"rules": [{"succeededCount": 1}]}})
            )),
            ["spec.successPolicy: Invalid value: requires indexed completion mode"]
        );
        let bad = indexed(json!({"completionMode": "Indexed", "completions": 5,
            "successPolicy": {"rules": [{}, {"succeededIndexes": "3-1"},
                {"succeededIndexes": "1,7"}, {"succeededIndexes": "x"},
                {"succeededIndexes": "1-2", "succeededCount": 6}]}}));
        assert_eq!(
            messages(&bad),
            [
                "spec.successPolicy.rules[0]: Required value: at least one of succeededCount or succeededIndexes must be specified",
                "spec.successPolicy.rules[1].succeededIndexes: Invalid value: \"3-1\": error parsing succeededIndexes: non-increasing order, previous: 3, current: 1",
                "spec.successPolicy.rules[2].succeededIndexes: Invalid value: \"1,7\": error parsing succeededIndexes: too large index: \"7\"",
                "spec.successPolicy.rules[3].succeededIndexes: Invalid value: \"x\": error parsing succeededIndexes: cannot convert string to integer for index: \"x\"",
                "spec.successPolicy.rules[4].succeededCount: Invalid value: 6: must be less than or equal to 5 (the number of specified completions)",
                "spec.successPolicy.rules[4].succeededCount: Invalid value: 6: must be less than or equal to 2 (the number of indexes in the specified succeededIndexes field)",
            ]
        );
        let empty = indexed(json!({"completionMode": "Indexed", "completions": 5,
            "successPolicy": {"rules": []}}));
        assert_eq!(
            messages(&empty),
            [
                "spec.successPolicy.rules: Required value: at least one rules must be specified when the successPolicy is specified"
            ]
        );
    }
}
