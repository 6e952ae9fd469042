//! Pod priority, as upstream's Priority admission plugin and the built-in
//! classes its API server creates: a pod's `spec.priority` is resolved from
//! its `priorityClassName` (or the global default class) when it is created.

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::admission::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::status::{ApiError, ApiResult};

/// The classes every cluster has: name, value, description.
pub const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The built-in classes as objects, for bootstrap.
pub fn system_classes() -> impl Iterator<Item = Value> {
    SYSTEM_CLASSES
        .into_iter()
        .map(|(name, value, description)| {
            json!({"metadata": {"name": name}, "value": value, "description": description,
               "preemptionPolicy": "PreemptLowerPriority"})
        })
}

pub struct Priority;

async fn classes(reads: &Reads<'_>) -> ApiResult<Vec<Value>> {
    reads
        .list("priorityclasses", "/registry/priorityclasses/")
        .await
}

#[async_trait]
impl AdmissionPlugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    async fn mutate(
        &self,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        let rt = attrs.resource;
        if attrs.operation != Operation::Create
            || !rt.group.is_empty()
            || rt.plural != "pods"
            || attrs.subresource.is_some()
        {
            return Ok(());
        }
        let name = obj["spec"]["priorityClassName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let forbidden = |why: String| ApiError::forbidden_on("", "pods", attrs.name, &why);
        let class =
            if name.is_empty() {
                classes(reads)
                    .await?
                    .into_iter()
                    .find(|c| c["globalDefault"] == true)
            } else {
                let class = reads
                    .get(
                        "priorityclasses",
                        &format!("/registry/priorityclasses/{name}"),
                    )
                    .await?;
                Some(class.ok_or_else(|| {
                    forbidden(format!("no PriorityClass with name {name} was found"))
                })?)
            };
        let value = class
            .as_ref()
            .and_then(|c| c["value"].as_i64())
            .unwrap_or(0);
        if let Some(given) = obj["spec"]["priority"].as_i64()
            && given != value
        {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; \
                 priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        let spec = &mut obj["spec"];
        spec["priority"] = json!(value);
        if let Some(class) = class {
            if name.is_empty() {
                spec["priorityClassName"] = class["metadata"]["name"].clone();
            }
            let policy = class["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority");
            spec["preemptionPolicy"] = json!(policy);
        }
        Ok(())
    }
}
