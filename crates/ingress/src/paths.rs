//! An Ingress path and the request paths it matches, as the Ingress spec
//! defines pathType (and ingress-nginx reads `use-regex`).

use regex::Regex;

#[derive(Clone, Debug)]
pub enum PathMatch {
    /// `Exact`: the whole path, case-sensitive.
    Exact(String),
    /// `Prefix` (and `ImplementationSpecific`): element by element, split
    /// by `/`, so `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never `/foobar`.
    Prefix(String),
    /// With `use-regex`: a case-insensitive expression anchored at the start.
    Regex(String, Regex),
}

/// Why an Ingress path cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("invalid path {path:?}: {reason}")]
pub struct InvalidPath {
    pub path: String,
    pub reason: String,
}

impl PathMatch {
    pub fn new(path: &str, path_type: &str, regex: bool) -> Result<Self, InvalidPath> {
        let path = if path.is_empty() { "/" } else { path };
        if path_type == "Exact" {
            return Ok(Self::Exact(path.to_owned()));
        }
        if regex {
            return Regex::new(&format!("(?i)^{path}"))
                .map(|re| Self::Regex(path.to_owned(), re))
                .map_err(|e| InvalidPath {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
        }
        Ok(Self::Prefix(path.to_owned()))
    }

    /// The path as written, which ranks it: longer paths win.
    pub fn source(&self) -> &str {
        match self {
            Self::Exact(p) | Self::Prefix(p) | Self::Regex(p, _) => p,
        }
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, Self::Exact(_))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => prefix_matches(p, path),
            Self::Regex(_, re) => re.is_match(path),
        }
    }

    /// The request path after `rewrite-target`: the target with its `$n`
    /// filled from the match, as nginx's `rewrite` replaces the whole URI.
    pub fn rewrite(&self, path: &str, target: &str) -> String {
        let Self::Regex(_, re) = self else {
            return target.to_owned();
        };
        match re.captures(path) {
            Some(caps) => {
                let mut out = String::new();
                caps.expand(&braced_groups(target), &mut out);
                out
            }
            None => path.to_owned(),
        }
    }
}

/// `$1x` names group `1x` to the regex crate; nginx means group 1 then `x`.
fn braced_groups(target: &str) -> String {
    let mut out = String::with_capacity(target.len() + 8);
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push_str("${");
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                out.push(d);
                chars.next();
            }
            out.push('}');
        } else {
            out.push(c);
        }
    }
    out
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let elements = |p: &str| {
        p.split('/')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let want = elements(prefix);
    let have = elements(path);
    have.len() >= want.len() && want.iter().zip(&have).all(|(w, h)| w == h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::new(p, "Prefix", false).unwrap()
    }

    #[test]
    fn prefix_matches_element_by_element() {
        // The table of examples in the Ingress documentation.
        assert!(prefix("/").matches("/anything"));
        assert!(prefix("/foo").matches("/foo"));
        assert!(prefix("/foo").matches("/foo/"));
        assert!(prefix("/foo/").matches("/foo"));
        assert!(prefix("/aaa/bb").matches("/aaa/bb/ccc"));
        assert!(!prefix("/aaa/bb").matches("/aaa/bbb"));
        assert!(!prefix("/aaa/bbb/").matches("/aaa/bbbxyz"));
        assert!(!prefix("/foo").matches("/foobar"));
    }

    #[test]
    fn exact_is_the_whole_path_and_case_sensitive() {
        let e = PathMatch::new("/foo", "Exact", true).unwrap();
        assert!(e.matches("/foo"));
        assert!(!e.matches("/foo/"));
        assert!(!e.matches("/FOO"));
    }

    #[test]
    fn regex_paths_are_anchored_and_case_insensitive() {
        let r = PathMatch::new("/app(/|$)(.*)", "ImplementationSpecific", true).unwrap();
        assert!(r.matches("/APP/x"));
        assert!(r.matches("/app"));
        assert!(!r.matches("/x/app/"));
        assert!(!r.matches("/apple"));
        assert!(PathMatch::new("/(", "Prefix", true).is_err());
    }

    #[test]
    fn rewrite_fills_capture_groups_as_nginx() {
        let r = PathMatch::new("/something(/|$)(.*)", "ImplementationSpecific", true).unwrap();
        assert_eq!(r.rewrite("/something/new", "/$2"), "/new");
        assert_eq!(r.rewrite("/something", "/$2"), "/");
        assert_eq!(r.rewrite("/something/a/b", "/x/$2y"), "/x/a/by");
        let plain = PathMatch::new("/api", "ImplementationSpecific", true).unwrap();
        assert_eq!(plain.rewrite("/api/users", "/"), "/");
    }

    #[test]
    fn rewrite_of_an_exact_path_is_the_target() {
        let e = PathMatch::new("/api", "Exact", true).unwrap();
        assert_eq!(e.rewrite("/api", "/v1"), "/v1");
    }
}
