//! The `scale` subresource: an autoscaling/v1 `Scale` view of any workload
//! with replicas, which `kubectl scale` and the HorizontalPodAutoscaler use.

use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::selectors::selector_text;
use crate::status::{ApiError, ApiResult, FieldError};

/// The Scale of a workload object.
pub fn to_scale(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_text(&obj["spec"]["selector"]),
        },
    })
}

/// Sets the workload's replicas from a Scale, refusing negative counts as upstream.
pub fn apply_scale(rt: &ResourceType, obj: &mut Value, scale: &Value) -> ApiResult<()> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let replicas = &scale["spec"]["replicas"];
    match replicas.as_i64() {
        Some(n) if n >= 0 => {
            obj["spec"]["replicas"] = json!(n);
            Ok(())
        }
        Some(n) => Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            &name,
            vec![FieldError::invalid(
                "spec.replicas",
                &json!(n),
                "must be greater than or equal to 0",
            )],
        )),
        None if replicas.is_null() => {
            obj["spec"]["replicas"] = json!(0);
            Ok(())
        }
        None => Err(ApiError::bad_request(format!(
            "{} in version \"v1\" cannot be handled as a Scale: spec.replicas must be an integer",
            rt.kind
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn scale_view_of_a_deployment() {
        let d = json!({"metadata": {"name": "web", "namespace": "ns", "resourceVersion": "7"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let s = to_scale(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"], json!({"replicas": 2, "selector": "app=web"}));
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn negative_replicas_are_invalid() {
        let r = Registry::builtin();
        let rt = r.get("apps", "v1", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}});
        let e = apply_scale(rt, &mut d, &json!({"spec": {"replicas": -1}})).unwrap_err();
        assert_eq!(
            e.message,
            "Scale.autoscaling \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        apply_scale(rt, &mut d, &json!({"spec": {"replicas": 4}})).unwrap();
        assert_eq!(d["spec"]["replicas"], 4);
    }
}
