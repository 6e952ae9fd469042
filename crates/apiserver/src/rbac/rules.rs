//! Policy rules: whether a rule allows a request (upstream's RuleAllows),
//! and whether a set of rules covers another rule (its Covers, for
//! escalation checks).

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::authz::Attributes;

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

fn has(items: &[String], want: &str) -> bool {
    items.iter().any(|i| i == "*" || i == want)
}

/// Whether `rule` allows the request `attrs` describes.
pub fn allows(rule: &PolicyRule, attrs: &Attributes<'_>) -> bool {
    if !has(&rule.verbs, attrs.verb) {
        return false;
    }
    if let Some(path) = attrs.path {
        return list(&rule.non_resource_urls)
            .iter()
            .any(|u| url_matches(u, path));
    }
    if !has(list(&rule.api_groups), attrs.group) {
        return false;
    }
    let combined = match attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.to_owned(),
    };
    let resource = list(&rule.resources).iter().any(|r| {
        r == "*"
            || *r == combined
            || attrs
                .subresource
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    let names = list(&rule.resource_names);
    resource && (names.is_empty() || attrs.name.is_some_and(|n| names.iter().any(|r| r == n)))
}

/// `/apis/*` matches every path under `/apis/`; `*` matches all.
fn url_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

/// One verb on one resource (or URL), and optionally one name: what a rule
/// is broken down into to compare it with others.
struct Atom<'a> {
    verb: &'a str,
    group: Option<&'a str>,
    resource: Option<&'a str>,
    name: Option<&'a str>,
    url: Option<&'a str>,
}

impl Atom<'_> {
    /// Whether `owner` grants this atom; a `*` asked for is granted only by a `*`.
    fn covered_by(&self, owner: &PolicyRule) -> bool {
        if !has(&owner.verbs, self.verb) {
            return false;
        }
        if let Some(url) = self.url {
            return list(&owner.non_resource_urls)
                .iter()
                .any(|o| o == "*" || url_matches(o, url) && url != "*");
        }
        let (Some(group), Some(resource)) = (self.group, self.resource) else {
            return false;
        };
        if !has(list(&owner.api_groups), group) {
            return false;
        }
        let resource_ok = list(&owner.resources).iter().any(|o| {
            o == "*"
                || o == resource
                || o.strip_prefix("*/")
                    .is_some_and(|sub| resource.split_once('/').is_some_and(|(_, s)| s == sub))
        });
        let owner_names = list(&owner.resource_names);
        let name_ok = owner_names.is_empty()
            || self
                .name
                .is_some_and(|n| owner_names.iter().any(|o| o == n));
        resource_ok && name_ok
    }

    fn rule(&self) -> PolicyRule {
        let one = |s: Option<&str>| s.map(|s| vec![s.to_owned()]);
        PolicyRule {
            api_groups: one(self.group),
            resources: one(self.resource),
            resource_names: one(self.name),
            non_resource_urls: one(self.url),
            verbs: vec![self.verb.to_owned()],
        }
    }
}

fn atoms(rule: &PolicyRule) -> Vec<Atom<'_>> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for group in list(&rule.api_groups) {
            for resource in list(&rule.resources) {
                let names = list(&rule.resource_names);
                let atom = |name| Atom {
                    verb,
                    group: Some(group),
                    resource: Some(resource),
                    name,
                    url: None,
                };
                if names.is_empty() {
                    out.push(atom(None));
                } else {
                    out.extend(names.iter().map(|n| atom(Some(n.as_str()))));
                }
            }
        }
        for url in list(&rule.non_resource_urls) {
            out.push(Atom {
                verb,
                group: None,
                resource: None,
                name: None,
                url: Some(url),
            });
        }
    }
    out
}

