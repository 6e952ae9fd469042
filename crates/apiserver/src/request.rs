//! What a request asks for, read from its method, path and query, as
//! upstream's RequestInfoFactory reads it.

use http::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A request for a resource: `/api/v1/namespaces/ns/pods/name/status` and the like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRequest {
    pub verb: Verb,
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses a resource path; `None` for anything that is not one (discovery,
/// health, unknown paths) or a method no verb maps to.
pub fn parse(method: &Method, path: &str, watch_param: bool) -> Option<ResourceRequest> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    // The deprecated `/watch/` prefix: `/api/v1/watch/namespaces/ns/pods`.
    let mut watch = watch_param;
    if let ["watch", tail @ ..] = rest {
        watch = true;
        rest = tail;
    }
    let (namespace, rest) = match rest {
        // `/namespaces/{name}` and `/namespaces/{name}/{subresource}` are the namespace itself.
        ["namespaces", ns, resource, tail @ ..]
            if !(group.is_empty()
                && ["status", "finalize"].contains(resource)
                && tail.is_empty()) =>
        {
            let mut full = vec![*resource];
            full.extend_from_slice(tail);
            (Some(ns.to_string()), full)
        }
        other => (None, other.to_vec()),
    };
    let (resource, name, subresource) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(name.to_string()), None),
        [resource, name, sub] => (*resource, Some(name.to_string()), Some(sub.to_string())),
        // `nodes/{name}/proxy/{path}`: the rest is the path on the node.
        [resource, name, "proxy", ..] => (*resource, Some(name.to_string()), Some("proxy".into())),
        _ => return None,
    };
    let verb = match (method.clone(), &name) {
        (Method::GET, Some(_)) if watch => Verb::Watch,
        (Method::GET, Some(_)) => Verb::Get,
        (Method::GET, None) if watch => Verb::Watch,
        (Method::GET, None) => Verb::List,
        (Method::POST, _) => Verb::Create,
        (Method::PUT, _) => Verb::Update,
        (Method::PATCH, _) => Verb::Patch,
        (Method::DELETE, Some(_)) => Verb::Delete,
        (Method::DELETE, None) => Verb::DeleteCollection,
        _ => return None,
    };
    Some(ResourceRequest {
        verb,
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: Method, path: &str) -> ResourceRequest {
        parse(&method, path, false).unwrap()
    }

    #[test]
    fn namespaced_paths() {
        let r = p(Method::GET, "/api/v1/namespaces/default/pods/web/log");
        assert_eq!(r.verb, Verb::Get);
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("pods", Some("web"), Some("log"))
        );
        let r = p(Method::DELETE, "/apis/apps/v1/namespaces/ns/deployments");
        assert_eq!((r.verb, r.group.as_str()), (Verb::DeleteCollection, "apps"));
    }

    #[test]
    fn namespaces_themselves() {
        let r = p(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = p(Method::PUT, "/api/v1/namespaces/x/finalize");
        assert_eq!(
            (r.resource.as_str(), r.subresource.as_deref()),
            ("namespaces", Some("finalize"))
        );
        let r = p(Method::GET, "/api/v1/namespaces");
        assert_eq!((r.verb, r.resource.as_str()), (Verb::List, "namespaces"));
    }

    #[test]
    fn watches() {
        assert_eq!(
            parse(&Method::GET, "/api/v1/pods", true).unwrap().verb,
            Verb::Watch
        );
        let r = p(Method::GET, "/api/v1/watch/namespaces/a/pods/b");
        assert_eq!((r.verb, r.name.as_deref()), (Verb::Watch, Some("b")));
    }

    #[test]
    fn node_proxy_paths() {
        let r = p(Method::GET, "/api/v1/nodes/n1/proxy/metrics/resource");
        assert_eq!(
            (r.verb, r.name.as_deref(), r.subresource.as_deref()),
            (Verb::Get, Some("n1"), Some("proxy"))
        );
    }

    #[test]
    fn not_resources() {
        assert!(parse(&Method::GET, "/apis", false).is_none());
        assert!(parse(&Method::GET, "/healthz", false).is_none());
        assert!(parse(&Method::GET, "/api/v1/namespaces/a/pods/b/c/d", false).is_none());
    }
}
