//! The HTTPS front: TLS with optional client certificates, authentication,
//! routing to discovery, health and the generic resource handlers, content
//! negotiation (JSON, Table, PartialObjectMetadata) and watch streams.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use crate::api::{Api, ListOptions, ObjectRef, WriteOptions};
use crate::apply;
use crate::authz::{self, Authorizer, Decision};
use crate::cache::{EventType, WatchEvent};
use crate::deletion::DeleteOptions;
use crate::discovery;
use crate::openapi;
use crate::patch::PatchType;
use crate::registry::ResourceType;
use crate::request::{self, ResourceRequest, Verb};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, FieldError};
use crate::swagger;
use crate::table::{self, IncludeObject};

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted, as upstream's 3 MiB limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The user of requests without credentials, and their only group.
pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

/// Who made a request: upstream's user info, whose `uid` and `extra` are
/// empty when the credential carries none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// Upstream's UserInfo, as reviews and audit events show it (empty
    /// fields omitted: a request that failed authentication has `{}`).
    pub fn user_info(&self) -> Value {
        let mut info = json!({});
        if !self.user.is_empty() {
            info["username"] = json!(self.user);
        }
        if !self.groups.is_empty() {
            info["groups"] = json!(self.groups);
        }
        if !self.uid.is_empty() {
            info["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            info["extra"] = json!(self.extra);
        }
        info
    }
}

/// The `extra` key naming the credential a user authenticated with
/// (a certificate's fingerprint, a token's ID), as upstream's.
pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

pub struct Handler {
    pub api: Arc<Api>,
    pub authorizer: std::sync::Arc<dyn Authorizer>,
    /// The Node authorizer, whose graph a node's refused request waits for.
    pub node_graph: Option<Arc<crate::nodeauthz::NodeAuthorizer>>,
    pub metrics: crate::metrics::Metrics,
    /// How `pods/log` reaches node agents.
    pub nodes: crate::node_proxy::NodeClient,
    /// ServiceAccount tokens: issued, verified, their keys published.
    pub tokens: Arc<crate::serviceaccount::Tokens>,
    /// What metrics-server last measured, served as metrics.k8s.io.
    pub resource_metrics: Arc<crate::resource_metrics::MetricsWindow>,
    /// The users of `--token-auth-file`, by bearer token.
    pub static_tokens: crate::token_file::TokenFile,
    /// The audit log, when a policy and a log path are given.
    pub audit: Option<Arc<crate::audit::Audit>>,
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn respond_json(code: StatusCode, v: &Value, content_type: &str) -> Response<Body> {
    respond_bytes(
        code,
        serde_json::to_vec(v).unwrap_or_default(),
        content_type,
    )
}

fn respond_bytes(code: StatusCode, json: impl Into<Bytes>, content_type: &str) -> Response<Body> {
    let mut resp = Response::new(full(json));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    resp
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    respond_json(e.code, &e.to_status(), "application/json")
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// How the client wants objects back, from its Accept header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Object,
    Table,
    Metadata,
}

fn form(accept: &str) -> Form {
    // The first acceptable alternative wins; kubectl lists Table first.
    for alt in accept.split(',') {
        let alt = alt.replace(' ', "");
        if alt.contains("as=Table") {
            return Form::Table;
        }
        if alt.contains("as=PartialObjectMetadata") {
            return Form::Metadata;
        }
        if alt.starts_with("application/json")
            || alt.starts_with("*/*")
            || alt.starts_with("application/*")
        {
            return Form::Object;
        }
    }
    Form::Object
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn list_options(q: &HashMap<String, String>, name: Option<&str>) -> ApiResult<ListOptions> {
    let mut field_selector = q
        .get("fieldSelector")
        .map(String::as_str)
        .unwrap_or_default()
        .to_owned();
    // A watch on a named object is a watch filtered to that name.
    if let Some(n) = name {
        if !field_selector.is_empty() {
            field_selector.push(',');
        }
        field_selector.push_str(&format!("metadata.name={n}"));
    }
    Ok(ListOptions {
        label_selector: LabelSelector::parse(
            q.get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(ApiError::bad_request)?,
        field_selector: FieldSelector::parse(&field_selector).map_err(ApiError::bad_request)?,
        resource_version: q.get("resourceVersion").filter(|s| !s.is_empty()).cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .cloned(),
        limit: match q.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
            None => 0,
        },
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
        allow_bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        send_initial_events: q.get("sendInitialEvents").is_some_and(|v| v == "true"),
    })
}

fn write_options(q: &HashMap<String, String>) -> WriteOptions {
    WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
        user: None,
        field_manager: q.get("fieldManager").cloned().unwrap_or_default(),
        force: q.get("force").is_some_and(|v| v == "true"),
    }
}

/// Upstream's checks of a PATCH's options: apply needs a field manager,
/// and only apply may be forced.
fn check_patch_options(q: &HashMap<String, String>, patch_type: PatchType) -> ApiResult<()> {
    let refusal = |field: &str, reason, message: &str| {
        ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![FieldError {
                reason,
                field: field.into(),
                message: message.into(),
            }],
        )
    };
    let manager = q.get("fieldManager").map_or("", String::as_str);
    if patch_type == PatchType::Apply && manager.is_empty() {
        return Err(refusal(
            "fieldManager",
            "FieldValueRequired",
            "Required value: is required for apply patch",
        ));
    }
    if patch_type != PatchType::Apply && q.contains_key("force") {
        return Err(refusal(
            "force",
            "FieldValueForbidden",
            "Forbidden: may not be specified for non-apply patch",
        ));
    }
    if manager.len() > apply::MAX_MANAGER_LEN {
        return Err(refusal(
            "fieldManager",
            "FieldValueTooLong",
            &format!(
                "Too long: may not be more than {} bytes",
                apply::MAX_MANAGER_LEN
            ),
        ));
    }
    Ok(())
}

