//! The routing table: every served Ingress merged into servers by host,
//! each with its locations by path, as ingress-nginx builds its
//! configuration. Rebuilt whole on every change and swapped in.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::HeaderMap;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::ResourceExt;

use crate::annotations::{Annotations, CanaryRules};
use crate::backends::{Catalog, Upstream};
use crate::metrics::Origin;
use crate::paths::PathMatch;
use crate::tls::{self, Certificates};

/// What to do with a request.
#[derive(Debug)]
pub enum Route<'a> {
    /// To this upstream, with this path (after any rewrite).
    Proxy {
        upstream: &'a Arc<Upstream>,
        path: Cow<'a, str>,
        /// The rule (or default backend) that matched.
        origin: &'a Arc<Origin>,
        /// Whether the canary took the request.
        canary: bool,
    },
    /// Plain HTTP to a location that wants HTTPS.
    RedirectHttps,
    /// No rule matches and there is no default backend.
    NotFound,
}

#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, Server>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Server>,
    /// Rules without a host.
    catch_all: Server,
    /// The oldest served Ingress's `defaultBackend`, for what no rule matches.
    default: Option<(Arc<Upstream>, Arc<Origin>)>,
    pub certificates: Certificates,
}

#[derive(Debug, Default)]
struct Server {
    /// Longest path first, Exact before others of the same length.
    locations: Vec<Location>,
    tls: bool,
}

#[derive(Debug)]
struct Location {
    path: PathMatch,
    origin: Arc<Origin>,
    main: Arc<Upstream>,
    canary: Option<Canary>,
    rewrite: Option<String>,
    ssl_redirect: bool,
    force_ssl_redirect: bool,
}

#[derive(Debug)]
struct Canary {
    rules: CanaryRules,
    upstream: Arc<Upstream>,
}

impl Canary {
    /// ingress-nginx's precedence: the header, then the cookie (each
    /// `always` or `never`, or for the header an expected value or
    /// pattern), then the weight. `roll` is a uniformly random number.
    fn takes(&self, headers: &HeaderMap, roll: u32) -> bool {
        let r = &self.rules;
        if let Some(value) = r
            .by_header
            .as_deref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
        {
            match (&r.header_value, &r.header_pattern) {
                (Some(want), _) if value == want => return true,
                (None, Some(pattern)) if pattern.is_match(value) => return true,
                (None, None) if value == "always" => return true,
                (None, None) if value == "never" => return false,
                _ => {}
            }
        }
        if let Some(value) = r
            .by_cookie
            .as_deref()
            .and_then(|name| cookie(headers, name))
        {
            match value {
                "always" => return true,
                "never" => return false,
                _ => {}
            }
        }
        roll % r.weight_total < r.weight
    }
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn is_canary(ingress: &Ingress) -> bool {
    Annotations::parse(ingress.metadata.annotations.as_ref())
        .canary
        .is_some()
}

impl Table {
    /// The table for `ingresses` (the served ones, oldest first: on a
    /// conflict the older Ingress keeps the path, as in ingress-nginx).
    pub fn build(
        ingresses: &[Arc<Ingress>],
        catalog: &mut Catalog,
        secrets: &HashMap<(String, String), Arc<Secret>>,
    ) -> Self {
        let mut table = Self::default();
        let mut tls_hosts = HashSet::new();
        let (canaries, mains): (Vec<_>, Vec<_>) = ingresses.iter().partition(|i| is_canary(i));
        for ingress in mains {
            table.add(ingress, catalog, secrets, &mut tls_hosts);
        }
        for ingress in canaries {
            table.add_canary(ingress, catalog);
        }
        for host in tls_hosts {
            if let Some(server) = table.server_mut_existing(&host) {
                server.tls = true;
            }
        }
        for server in table.servers_mut() {
            server
                .locations
                .sort_by_key(|l| (std::cmp::Reverse(l.path.source().len()), !l.path.is_exact()));
        }
        table
    }

    fn servers_mut(&mut self) -> impl Iterator<Item = &mut Server> {
        self.exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain(std::iter::once(&mut self.catch_all))
    }

