//! Label selectors (all operators, from query strings and from objects) and
//! field selectors.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A conjunction of requirements; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn label<'a>(labels: &'a Value, key: &str) -> Option<&'a str> {
    labels.get(key).and_then(Value::as_str)
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(labels, k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(labels, k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(labels, k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => label(labels, k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => label(labels, k).is_some(),
            Requirement::DoesNotExist(k) => label(labels, k).is_none(),
        })
    }

    /// Parses the query-string syntax: `a=b,c!=d,e in (f,g),!h,i`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let bad = || format!("unable to parse requirement: invalid label selector {term:?}");
            let req = if let Some(k) = term.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = split_set_op(term, " notin ") {
                Requirement::NotIn(k, parse_set(rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = split_set_op(term, " in ") {
                Requirement::In(k, parse_set(rest).ok_or_else(bad)?)
            } else if term
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(term.to_owned())
            } else {
                return Err(bad());
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// From a `LabelSelector` object: matchLabels and matchExpressions.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let mut sel = Self::from_map(&v["matchLabels"]);
        for e in v
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e["key"].as_str().unwrap_or_default().to_owned();
            let values: BTreeSet<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            sel.0.push(match e["operator"].as_str() {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::DoesNotExist(key),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            });
        }
        Ok(sel)
    }

    /// From a plain map of labels (ReplicationController and Service selectors).
    pub fn from_map(v: &Value) -> Self {
        Self(
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_owned())
                })
                .collect(),
        )
    }
}

/// A selector object (a `LabelSelector`, or a plain label map as Services and
/// ReplicationControllers have) in the query-string syntax, as kubectl shows
/// it and as the scale subresource reports it.
pub fn selector_text(sel: &Value) -> String {
    let plain = sel.get("matchLabels").is_none() && sel.get("matchExpressions").is_none();
    let labels = if plain { sel } else { &sel["matchLabels"] };
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut parts: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = text(&e["key"]);
        let values: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let values = values.join(",");
        parts.push(match e["operator"].as_str() {
            Some("In") => format!("{key} in ({values})"),
            Some("NotIn") => format!("{key} notin ({values})"),
            Some("Exists") => key,
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_set_op<'a>(term: &'a str, op: &str) -> Option<(String, &'a str)> {
    let (k, rest) = term.split_once(op)?;
    Some((k.trim().to_owned(), rest))
}

fn parse_set(s: &str) -> Option<BTreeSet<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// A field selector: `metadata.name=x,status.phase!=Running`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            reqs.push((field.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields used, to check them against what the resource supports.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _, _)| f.as_str())
    }

    /// The same requirements on fields named otherwise.
    pub fn renamed(&self, name: impl Fn(&str) -> String) -> Self {
        Self(
            self.0
                .iter()
                .map(|(f, eq, v)| (name(f), *eq, v.clone()))
                .collect(),
        )
    }

    /// A `metadata.name=x` requirement, which lets a watch or list look at one key.
    pub fn exact_name(&self) -> Option<&str> {
        self.requires("metadata.name")
    }

    /// The value `field` must equal, if the selector says.
    pub fn requires(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field_value(obj, field);
            (actual.as_deref() == Some(value.as_str())) == *equal
        })
    }
}

/// A field's value as field selectors compare it: by its JSON path, with
/// absent strings as "".
fn field_value(obj: &Value, field: &str) -> Option<String> {
    let v = field.split('.').try_fold(obj, |v, k| v.get(k));
    Some(match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return None,
    })
}

/// Field selectors each resource supports beyond metadata.name and
/// metadata.namespace, as upstream's field label conversion funcs list them.
pub fn supported_fields(plural: &str) -> &'static [&'static str] {
    match plural {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "secrets" => &["type"],
        "namespaces" => &["status.phase"],
        "nodes" => &["spec.unschedulable"],
        "replicationcontrollers" => &["status.replicas"],
        "replicasets" => &["status.replicas"],
        "jobs" => &["status.successful"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_operators() {
        let labels = json!({"app": "web", "tier": "front", "env": "prod"});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("env in (prod, staging)", true),
            ("env notin (prod)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app in (web)", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&labels),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn selector_objects() {
        let sel = LabelSelector::from_value(&json!({"matchLabels": {"app": "a"}, "matchExpressions": [{"key": "t", "operator": "Exists"}]})).unwrap();
        assert!(sel.matches(&json!({"app": "a", "t": "x"})));
        assert!(!sel.matches(&json!({"app": "a"})));
    }

    #[test]
    fn selectors_as_text() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(selector_text(&sel), "app=web,tier in (a,b)");
        assert_eq!(selector_text(&json!({"run": "redis"})), "run=redis");
        assert!(
            LabelSelector::parse(&selector_text(&sel))
                .unwrap()
                .matches(&json!({"app": "web", "tier": "b"}))
        );
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .matches(&json!({"spec": {}}))
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=p")
                .unwrap()
                .exact_name(),
            Some("p")
        );
    }
}
