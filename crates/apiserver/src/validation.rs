//! Upstream's name rules and generic metadata checks.

use serde_json::{Value, json};

use crate::status::FieldError;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Why `s` is not a DNS-1123 label, if it is not one.
pub fn dns_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!label_ok(s)).then(|| DNS1123_LABEL_MSG.to_owned())
}

/// Why `s` is not a DNS-1123 subdomain, if it is not one.
pub fn dns_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    (!s.split('.').all(label_ok)).then(|| DNS1123_SUBDOMAIN_MSG.to_owned())
}

/// Why `s` cannot be a path segment (upstream's IsValidPathSegmentName,
/// the rule of RBAC objects' names such as `system:node`).
pub fn path_segment(s: &str) -> Option<String> {
    if s == "." || s == ".." {
        return Some(format!("may not be '{s}'"));
    }
    ["/", "%"]
        .iter()
        .find(|c| s.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
}

/// Which rule a resource's names follow.
pub fn name_rule(plural: &str) -> fn(&str) -> Option<String> {
    match plural {
        "namespaces" | "services" => dns_label,
        "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings" => path_segment,
        _ => dns_subdomain,
    }
}

/// Qualified names (label keys, condition types): an optional DNS
/// subdomain prefix and a name of up to 63 characters.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || dns_subdomain(p).is_some())
    {
        return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    qualified_name_part(name)
}

fn qualified_name_part(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    (!ok).then(|| "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
}

fn label_value(v: &str) -> Option<String> {
    (!v.is_empty() && qualified_name_part(v).is_some())
        .then(|| "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
}

/// Checks `metadata` fields every object shares: name, labels, annotations.
pub fn metadata(meta: &Value, plural: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else if let Some(why) = name_rule(plural)(name) {
        errs.push(FieldError::invalid("metadata.name", &json!(name), why));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(why) = qualified_name(k) {
                errs.push(FieldError::invalid("metadata.labels", &json!(k), why));
            }
            if let Some(why) = v.as_str().and_then(label_value) {
                errs.push(FieldError::invalid("metadata.labels", v, why));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
        for k in annotations.keys() {
            if let Some(why) = qualified_name(k) {
                errs.push(FieldError::invalid("metadata.annotations", &json!(k), why));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_subdomain("go-multiroute.v1").is_none());
        assert!(dns_subdomain("Bad_Name").is_some());
        assert!(dns_label("a.b").is_some());
        assert!(dns_label(&"a".repeat(64)).is_some());
    }

    #[test]
    fn label_rules() {
        let ok = json!({"name": "x", "labels": {"app.kubernetes.io/name": "web", "tier": ""}});
        assert!(metadata(&ok, "pods").is_empty());
        let bad = json!({"name": "x", "labels": {"-bad": "v", "k": "no spaces"}});
        assert_eq!(metadata(&bad, "pods").len(), 2);
    }
}