    fn server_mut(&mut self, host: &str) -> &mut Server {
        if host.is_empty() {
            &mut self.catch_all
        } else if let Some(parent) = host.strip_prefix("*.") {
            self.wildcard.entry(parent.to_owned()).or_default()
        } else {
            self.exact.entry(host.to_owned()).or_default()
        }
    }

    fn server_mut_existing(&mut self, host: &str) -> Option<&mut Server> {
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.get_mut(parent),
            None => self.exact.get_mut(host),
        }
    }

    fn add(
        &mut self,
        ingress: &Ingress,
        catalog: &mut Catalog,
        secrets: &HashMap<(String, String), Arc<Secret>>,
        tls_hosts: &mut HashSet<String>,
    ) {
        let Some(spec) = ingress.spec.as_ref() else {
            return;
        };
        let namespace = ingress.namespace().unwrap_or_default();
        let annotations = Annotations::parse(ingress.metadata.annotations.as_ref());
        for tls in spec.tls.iter().flatten() {
            let secret = tls
                .secret_name
                .as_ref()
                .and_then(|name| secrets.get(&(namespace.clone(), name.clone())));
            let cert = secret.map(|s| tls::from_secret(s));
            if let Some(Err(e)) = &cert {
                tracing::warn!(ingress = %ingress.name_any(), "TLS secret {:?}: {e}; serving the default certificate", tls.secret_name);
            }
            for host in tls.hosts.iter().flatten() {
                let host = host.to_ascii_lowercase();
                if let Some(Ok(cert)) = &cert {
                    self.certificates
                        .0
                        .entry(host.clone())
                        .or_insert_with(|| cert.clone());
                }
                tls_hosts.insert(host);
            }
        }
        if let Some(upstream) = backend(&namespace, spec.default_backend.as_ref(), catalog) {
            let origin = Arc::new(Origin::new(
                namespace.clone(),
                ingress.name_any(),
                String::new(),
            ));
            self.default.get_or_insert((upstream, origin));
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let matcher = match PathMatch::new(
                    path.path.as_deref().unwrap_or("/"),
                    &path.path_type,
                    annotations.use_regex,
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(ingress = %ingress.name_any(), "{e}");
                        continue;
                    }
                };
                let Some(main) = backend(&namespace, Some(&path.backend), catalog) else {
                    continue;
                };
                let server = self.server_mut(&host);
                if server
                    .locations
                    .iter()
                    .any(|l| same_path(&l.path, &matcher))
                {
                    continue;
                }
                server.locations.push(Location {
                    origin: Arc::new(Origin::new(
                        namespace.clone(),
                        ingress.name_any(),
                        matcher.source().to_owned(),
                    )),
                    path: matcher,
                    main,
                    canary: None,
                    rewrite: annotations.rewrite_target.clone(),
                    ssl_redirect: annotations.ssl_redirect,
                    force_ssl_redirect: annotations.force_ssl_redirect,
                });
            }
        }
    }

    /// A canary Ingress joins the locations of the same host and path a
    /// main Ingress has; without one it serves nothing.
    fn add_canary(&mut self, ingress: &Ingress, catalog: &mut Catalog) {
        let Some(spec) = ingress.spec.as_ref() else {
            return;
        };
        let namespace = ingress.namespace().unwrap_or_default();
        let annotations = Annotations::parse(ingress.metadata.annotations.as_ref());
        let Some(rules) = annotations.canary else {
            return;
        };
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let Ok(matcher) = PathMatch::new(
                    path.path.as_deref().unwrap_or("/"),
                    &path.path_type,
                    annotations.use_regex,
                ) else {
                    continue;
                };
                let Some(upstream) = backend(&namespace, Some(&path.backend), catalog) else {
                    continue;
                };
                let server = if host.is_empty() {
                    Some(&mut self.catch_all)
                } else {
                    self.server_mut_existing(&host)
                };
                let location = server.and_then(|s| {
                    s.locations
                        .iter_mut()
                        .find(|l| same_path(&l.path, &matcher) && l.canary.is_none())
                });
                if let Some(location) = location {
                    location.canary = Some(Canary {
                        rules: rules.clone(),
                        upstream,
                    });
                }
            }
        }
    }

    fn server(&self, host: &str) -> &Server {
        let host = host.to_ascii_lowercase();
        if let Some(server) = self.exact.get(&host) {
            return server;
        }
        host.split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.catch_all)
    }

    /// Where a request for `host` and `path` goes; `roll` is a uniformly
    /// random number for canary weights.
    pub fn route<'a>(
        &'a self,
        host: &str,
        path: &'a str,
        https: bool,
        headers: &HeaderMap,
        roll: u32,
    ) -> Route<'a> {
        let server = self.server(host);
        let Some(location) = server.locations.iter().find(|l| l.path.matches(path)) else {
            return match &self.default {
                Some((upstream, origin)) => Route::Proxy {
                    upstream,
                    path: Cow::Borrowed(path),
                    origin,
                    canary: false,
                },
                None => Route::NotFound,
            };
        };
        if !https && (location.force_ssl_redirect || (location.ssl_redirect && server.tls)) {
            return Route::RedirectHttps;
        }
        let (upstream, canary) = match &location.canary {
            Some(canary) if canary.takes(headers, roll) => (&canary.upstream, true),
            _ => (&location.main, false),
        };
        let path = match &location.rewrite {
            Some(target) => Cow::Owned(location.path.rewrite(path, target)),
            None => Cow::Borrowed(path),
        };
        Route::Proxy {
            upstream,
            path,
            origin: &location.origin,
            canary,
        }
    }
}

