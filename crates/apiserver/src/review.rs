//! The review resources, answered from the request and never stored:
//! SelfSubjectReview (who am I), SelfSubjectAccessReview,
//! SubjectAccessReview and LocalSubjectAccessReview (may this user do
//! that), SelfSubjectRulesReview (what may I do in a namespace).

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use crate::authz::{self, Attributes, Authorizer, Decision};
use crate::http::Identity;
use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn invalid(rt: &ResourceType, field: &str, message: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!(
            "{}.{} \"\" is invalid: {field}: Invalid value: \"\": {message}",
            rt.kind, rt.group
        ),
    )
}

/// The identity a review asks about.
fn subject(rt: &ResourceType, caller: &Identity, spec: &Value) -> ApiResult<Identity> {
    if rt.kind.starts_with("Self") {
        return Ok(caller.clone());
    }
    let user = text(&spec["user"]);
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    if user.is_empty() && groups.is_empty() {
        return Err(invalid(
            rt,
            "spec.user",
            "at least one of user or group must be specified",
        ));
    }
    Ok(Identity {
        user,
        groups,
        ..Identity::default()
    })
}

fn access(
    authorizer: &dyn Authorizer,
    rt: &ResourceType,
    url_namespace: Option<&str>,
    caller: &Identity,
    spec: &Value,
) -> ApiResult<Value> {
    let subject = subject(rt, caller, spec)?;
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    if ra.is_object() == nra.is_object() {
        return Err(invalid(
            rt,
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let (namespace, group, resource, subresource, name) = (
        text(&ra["namespace"]),
        text(&ra["group"]),
        text(&ra["resource"]),
        text(&ra["subresource"]),
        text(&ra["name"]),
    );
    if let Some(ns) = url_namespace
        && (!ra.is_object() || namespace != ns)
    {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match namespace: {ns}"
        )));
    }
    let verb = if ra.is_object() {
        text(&ra["verb"])
    } else {
        text(&nra["verb"])
    };
    let path = text(&nra["path"]);
    // An unparsable selector is as none, as upstream ignores a selector it cannot use.
    let fields =
        crate::selectors::FieldSelector::parse(&text(&ra["fieldSelector"]["rawSelector"])).ok();
    let attrs = Attributes {
        user: &subject,
        verb: &verb,
        namespace: Some(namespace.as_str()).filter(|n| !n.is_empty()),
        group: &group,
        resource: &resource,
        subresource: Some(subresource.as_str()).filter(|s| !s.is_empty()),
        name: Some(name.as_str()).filter(|n| !n.is_empty()),
        fields: fields.as_ref(),
        path: nra.is_object().then_some(path.as_str()),
    };
    Ok(match authz::decide(authorizer, &attrs) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    })
}

/// SelfSubjectRulesReview's status: the rules split into resource and
/// non-resource ones.
fn rules(rules: &[PolicyRule]) -> Value {
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in rules {
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        } else {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                rule["resourceNames"] = json!(names);
            }
            resource.push(rule);
        }
    }
    json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
}

/// Fills in a review's status.
pub fn answer(
    authorizer: &dyn Authorizer,
    rt: &ResourceType,
    url_namespace: Option<&str>,
    caller: &Identity,
    mut review: Value,
) -> ApiResult<Value> {
    review["apiVersion"] = json!(rt.api_version());
    review["kind"] = json!(rt.kind);
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    let spec = review["spec"].clone();
    review["status"] = match rt.kind {
        "SelfSubjectReview" => {
            json!({ "userInfo": caller.user_info() })
        }
        "SelfSubjectRulesReview" => {
            let ns = text(&spec["namespace"]);
            rules(&authorizer.rules_for(caller, &ns))
        }
        _ => access(
            authorizer,
            rt,
            url_namespace.filter(|_| rt.namespaced),
            caller,
            &spec,
        )?,
    };
    Ok(review)
}
