//! The ingress-nginx annotations kubox honours, read off an Ingress.

use std::collections::BTreeMap;

use regex::Regex;

const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// How an Ingress asks its paths to be served.
#[derive(Clone, Debug, Default)]
pub struct Annotations {
    /// `rewrite-target`: what the matched URI is replaced with (`$1`… are
    /// the path's capture groups).
    pub rewrite_target: Option<String>,
    /// `use-regex`: paths are case-insensitive regular expressions.
    pub use_regex: bool,
    /// `ssl-redirect` (default true): plain HTTP to a host with TLS is
    /// redirected to HTTPS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirected even when the host has no TLS.
    pub force_ssl_redirect: bool,
    /// `canary: "true"`, with its rules.
    pub canary: Option<CanaryRules>,
}

/// When a canary Ingress takes a request instead of the main one, in
/// ingress-nginx's order: header, then cookie, then weight.
#[derive(Clone, Debug, Default)]
pub struct CanaryRules {
    pub by_header: Option<String>,
    pub header_value: Option<String>,
    pub header_pattern: Option<Regex>,
    pub by_cookie: Option<String>,
    pub weight: u32,
    pub weight_total: u32,
}

impl Annotations {
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let empty = BTreeMap::new();
        let annotations = annotations.unwrap_or(&empty);
        let get = |name: &str| {
            annotations
                .get(&format!("{PREFIX}{name}"))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let flag = |name: &str, default: bool| get(name).map_or(default, |v| v == "true");
        let number = |name: &str, default: u32| {
            get(name)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(default)
        };
        let canary = flag("canary", false).then(|| CanaryRules {
            by_header: get("canary-by-header").map(str::to_owned),
            header_value: get("canary-by-header-value").map(str::to_owned),
            header_pattern: get("canary-by-header-pattern").and_then(|p| Regex::new(p).ok()),
            by_cookie: get("canary-by-cookie").map(str::to_owned),
            weight: number("canary-weight", 0),
            weight_total: number("canary-weight-total", 100).max(1),
        });
        let rewrite_target = get("rewrite-target").map(str::to_owned);
        Self {
            // As ingress-nginx: a rewrite makes the paths regular expressions,
            // so that the target's capture groups mean something.
            use_regex: flag("use-regex", false) || rewrite_target.is_some(),
            rewrite_target,
            ssl_redirect: flag("ssl-redirect", true),
            force_ssl_redirect: flag("force-ssl-redirect", false),
            canary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Annotations {
        let map = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        Annotations::parse(Some(&map))
    }

    #[test]
    fn defaults_are_ingress_nginx_defaults() {
        let a = Annotations::parse(None);
        assert!(a.ssl_redirect && !a.force_ssl_redirect && !a.use_regex);
        assert!(a.canary.is_none() && a.rewrite_target.is_none());
    }

    #[test]
    fn canary_rules_are_read_only_when_canary_is_true() {
        assert!(of(&[("canary-weight", "20")]).canary.is_none());
        let c = of(&[
            ("canary", "true"),
            ("canary-weight", "20"),
            ("canary-by-header", "X-Canary"),
        ])
        .canary
        .unwrap();
        assert_eq!((c.weight, c.weight_total), (20, 100));
        assert_eq!(c.by_header.as_deref(), Some("X-Canary"));
    }

    #[test]
    fn rewrite_target_implies_regex() {
        let a = of(&[("rewrite-target", "/$2")]);
        assert!(a.use_regex);
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
    }
}