fn same_path(a: &PathMatch, b: &PathMatch) -> bool {
    a.source() == b.source() && a.is_exact() == b.is_exact()
}

/// Service backends only: resource backends name objects of other
/// controllers' kinds, which kubox cannot serve.
fn backend(
    namespace: &str,
    backend: Option<&IngressBackend>,
    catalog: &mut Catalog,
) -> Option<Arc<Upstream>> {
    let service = backend?.service.as_ref()?;
    Some(catalog.upstream(namespace, service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tests::{service, slice};
    use serde_json::{Value, json};

    fn ingress(name: &str, annotations: Value, spec: Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "d", "name": name, "annotations": annotations},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn rule(host: Option<&str>, paths: &[(&str, &str, &str)]) -> Value {
        let paths: Vec<Value> = paths
            .iter()
            .map(|(path, ty, svc)| {
                json!({"path": path, "pathType": ty,
                       "backend": {"service": {"name": svc, "port": {"number": 80}}}})
            })
            .collect();
        json!({"host": host, "http": {"paths": paths}})
    }

    /// Services `a`…`e` on port 80, each with one endpoint 10.0.0.<n>.
    fn catalog() -> Catalog {
        let names = ["a", "b", "c", "d", "e", "v2"];
        Catalog::new(
            names.iter().map(|n| service("d", n, json!([{"port": 80}]))),
            names
                .iter()
                .enumerate()
                .map(|(i, n)| slice("d", n, ("", 8080), &[&format!("10.0.0.{}", i + 1)], &[])),
        )
    }

    fn table(ingresses: &[Arc<Ingress>]) -> Table {
        Table::build(ingresses, &mut catalog(), &HashMap::new())
    }

    /// The service a request goes to (and the path, if rewritten), `404`,
    /// or `redirect`.
    fn goes(table: &Table, host: &str, path: &str) -> String {
        goes_with(table, host, path, &HeaderMap::new(), 0)
    }

    fn goes_with(table: &Table, host: &str, asked: &str, headers: &HeaderMap, roll: u32) -> String {
        match table.route(host, asked, false, headers, roll) {
            Route::Proxy { upstream, path, .. } => {
                let svc = upstream.name.split(['/', ':']).nth(1).unwrap().to_owned();
                if path == asked {
                    svc
                } else {
                    format!("{svc} {path}")
                }
            }
            Route::RedirectHttps => "redirect".into(),
            Route::NotFound => "404".into(),
        }
    }

    #[test]
    fn exact_hosts_win_over_wildcards_over_the_catch_all() {
        let t = table(&[ingress(
            "i",
            json!({}),
            json!({"rules": [
                rule(Some("foo.example.com"), &[("/", "Prefix", "a")]),
                rule(Some("*.example.com"), &[("/", "Prefix", "b")]),
                rule(None, &[("/", "Prefix", "c")]),
            ]}),
        )]);
        assert_eq!(goes(&t, "foo.example.com", "/x"), "a");
        assert_eq!(goes(&t, "FOO.example.com", "/x"), "a");
        assert_eq!(goes(&t, "bar.example.com", "/x"), "b");
        // A wildcard covers one label only.
        assert_eq!(goes(&t, "baz.bar.example.com", "/x"), "c");
        assert_eq!(goes(&t, "example.com", "/x"), "c");
        assert_eq!(goes(&t, "10.0.0.1", "/x"), "c");
    }

    #[test]
    fn the_longest_path_wins_and_exact_beats_prefix_of_the_same_length() {
        let t = table(&[ingress(
            "i",
            json!({}),
            json!({"rules": [rule(None, &[
                ("/", "Prefix", "a"),
                ("/foo", "Prefix", "b"),
                ("/foo", "Exact", "c"),
                ("/foo/bar", "ImplementationSpecific", "d"),
            ])]}),
        )]);
        assert_eq!(goes(&t, "h", "/foo"), "c");
        assert_eq!(goes(&t, "h", "/foo/"), "b");
        assert_eq!(goes(&t, "h", "/foo/baz"), "b");
        assert_eq!(goes(&t, "h", "/foo/bar/x"), "d");
        assert_eq!(goes(&t, "h", "/foobar"), "a");
    }

    #[test]
    fn nothing_matching_is_404_unless_a_default_backend_exists() {
        let rules = json!([rule(Some("h"), &[("/route1", "Prefix", "a")])]);
        let t = table(&[ingress("i", json!({}), json!({"rules": rules}))]);
        assert_eq!(goes(&t, "h", "/route1"), "a");
        assert_eq!(goes(&t, "h", "/route2"), "404");
        assert_eq!(goes(&t, "other", "/route1"), "404");
        let t = table(&[ingress(
            "i",
            json!({}),
            json!({"rules": rules, "defaultBackend": {"service": {"name": "e", "port": {"number": 80}}}}),
        )]);
        assert_eq!(goes(&t, "h", "/route2"), "e");
        assert_eq!(goes(&t, "other", "/x"), "e");
    }

    #[test]
    fn the_older_ingress_keeps_a_contested_path() {
        let t = table(&[
            ingress(
                "old",
                json!({}),
                json!({"rules": [rule(Some("h"), &[("/", "Prefix", "a")])]}),
            ),
            ingress(
                "new",
                json!({}),
                json!({"rules": [rule(Some("h"), &[("/", "Prefix", "b"), ("/b", "Prefix", "b")])]}),
            ),
        ]);
        assert_eq!(goes(&t, "h", "/"), "a");
        assert_eq!(goes(&t, "h", "/b"), "b");
    }

    #[test]
    fn rewrite_target_with_capture_groups() {
        let t = table(&[ingress(
            "i",
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
            json!({"rules": [rule(None, &[("/app(/|$)(.*)", "ImplementationSpecific", "a")])]}),
        )]);
        assert_eq!(goes(&t, "h", "/app/route1"), "a /route1");
        assert_eq!(goes(&t, "h", "/APP"), "a /");
        assert_eq!(goes(&t, "h", "/other"), "404");
    }

    #[test]
    fn tls_hosts_redirect_plain_http_unless_ssl_redirect_is_false() {
        let spec = |host: &str| {
            json!({"tls": [{"hosts": [host], "secretName": "missing"}],
                   "rules": [rule(Some(host), &[("/", "Prefix", "a")])]})
        };
        let t = table(&[
            ingress("i", json!({}), spec("secure")),
            ingress(
                "j",
                json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
                spec("lax"),
            ),
            ingress(
                "k",
                json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
                json!({"rules": [rule(Some("forced"), &[("/", "Prefix", "a")])]}),
            ),
        ]);
        assert_eq!(goes(&t, "secure", "/"), "redirect");
        assert!(matches!(
            t.route("secure", "/", true, &HeaderMap::new(), 0),
            Route::Proxy { .. }
        ));
        assert_eq!(goes(&t, "lax", "/"), "a");
        assert_eq!(goes(&t, "forced", "/"), "redirect");
    }

    fn canary_tables(annotations: Value) -> Table {
        let mut canary = serde_json::Map::new();
        canary.insert("nginx.ingress.kubernetes.io/canary".into(), "true".into());
        canary.extend(annotations.as_object().unwrap().clone());
        table(&[
            ingress(
                "main",
                json!({}),
                json!({"rules": [rule(Some("h"), &[("/", "Prefix", "a")])]}),
            ),
            ingress(
                "canary",
                Value::Object(canary),
                json!({"rules": [rule(Some("h"), &[("/", "Prefix", "v2")])]}),
            ),
        ])
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn canary_by_header_always_never_and_exact_value() {
        let t = canary_tables(
            json!({"nginx.ingress.kubernetes.io/canary-by-header": "x-canary",
                                     "nginx.ingress.kubernetes.io/canary-weight": "100"}),
        );
        assert_eq!(
            goes_with(&t, "h", "/x", &headers(&[("x-canary", "always")]), 0),
            "v2"
        );
        assert_eq!(
            goes_with(&t, "h", "/x", &headers(&[("x-canary", "never")]), 0),
            "a"
        );
        // Any other value defers to the weight.
        assert_eq!(
            goes_with(&t, "h", "/x", &headers(&[("x-canary", "maybe")]), 0),
            "v2"
        );
        let t = canary_tables(
            json!({"nginx.ingress.kubernetes.io/canary-by-header": "x-canary",
                                     "nginx.ingress.kubernetes.io/canary-by-header-value": "yes"}),
        );
        assert_eq!(
            goes_with(&t, "h", "/x", &headers(&[("x-canary", "yes")]), 0),
            "v2"
        );
        assert_eq!(
            goes_with(&t, "h", "/x", &headers(&[("x-canary", "always")]), 0),
            "a"
        );
        assert_eq!(
            goes_with(&t, "h", "/x", &headers(&[("x-canary", "yess")]), 0),
            "a"
        );
        assert_eq!(goes_with(&t, "h", "/x", &HeaderMap::new(), 0), "a");
    }

    #[test]
    fn canary_header_beats_cookie_beats_weight() {
        let t = canary_tables(
            json!({"nginx.ingress.kubernetes.io/canary-by-header": "x-canary",
                                     "nginx.ingress.kubernetes.io/canary-by-cookie": "canary",
                                     "nginx.ingress.kubernetes.io/canary-weight": "100"}),
        );
        let both = headers(&[("x-canary", "always"), ("cookie", "a=b; canary=never")]);
        assert_eq!(goes_with(&t, "h", "/", &both, 0), "v2");
        let cookie = headers(&[("cookie", "a=b; canary=never")]);
        assert_eq!(goes_with(&t, "h", "/", &cookie, 0), "a");
        assert_eq!(goes_with(&t, "h", "/", &HeaderMap::new(), 0), "v2");
    }

    #[test]
    fn canary_weight_takes_its_share_of_rolls() {
        let t = canary_tables(json!({"nginx.ingress.kubernetes.io/canary-weight": "20"}));
        let canary = (0..1000)
            .filter(|&roll| goes_with(&t, "h", "/x", &HeaderMap::new(), roll) == "v2")
            .count();
        assert_eq!(canary, 200);
        let t = canary_tables(json!({"nginx.ingress.kubernetes.io/canary-weight": "1",
                                     "nginx.ingress.kubernetes.io/canary-weight-total": "3"}));
        let canary = (0..300)
            .filter(|&roll| goes_with(&t, "h", "/x", &HeaderMap::new(), roll) == "v2")
            .count();
        assert_eq!(canary, 100);
    }

    #[test]
    fn a_canary_without_a_main_ingress_serves_nothing() {
        let t = table(&[ingress(
            "canary",
            json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "100"}),
            json!({"rules": [rule(Some("h"), &[("/", "Prefix", "v2")])]}),
        )]);
        assert_eq!(goes(&t, "h", "/"), "404");
    }
}