fn include_object(q: &HashMap<String, String>) -> IncludeObject {
    match q.get("includeObject").map(String::as_str) {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

/// Media types an object body may come in.
const OBJECT_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    kubox_protobuf::MEDIA_TYPE,
];

/// Reads a create, update or delete body as JSON, converting YAML and the
/// protobuf client-go's typed clients send.
async fn read_object_body(body: Incoming, content_type: &str) -> ApiResult<Bytes> {
    let json = read_object_json(body, content_type).await?;
    crate::audit::request_object(&json);
    Ok(json)
}

async fn read_object_json(body: Incoming, content_type: &str) -> ApiResult<Bytes> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/json" | "*/*" => read_body(body).await,
        "application/yaml" => {
            let raw = read_body(body).await?;
            let value: Value = serde_yaml_ng::from_slice(&raw).map_err(|e| {
                ApiError::bad_request(format!("error decoding YAML request body: {e}"))
            })?;
            Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
        }
        kubox_protobuf::MEDIA_TYPE => {
            let raw = read_body(body).await?;
            let value = kubox_protobuf::decode_object(&raw).map_err(|e| {
                ApiError::bad_request(format!("error decoding protobuf request body: {e}"))
            })?;
            Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
        }
        _ => Err(ApiError::unsupported_media_type(OBJECT_MEDIA_TYPES)),
    }
}

/// The request's Content-Type, or "" when it has none.
fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn read_body(body: Incoming) -> ApiResult<Bytes> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

impl Handler {
    /// The audit record of a request, when there is an audit log and its
    /// policy records the request, and the request's resource.
    fn audit_record(
        &self,
        req: &Request<Incoming>,
        path: &str,
        user: &Identity,
        impersonated: &Identity,
        peer: std::net::IpAddr,
    ) -> Option<(crate::audit::Record, Option<ResourceRequest>)> {
        let audit = self.audit.as_ref()?;
        let watch = query(req)
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1");
        let rr = request::parse(req.method(), path, watch);
        let method = req.method().as_str().to_ascii_lowercase();
        let attrs = crate::audit::RequestAttributes {
            user,
            verb: rr.as_ref().map_or(method.as_str(), |rr| rr.verb.as_str()),
            resource: rr.as_ref(),
            path,
        };
        let uri = req
            .uri()
            .path_and_query()
            .map_or(path.to_owned(), |pq| pq.as_str().to_owned());
        let agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let record = audit.begin(&attrs, impersonated, &uri, peer, agent)?;
        Some((record, rr))
    }

    /// Upstream's `WithFailedAuthenticationAudit`: a request whose
    /// credentials were refused is audited by the policy as a request of
    /// no user, in one ResponseStarted event saying what was attempted.
    fn audit_failed_authentication(
        &self,
        req: &Request<Incoming>,
        path: &str,
        peer: std::net::IpAddr,
    ) {
        let nobody = Identity::default();
        let Some((record, _)) = self.audit_record(req, path, &nobody, &nobody, peer) else {
            return;
        };
        let mut status = crate::audit::response_status(401, None);
        status["message"] = json!("Authentication failed, attempted: bearer");
        record.emit(
            crate::audit::Stage::ResponseStarted,
            None,
            Some(&status),
            None,
        );
    }

    pub async fn handle(
        &self,
        req: Request<Incoming>,
        identity: Option<Identity>,
        peer: std::net::IpAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        // A client certificate authenticates first, then a bearer token,
        // which must be good: a bad one is refused, never taken as anonymous.
        let authenticated = match (identity, bearer(req.headers())) {
            (Some(identity), _) => identity,
            (None, Some(token)) => match self.static_tokens.authenticate(token) {
                Some(identity) => identity,
                None => {
                    let verified = match crate::bootstrap_token::Token::parse(token) {
                        Some(bootstrap) => {
                            crate::bootstrap_token::authenticate(&self.api, &bootstrap).await
                        }
                        None => self.tokens.authenticate(&self.api, token).await,
                    };
                    match verified {
                        Ok(identity) => identity,
                        Err(why) => {
                            tracing::debug!(%why, "bearer token refused");
                            self.audit_failed_authentication(&req, &path, peer);
                            return error_response(&ApiError::unauthorized());
                        }
                    }
                }
            },
            // Requests without credentials are the anonymous user's, whom
            // RBAC lets reach only the public endpoints, as upstream.
            (None, None) => Identity {
                user: ANONYMOUS.to_owned(),
                groups: vec![UNAUTHENTICATED.to_owned()],
                ..Identity::default()
            },
        };
        let identity = match crate::impersonation::impersonate(
            &*self.authorizer,
            &authenticated,
            req.headers(),
        ) {
            Ok(i) => i,
            Err(e) => return error_response(&e),
        };
        let Some((record, rr)) = self.audit_record(&req, &path, &authenticated, &identity, peer)
        else {
            return self.serve(req, &path, &identity).await;
        };
        use crate::audit::{Level, Stage};
        record.emit(Stage::RequestReceived, None, None, None);
        let handling = std::panic::AssertUnwindSafe(self.serve(req, &path, &identity));
        let (outcome, recorded) = record.run(futures::FutureExt::catch_unwind(handling)).await;
        let resp = match outcome {
            Ok(resp) => resp,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let e = ApiError::internal(format!("APIServer panic'd: {message}"));
                let status = crate::audit::response_status(500, Some(&e.to_status()));
                record.emit(Stage::Panic, Some(&recorded), Some(&status), None);
                return error_response(&e);
            }
        };
        let code = resp.status().as_u16();
        let streaming = rr.as_ref().is_some_and(|rr| rr.verb == Verb::Watch) && code == 200;
        if streaming {
            // A watch answers at once and goes on: its end is ResponseComplete.
            let status = crate::audit::response_status(code, None);
            record.emit(Stage::ResponseStarted, Some(&recorded), Some(&status), None);
            let (parts, body) = resp.into_parts();
            let done = move || {
                record.emit(
                    Stage::ResponseComplete,
                    Some(&recorded),
                    Some(&status),
                    None,
                );
            };
            return Response::from_parts(parts, BoxBody::new(OnEnd::new(body, done)));
        }
        // Failures (for their Status) and RequestResponse bodies are read
        // whole: neither streams.
        if code < 400 && record.level() < Level::RequestResponse {
            let status = crate::audit::response_status(code, None);
            record.emit(
                Stage::ResponseComplete,
                Some(&recorded),
                Some(&status),
                None,
            );
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let object: Option<Value> = serde_json::from_slice(&bytes).ok();
        let status = crate::audit::response_status(code, object.as_ref());
        record.emit(
            Stage::ResponseComplete,
            Some(&recorded),
            Some(&status),
            object.as_ref(),
        );
        Response::from_parts(parts, full(bytes))
    }

    /// Routes an authenticated request, with the warnings it gathers.
    async fn serve(
        &self,
        req: Request<Incoming>,
        path: &str,
        identity: &Identity,
    ) -> Response<Body> {
        let (result, warnings) = crate::warning::gather(self.route(req, path, identity)).await;
        let mut resp = result.unwrap_or_else(|e| error_response(&e));
        crate::warning::attach(&mut resp, &warnings);
        resp
    }

    /// Authorizes a request for a URL that names no resource.
    fn authorize_path(&self, user: &Identity, method: &Method, path: &str) -> ApiResult<()> {
        let verb = method.as_str().to_ascii_lowercase();
        let attrs = authz::Attributes::non_resource(user, &verb, path);
        audited(authz::decide(&*self.authorizer, &attrs), &attrs)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        identity: &Identity,
    ) -> ApiResult<Response<Body>> {
        let q = query(&req);
        let watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
        let rr = request::parse(req.method(), path, watch);
        if rr.is_none() {
            self.authorize_path(identity, req.method(), path)?;
        }
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let aggregated = accept.contains("as=APIGroupDiscoveryList");
        let registry = &self.api.registry;
        let ok = |v: Value| Ok(respond_json(StatusCode::OK, &v, "application/json"));
        match path.trim_end_matches('/') {
            "/healthz" | "/livez" => return Ok(text(StatusCode::OK, "ok".into())),
            "/readyz" => {
                let caches = self.api.ready();
                let hooks = self.api.is_bootstrapped();
                let ready = caches && hooks;
                let verbose = req.uri().query().is_some_and(|q| q.contains("verbose"));
                let mark = |ok: bool| if ok { "+" } else { "-" };
                let body = if verbose {
                    format!(
                        "[+]ping ok\n[+]etcd ok\n[{}]watch-cache {}\n[{}]poststarthook/rbac/bootstrap-roles {}\nreadyz check {}\n",
                        mark(caches),
                        if caches { "ok" } else { "failed" },
                        mark(hooks),
                        if hooks { "ok" } else { "failed: not finished" },
                        if ready { "passed" } else { "failed" }
                    )
                } else if ready {
                    "ok".to_owned()
                } else {
                    "failed".to_owned()
                };
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                return Ok(text(code, body));
            }
            "/version" => return ok(discovery::version()),
            "/.well-known/openid-configuration" => return ok(self.tokens.openid_configuration()),
            "/openid/v1/jwks" => {
                return Ok(respond_json(
                    StatusCode::OK,
                    &self.tokens.jwks(),
                    "application/jwk-set+json",
                ));
            }
            "/metrics" => {
                let mut resp = text(StatusCode::OK, self.metrics.render());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(kubox_prometheus::CONTENT_TYPE),
                );
                return Ok(resp);
            }
            "/openapi/v3" => return ok(openapi::Documents::get(registry).index()),
            "/openapi/v2" if !swagger::accepts_json(&accept) => {
                return Err(ApiError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "NotAcceptable",
                    "only the following media types are accepted: application/json",
                ));
            }
            "/openapi/v2" => {
                let mut resp = Response::new(full(swagger::document(registry).to_vec()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(resp);
            }
            "/api" if aggregated => {
                return Ok(respond_json(
                    StatusCode::OK,
                    &discovery::aggregated(registry, true),
                    discovery::AGGREGATED,
                ));
            }
            "/apis" if aggregated => {
                return Ok(respond_json(
                    StatusCode::OK,
                    &discovery::aggregated(registry, false),
                    discovery::AGGREGATED,
                ));
            }
            "/api" => return ok(discovery::api_versions()),
            "/apis" => return ok(discovery::api_groups(registry)),
            _ => {}
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            let doc = openapi::Documents::get(registry)
                .document(gv)
                .ok_or_else(ApiError::no_route)?;
            let mut resp = Response::new(full(doc.to_vec()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(resp);
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            ["api", v] => {
                return discovery::resource_list(registry, "", v)
                    .map_or_else(|| Err(ApiError::no_route()), ok);
            }
            ["apis", g] => {
                return discovery::api_group(registry, g)
                    .map_or_else(|| Err(ApiError::no_route()), ok);
            }
            ["apis", g, v] => {
                return discovery::resource_list(registry, g, v)
                    .map_or_else(|| Err(ApiError::no_route()), ok);
            }
            _ => {}
        }
        let Some(rr) = rr else {
            return Err(
                if matches!(
                    *req.method(),
                    Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                ) {
                    ApiError::no_route()
                } else {
                    ApiError::method_not_allowed()
                },
            );
        };
        let started = std::time::Instant::now();
        let held = self.metrics.hold(&rr);
        let dry_run = write_options(&q).dry_run;
        let mut authorized = self.authorize(identity, &rr, &q);
        if let (Err(_), Some(graph)) = (&authorized, &self.node_graph)
            && crate::nodeauthz::node_name(identity).is_some()
        {
            // Refused for want of a path the graph has not taken in yet?
            graph.catch_up(&self.api).await;
            authorized = self.authorize(identity, &rr, &q);
        }
        let result = match authorized {
            Err(e) => Err(e),
            Ok(()) => match registry.get(&rr.group, &rr.version, &rr.resource).cloned() {
                Some(rt) if rt.review => self.review(req, &rr, &rt, identity).await,
                Some(rt) if rt.metrics => self.resource_metrics(&rr, &rt, &q),
                Some(rt) => {
                    self.resource(req, rr.clone(), &rt, q, form(&accept), identity)
                        .await
                }
                None => Err(ApiError::no_route()),
            },
        };
        let code = match &result {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.code.as_u16(),
        };
        self.metrics.observe(&rr, dry_run, code, started.elapsed());
        match result {
            // A watch is in flight for as long as its body streams.
            Ok(resp) if rr.verb == Verb::Watch => Ok(resp.map(|body| {
                BodyExt::boxed(body.map_frame(move |frame| {
                    let _ = &held;
                    frame
                }))
            })),
            result => result,
        }
    }

    /// metrics.k8s.io: `get` and `list` only, as metrics-server serves it.
    fn resource_metrics(
        &self,
        rr: &ResourceRequest,
        rt: &ResourceType,
        q: &HashMap<String, String>,
    ) -> ApiResult<Response<Body>> {
        let ns = rr.namespace.as_deref().filter(|_| rt.namespaced);
        let found = match (rr.verb, rr.name.as_deref(), &rr.subresource) {
            (Verb::Get, Some(name), None) => self.resource_metrics.get(rt, ns, name)?,
            (Verb::List, None, None) => self.resource_metrics.list(rt, ns, &list_options(q, None)?),
            _ => return Err(ApiError::method_not_allowed()),
        };
        Ok(respond_json(StatusCode::OK, &found, "application/json"))
    }

    async fn resource(
        &self,
        req: Request<Incoming>,
        rr: ResourceRequest,
        rt: &ResourceType,
        q: HashMap<String, String>,
        form: Form,
        user: &Identity,
    ) -> ApiResult<Response<Body>> {
        let api = &self.api;
        let ns = if rt.namespaced {
            rr.namespace.as_deref()
        } else {
            None
        };
        if rt.namespaced && ns.is_none() && !matches!(rr.verb, Verb::List | Verb::Watch) {
            return Err(ApiError::no_route());
        }
        let sub = rr.subresource.as_deref();
        match sub {
            None => {}
            Some("status")
                if rt.status_subresource
                    && matches!(rr.verb, Verb::Get | Verb::Update | Verb::Patch) => {}
            // The namespace controller hands a namespace back through
            // `finalize` once it is empty.
            Some("finalize") if rt.plural == "namespaces" && rr.verb == Verb::Update => {}
            Some("approval")
                if rt.plural == "certificatesigningrequests"
                    && matches!(rr.verb, Verb::Get | Verb::Update | Verb::Patch) => {}
            Some("scale") if rt.scale_subresource => {
                return self.scale(req, &rr, rt, ns, &q).await;
            }
            Some(sub @ ("exec" | "attach" | "portforward")) if rt.plural == "pods" => {
                let kind = match sub {
                    "exec" => crate::node_proxy::Stream::Exec,
                    "attach" => crate::node_proxy::Stream::Attach,
                    _ => crate::node_proxy::Stream::PortForward,
                };
                let name = rr.name.as_deref().unwrap_or_default();
                return crate::node_proxy::pod_stream(
                    api,
                    &self.nodes,
                    ns.unwrap_or_default(),
                    name,
                    kind,
                    req,
                )
                .await;
            }
            Some("proxy") if rt.plural == "nodes" && rr.verb == Verb::Get => {
                let name = rr.name.as_deref().unwrap_or_default();
                return crate::node_proxy::node_get(api, &self.nodes, name, req.uri()).await;
            }
            Some("log") if rt.plural == "pods" && rr.verb == Verb::Get => {
                let name = rr.name.as_deref().unwrap_or_default();
                return crate::node_proxy::pod_log(
                    api,
                    &self.nodes,
                    ns.unwrap_or_default(),
                    name,
                    &q,
                )
                .await;
            }
            Some("eviction") if rt.plural == "pods" && rr.verb == Verb::Create => {
                let target = ObjectRef {
                    rt,
                    ns,
                    name: rr.name.as_deref().unwrap_or_default(),
                    subresource: Some("eviction"),
                };
                let content_type = content_type(&req);
                let body = read_object_body(req.into_body(), &content_type).await?;
                let pod = api.get(rt, ns, target.name).await?;
                crate::admission::noderestriction::eviction(user, &pod)?;
                let status = self.api.evict(target, &body).await?;
                return Ok(respond_json(
                    StatusCode::CREATED,
                    &status,
                    "application/json",
                ));
            }
            Some("token") if rt.plural == "serviceaccounts" && rr.verb == Verb::Create => {
                let content_type = content_type(&req);
                let body = read_object_body(req.into_body(), &content_type).await?;
                let name = rr.name.as_deref().unwrap_or_default();
                if crate::nodeauthz::node_name(user).is_some() {
                    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let bound = request["spec"]["boundObjectRef"]["name"]
                        .as_str()
                        .filter(|n| !n.is_empty());
                    let pods = api.registry.get("", "v1", "pods");
                    let pod = match (bound, pods) {
                        (Some(pod), Some(pods)) => api.get(pods, ns, pod).await.ok(),
                        _ => None,
                    };
                    crate::admission::noderestriction::token_request(
                        user,
                        name,
                        &request,
                        pod.as_ref(),
                    )?;
                }
                let issued = self
                    .tokens
                    .request(api, ns.unwrap_or_default(), name, &body)
                    .await?;
                return Ok(respond_json(
                    StatusCode::CREATED,
                    &issued,
                    "application/json",
                ));
            }
            Some("binding") if rt.plural == "pods" && rr.verb == Verb::Create => {
                let target = ObjectRef {
                    rt,
                    ns,
                    name: rr.name.as_deref().unwrap_or_default(),
                    subresource: Some("binding"),
                };
                let content_type = content_type(&req);
                let body = read_object_body(req.into_body(), &content_type).await?;
                let status = self
                    .api
                    .bind(target, &body, write_options(&q).dry_run)
                    .await?;
                return Ok(respond_json(
                    StatusCode::CREATED,
                    &status,
                    "application/json",
                ));
            }
            _ => return Err(ApiError::no_route()),
        }
        let content_type = content_type(&req);
        let name = rr.name.as_deref();
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut wopts = WriteOptions {
            user: Some(user.clone()),
            ..write_options(&q)
        };
        wopts.field_manager = apply::manager_name(Some(wopts.field_manager.as_str()), user_agent);
        let target = ObjectRef {
            rt,
            ns,
            name: name.unwrap_or_default(),
            subresource: sub,
        };
        let (status, object, warnings) = match rr.verb {
            Verb::Get => {
                let obj = api.get(rt, ns, name.unwrap_or_default()).await?;
                (StatusCode::OK, self.present(rt, obj, form, &q), Vec::new())
            }
            Verb::List => {
                let list = api.list_shared(rt, ns, &list_options(&q, None)?).await?;
                let list = match form {
                    Form::Object => {
                        return Ok(respond_bytes(
                            StatusCode::OK,
                            list.to_json(),
                            "application/json",
                        ));
                    }
                    Form::Table => {
                        let objects: Vec<Value> = list.items.iter().map(|s| s.object()).collect();
                        let items: Vec<&Value> = objects.iter().collect();
                        table::table(rt, &items, list.metadata.clone(), include_object(&q), true)
                    }
                    Form::Metadata => {
                        let items: Vec<Value> = list
                            .items
                            .iter()
                            .map(|s| table::partial_metadata(s.metadata()))
                            .collect();
                        json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list.metadata, "items": items})
                    }
                };
                (StatusCode::OK, list, Vec::new())
            }
            Verb::Watch => return self.watch(rt, ns, list_options(&q, name)?, form, &q).await,
            Verb::Create => {
                if name.is_some() {
                    return Err(ApiError::method_not_allowed());
                }
                let mut body = read_object_body(req.into_body(), &content_type).await?;
                if rt.plural == "certificatesigningrequests" {
                    body = requested_by(&body, user)?;
                }
                let w = api.create(rt, ns, &body, &wopts).await?;
                (StatusCode::CREATED, w.object, w.warnings)
            }
            Verb::Update => {
                // Typed clients (kubectl certificate approve) PUT protobuf.
                let body = read_object_body(req.into_body(), &content_type).await?;
                let w = api.update(target, &body, &wopts).await?;
                (StatusCode::OK, w.object, w.warnings)
            }
            Verb::Patch => {
                let patch_type = PatchType::from_content_type(&content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(PatchType::ACCEPTED))?;
                check_patch_options(&q, patch_type)?;
                let body = read_body(req.into_body()).await?;
                crate::audit::request_object(&body);
                if patch_type == PatchType::Apply {
                    let (w, created) = api.apply(target, &body, &wopts).await?;
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    (status, w.object, w.warnings)
                } else {
                    let w = api.patch(target, patch_type, &body, &wopts).await?;
                    (StatusCode::OK, w.object, w.warnings)
                }
            }
            Verb::Delete | Verb::DeleteCollection => {
                let body = read_object_body(req.into_body(), &content_type).await?;
                let body: Value = if body.is_empty() {
                    json!({})
                } else {
                    serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?
                };
                let opts = DeleteOptions {
                    user: Some(user.clone()),
                    ..DeleteOptions::parse(&body, &q)?
                };
                let obj = if rr.verb == Verb::Delete {
                    api.delete(rt, ns, name.unwrap_or_default(), &opts).await?
                } else {
                    api.delete_collection(rt, ns, &list_options(&q, None)?, &opts)
                        .await?
                };
                (StatusCode::OK, obj, Vec::new())
            }
        };
        let mut resp = respond_json(status, &object, "application/json");
        crate::warning::attach(&mut resp, &warnings);
        Ok(resp)
    }

    /// Reviews: who the caller is, and whether a user may do something.
    async fn review(
        &self,
        req: Request<Incoming>,
        rr: &ResourceRequest,
        rt: &ResourceType,
        caller: &Identity,
    ) -> ApiResult<Response<Body>> {
        if rr.verb != Verb::Create || rr.name.is_some() || rr.subresource.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        let media = content_type(&req);
        let body = read_object_body(req.into_body(), &media).await?;
        let review: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
        let review = crate::review::answer(
            &*self.authorizer,
            rt,
            rr.namespace.as_deref(),
            caller,
            review,
        )?;
        Ok(respond_json(
            StatusCode::CREATED,
            &review,
            "application/json",
        ))
    }

    fn authorize(
        &self,
        user: &Identity,
        rr: &ResourceRequest,
        q: &HashMap<String, String>,
    ) -> ApiResult<()> {
        // A list or watch of one name is authorized as a read of that name,
        // as upstream's request info takes it from the field selector.
        let fields = match rr.verb {
            Verb::List | Verb::Watch => q
                .get("fieldSelector")
                .and_then(|f| FieldSelector::parse(f).ok()),
            _ => None,
        };
        let selected = fields
            .as_ref()
            .and_then(FieldSelector::exact_name)
            .filter(|n| crate::validation::path_segment(n).is_none());
        let attrs = authz::Attributes {
            user,
            verb: rr.verb.as_str(),
            namespace: rr.namespace.as_deref(),
            group: &rr.group,
            resource: &rr.resource,
            subresource: rr.subresource.as_deref(),
            name: rr.name.as_deref().or(selected),
            fields: fields.as_ref(),
            path: None,
        };
        audited(authz::decide(&*self.authorizer, &attrs), &attrs)
    }

    async fn scale(
        &self,
        req: Request<Incoming>,
        rr: &ResourceRequest,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &HashMap<String, String>,
    ) -> ApiResult<Response<Body>> {
        let target = ObjectRef {
            rt,
            ns,
            name: rr.name.as_deref().unwrap_or_default(),
            subresource: Some("scale"),
        };
        let content_type = content_type(&req);
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut wopts = write_options(q);
        wopts.field_manager = apply::manager_name(Some(wopts.field_manager.as_str()), user_agent);
        let scale = match rr.verb {
            Verb::Get => self.api.get_scale(target).await?,
            Verb::Update => {
                let body = read_object_body(req.into_body(), &content_type).await?;
                self.api.write_scale(target, None, &body, &wopts).await?
            }
            Verb::Patch => {
                let patch_type = PatchType::from_content_type(&content_type)
                    .filter(|t| *t != PatchType::Apply)
                    .ok_or_else(|| ApiError::unsupported_media_type(PatchType::ACCEPTED))?;
                let body = read_body(req.into_body()).await?;
                self.api
                    .write_scale(target, Some(patch_type), &body, &wopts)
                    .await?
            }
            _ => return Err(ApiError::method_not_allowed()),
        };
        Ok(respond_json(StatusCode::OK, &scale, "application/json"))
    }

    /// Converts an object or list to what the client asked for.
    fn present(
        &self,
        rt: &ResourceType,
        mut v: Value,
        form: Form,
        q: &HashMap<String, String>,
    ) -> Value {
        match form {
            Form::Object => v,
            Form::Table => {
                let meta = json!({"resourceVersion": v["metadata"]["resourceVersion"]});
                table::table(rt, &[&v], meta, include_object(q), true)
            }
            Form::Metadata => table::partial_metadata(v["metadata"].take()),
        }
    }

    async fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: ListOptions,
        form: Form,
        q: &HashMap<String, String>,
    ) -> ApiResult<Response<Body>> {
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs)
            // Upstream ends watches after a random 30–60 minutes so clients spread their re-watches.
            .unwrap_or_else(|| Duration::from_secs(1800 + rand::random::<u64>() % 1800));
        let rx = match self.api.watch(rt, ns, &opts).await {
            Ok(w) => w,
            // Upstream reports an expired resourceVersion inside the watch stream.
            Err(e) if e.code == StatusCode::GONE => {
                let line = json!({"type": "ERROR", "object": e.to_status()});
                let mut resp = respond_json(StatusCode::OK, &line, "application/json");
                *resp.body_mut() = full(format!("{line}\n"));
                return Ok(resp);
            }
            Err(e) => return Err(e),
        };
        let rt_kind = rt.kind;
        let api_version = rt.api_version();
        let include = include_object(q);
        let rt_ptr = self
            .api
            .registry
            .get(rt.group, rt.version, rt.plural)
            .cloned();
        let mut first_table = true;
        let sent = self.metrics.watch_events(rt.group, rt.version, rt.kind);
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |e| {
            let line = match e {
                WatchEvent::Object(kind, stored) => {
                    sent.inc();
                    let object = match (form, &rt_ptr) {
                        (Form::Table, Some(rt)) => {
                            let object = stored.object();
                            let meta =
                                json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                            let t = table::table(rt, &[&object], meta, include, first_table);
                            first_table = false;
                            t
                        }
                        (Form::Metadata, _) => table::partial_metadata(stored.metadata()),
                        _ => return Ok(Frame::data(event_frame(kind, stored.json()))),
                    };
                    json!({"type": kind.as_str(), "object": object})
                }
                WatchEvent::Bookmark(rv) => bookmark(rt_kind, &api_version, rv, false),
                WatchEvent::InitialEventsEnd(rv) => bookmark(rt_kind, &api_version, rv, true),
            };
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{line}\n"))))
        });
        let stream = events.take_until(tokio::time::sleep(timeout));
        let body: Body = BodyExt::boxed(StreamBody::new(stream));
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        Ok(resp)
    }
}

/// A CertificateSigningRequest records who asked for it, whatever the
/// body says, as upstream's strategy does.
/// The authorizer's answer as the request's result, noted for the audit
/// log as upstream's `authorization.k8s.io/decision` and `/reason`.
fn audited(decision: Decision, attrs: &authz::Attributes<'_>) -> ApiResult<()> {
    match decision {
        Decision::Allow => {
            crate::audit::annotate("authorization.k8s.io/decision", "allow");
            crate::audit::annotate("authorization.k8s.io/reason", "");
            Ok(())
        }
        Decision::Deny(reason) => {
            crate::audit::annotate("authorization.k8s.io/decision", "forbid");
            crate::audit::annotate("authorization.k8s.io/reason", reason.clone());
            Err(authz::forbidden(attrs, &reason))
        }
    }
}

/// A response body that calls `done` once it has ended or been dropped (the
/// client went away), for a watch's ResponseComplete audit event.
struct OnEnd<F: FnOnce()> {
    body: Body,
    done: Option<F>,
}

impl<F: FnOnce()> OnEnd<F> {
    fn new(body: Body, done: F) -> Self {
        Self {
            body,
            done: Some(done),
        }
    }
}

impl<F: FnOnce()> Drop for OnEnd<F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done();
        }
    }
}

impl<F: FnOnce() + Unpin> hyper::body::Body for OnEnd<F> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

fn requested_by(body: &[u8], user: &Identity) -> ApiResult<Bytes> {
    let mut csr: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
    if csr["spec"].is_object() {
        csr["spec"]["username"] = json!(user.user);
        csr["spec"]["groups"] = json!(user.groups);
    }
    Ok(Bytes::from(serde_json::to_vec(&csr).unwrap_or_default()))
}

/// A watch event's line around the object's JSON as encoded once for
/// every watcher.
fn event_frame(kind: EventType, object: &[u8]) -> Bytes {
    let head = r#"{"type":""#;
    let mid = r#"","object":"#;
    let mut line =
        Vec::with_capacity(head.len() + mid.len() + kind.as_str().len() + object.len() + 2);
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(kind.as_str().as_bytes());
    line.extend_from_slice(mid.as_bytes());
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn bookmark(kind: &str, api_version: &str, rv: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": meta}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_wraps_the_cached_object() {
        let object = br#"{"kind":"Pod","metadata":{"name":"x"}}"#;
        for kind in [EventType::Added, EventType::Modified, EventType::Deleted] {
            let line = event_frame(kind, object);
            assert!(line.ends_with(b"}\n"));
            let parsed: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(
                parsed,
                json!({"type": kind.as_str(), "object": {"kind": "Pod", "metadata": {"name": "x"}}})
            );
        }
    }

    #[test]
    fn patch_options_as_upstream_checks_them() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = check_patch_options(&q(&[]), PatchType::Apply).unwrap_err();
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.message,
            r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch"#
        );
        let e = check_patch_options(&q(&[("force", "true")]), PatchType::Merge).unwrap_err();
        assert_eq!(
            e.message,
            r#"PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch"#
        );
        assert!(
            check_patch_options(
                &q(&[("fieldManager", "m"), ("force", "true")]),
                PatchType::Apply
            )
            .is_ok()
        );
        assert!(check_patch_options(&q(&[]), PatchType::Strategic).is_ok());
    }
}
