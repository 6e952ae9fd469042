//! An Indexed Job's `successPolicy` (upstream's matchSuccessPolicy): the
//! Job succeeds once the indexes of one rule have succeeded, or enough of
//! them (`succeededCount`), or enough indexes at all when the rule lists
//! none; its remaining pods are then terminated.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;

use super::{indexes, spec};

/// The SuccessCriteriaMet message of the first rule `succeeded` meets.
pub fn met(job: &Job, succeeded: &BTreeSet<i32>) -> Option<String> {
    let policy = spec(job).success_policy.as_ref()?;
    if succeeded.is_empty() {
        return None;
    }
    let completions = spec(job).completions.unwrap_or(0);
    let index = policy.rules.iter().position(|rule| {
        let count = rule.succeeded_count.map(|c| c.max(0) as usize);
        match &rule.succeeded_indexes {
            Some(listed) => {
                let wanted = indexes::parse(listed, completions);
                // A list that names nothing (all out of range) never matches.
                if wanted.is_empty() {
                    return false;
                }
                let done = wanted.intersection(succeeded).count();
                done == wanted.len() || count.is_some_and(|c| done >= c)
            }
            None => count.is_some_and(|c| succeeded.len() >= c),
        }
    })?;
    Some(format!("Matched rules at index {index}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(rules: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"completionMode": "Indexed", "completions": 10,
                     "successPolicy": {"rules": rules},
                     "template": {"spec": {"containers": []}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_first_rule_met_decides() {
        let j = job(json!([
            {"succeededIndexes": "0,2-4"},
            {"succeededIndexes": "5-9", "succeededCount": 2},
            {"succeededCount": 4},
        ]));
        let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(met(&j, &set(&[])), None);
        assert_eq!(met(&j, &set(&[0, 2, 3])), None);
        assert_eq!(
            met(&j, &set(&[0, 2, 3, 4])).as_deref(),
            Some("Matched rules at index 0")
        );
        assert_eq!(
            met(&j, &set(&[0, 6, 9])).as_deref(),
            Some("Matched rules at index 1")
        );
        assert_eq!(
            met(&j, &set(&[0, 1, 2, 5])).as_deref(),
            Some("Matched rules at index 2")
        );
        assert_eq!(
            met(&job(json!([{"succeededIndexes": "12-15"}])), &set(&[0])),
            None
        );
    }
}