/// The parts of `wanted` that no rule of `owner` grants, one verb and
/// resource each (empty: `owner` covers them all).
pub fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    wanted
        .iter()
        .flat_map(atoms)
        .filter(|a| !owner.iter().any(|o| a.covered_by(o)))
        .map(|a| a.rule())
        .collect()
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// A rule as upstream's CompactString writes it in messages:
/// `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn compact(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (label, items) in [
        ("APIGroups", list(&rule.api_groups)),
        ("Resources", list(&rule.resources)),
        ("NonResourceURLs", list(&rule.non_resource_urls)),
        ("ResourceNames", list(&rule.resource_names)),
        ("Verbs", rule.verbs.as_slice()),
    ] {
        if !items.is_empty() {
            parts.push(format!("{label}:{}", go_quoted(items)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Identity;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..Default::default()
        }
    }

    fn request<'a>(
        user: &'a Identity,
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            user,
            verb,
            namespace: Some("default"),
            group,
            resource,
            subresource: sub,
            name,
            fields: None,
            path: None,
        }
    }

    #[test]
    fn resource_rules() {
        let u = Identity {
            user: "u".into(),
            groups: vec![],
            ..Identity::default()
        };
        let pods = rule(&[""], &["pods"], &["get", "list"]);
        assert!(allows(&pods, &request(&u, "list", "", "pods", None, None)));
        assert!(!allows(
            &pods,
            &request(&u, "delete", "", "pods", None, None)
        ));
        assert!(!allows(
            &pods,
            &request(&u, "list", "apps", "pods", None, None)
        ));
        // A subresource is its own resource: pods does not grant pods/log.
        assert!(!allows(
            &pods,
            &request(&u, "get", "", "pods", Some("log"), Some("p"))
        ));
        let log = rule(&[""], &["pods/log"], &["get"]);
        assert!(allows(
            &log,
            &request(&u, "get", "", "pods", Some("log"), Some("p"))
        ));
        let any_status = rule(&["*"], &["*/status"], &["update"]);
        assert!(allows(
            &any_status,
            &request(
                &u,
                "update",
                "apps",
                "deployments",
                Some("status"),
                Some("d")
            )
        ));
        assert!(!allows(
            &any_status,
            &request(&u, "update", "apps", "deployments", None, Some("d"))
        ));
        let star = rule(&["*"], &["*"], &["*"]);
        assert!(allows(
            &star,
            &request(&u, "deletecollection", "batch", "jobs", None, None)
        ));
        assert!(allows(
            &star,
            &request(&u, "get", "", "pods", Some("exec"), Some("p"))
        ));
        let named = PolicyRule {
            resource_names: Some(strings(&["web"])),
            ..rule(&["apps"], &["deployments"], &["get", "list"])
        };
        assert!(allows(
            &named,
            &request(&u, "get", "apps", "deployments", None, Some("web"))
        ));
        assert!(!allows(
            &named,
            &request(&u, "get", "apps", "deployments", None, Some("db"))
        ));
        // A list has no name, so named rules never grant it.
        assert!(!allows(
            &named,
            &request(&u, "list", "apps", "deployments", None, None)
        ));
        // Resource rules never grant paths.
        assert!(!allows(
            &star,
            &Attributes::non_resource(&u, "get", "/healthz")
        ));
    }

    #[test]
    fn non_resource_rules() {
        let u = Identity {
            user: "u".into(),
            groups: vec![],
            ..Identity::default()
        };
        let urls = PolicyRule {
            non_resource_urls: Some(strings(&["/healthz", "/apis/*"])),
            verbs: strings(&["get"]),
            ..Default::default()
        };
        let path = |p| Attributes::non_resource(&u, "get", p);
        assert!(allows(&urls, &path("/healthz")));
        assert!(allows(&urls, &path("/apis/apps/v1")));
        assert!(!allows(&urls, &path("/healthz/etcd")));
        assert!(!allows(&urls, &path("/api")));
        assert!(!allows(
            &urls,
            &Attributes::non_resource(&u, "post", "/healthz")
        ));
        assert!(!allows(&urls, &request(&u, "get", "", "pods", None, None)));
    }

    #[test]
    fn coverage() {
        let owner = vec![
            rule(&[""], &["pods", "pods/log"], &["get", "list", "watch"]),
            rule(&["apps"], &["*"], &["get"]),
        ];
        assert!(uncovered(&owner, &[rule(&[""], &["pods"], &["get", "list"])]).is_empty());
        assert!(
            uncovered(
                &owner,
                &[rule(&["apps"], &["deployments", "replicasets"], &["get"])]
            )
            .is_empty()
        );
        let missing = uncovered(
            &owner,
            &[rule(&["", "apps"], &["pods"], &["get", "delete"])],
        );
        let text: Vec<String> = missing.iter().map(compact).collect();
        assert_eq!(
            text,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["delete"]}"#,
            ]
        );
        // Asking for `*` needs `*`.
        assert_eq!(uncovered(&owner, &[rule(&[""], &["*"], &["get"])]).len(), 1);
        let everything = vec![rule(&["*"], &["*"], &["*"])];
        assert!(uncovered(&everything, &[rule(&["*"], &["*"], &["*"])]).is_empty());
        // Named grants cover only those names.
        let named_owner = vec![PolicyRule {
            resource_names: Some(strings(&["a"])),
            ..rule(&[""], &["configmaps"], &["get"])
        }];
        let named = |n: &[&str]| PolicyRule {
            resource_names: Some(strings(n)),
            ..rule(&[""], &["configmaps"], &["get"])
        };
        assert!(uncovered(&named_owner, &[named(&["a"])]).is_empty());
        assert_eq!(uncovered(&named_owner, &[named(&["a", "b"])]).len(), 1);
        assert_eq!(
            uncovered(&named_owner, &[rule(&[""], &["configmaps"], &["get"])]).len(),
            1
        );
    }
}
