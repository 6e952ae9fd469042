//! The generic REST operations, written once for every registered resource.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use kubox_store::{Error as StoreError, RangeRequest, Revision, Store};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::admission::{Attributes, Chain, Operation, Reads};
use crate::allocator;
use crate::apply;
use crate::cache::{Cache, Filter, Stored, WatchEvent};
use crate::deletion::{self, DeleteOptions};
use crate::eviction;
use crate::http::Identity;
use crate::leases::ExpiringLeases;
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceType};
use crate::scale;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::validation;
use crate::written::{OwnWrites, Recording};

/// Query parameters of list and watch requests.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
}

/// Options of writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are an error, not a warning.
    pub strict: bool,
    /// Who writes, for checks that depend on it (RBAC's escalation
    /// prevention); None for the server's own writes.
    pub user: Option<Identity>,
    /// The field manager the write is recorded under (see `apply`).
    pub field_manager: String,
    /// `force=true`: an apply takes the fields it conflicts on.
    pub force: bool,
}

impl WriteOptions {
    fn writer<'a>(
        &'a self,
        rt: &'a ResourceType,
        subresource: Option<&'a str>,
        now: &'a str,
    ) -> apply::Writer<'a> {
        apply::Writer {
            // The server's own writes, as upstream's are recorded.
            manager: if self.user.is_none() && self.field_manager.is_empty() {
                "kube-apiserver"
            } else {
                &self.field_manager
            },
            api_version: rt.api_version(),
            subresource,
            status_split: rt.status_subresource,
            now,
        }
    }
}

/// What a [`WriteCheck`] sees of a write: the resource, its namespace and
/// subresource, the stored object an update changes, and the new object.
pub struct CheckedWrite<'a> {
    pub rt: &'a ResourceType,
    pub ns: Option<&'a str>,
    pub subresource: Option<&'a str>,
    pub old: Option<&'a Value>,
    pub obj: &'a Value,
}

/// A check of a write by its user beyond the request's authorization.
pub trait WriteCheck: Send + Sync {
    fn check(&self, user: &Identity, write: &CheckedWrite<'_>) -> ApiResult<()>;
}

/// The object a write addresses: resource, namespace, name, subresource.
#[derive(Clone, Copy)]
pub struct ObjectRef<'a> {
    pub rt: &'a ResourceType,
    pub ns: Option<&'a str>,
    pub name: &'a str,
    pub subresource: Option<&'a str>,
}

/// A write's result: the object, and warnings for the client.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

pub struct Api {
    pub registry: Registry,
    pub admission: Chain,
    /// Whether the start's bootstrap (RBAC's default policy) is done, as
    /// upstream's post-start hooks gate readiness.
    pub bootstrapped: std::sync::atomic::AtomicBool,
    /// Set once at start when the authorization mode checks writes.
    pub write_checks: std::sync::OnceLock<Vec<Arc<dyn WriteCheck>>>,
    /// Records each write in `own_writes` (see `written`).
    store: Arc<dyn Store>,
    own_writes: Arc<OwnWrites>,
    caches: HashMap<&'static str, Arc<Cache>>,
    /// Leases Events are stored under, so they expire after the event TTL.
    event_leases: ExpiringLeases,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Characters upstream's generateName suffix draws from (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub(crate) fn generate_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

fn encode(obj: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&ForStorage(obj)).expect("a JSON value serializes"))
}

/// An object as the store keeps it: without its resourceVersion (the
/// revision is the resourceVersion) and selfLink, left out as it is
/// written rather than from a copy.
struct ForStorage<'a>(&'a Value);

impl serde::Serialize for ForStorage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(s);
        };
        s.collect_map(fields.iter().map(|(k, v)| (k, Field(k == "metadata", v))))
    }
}

/// A top-level field; `metadata` (the flag) loses the fields the store does not keep.
struct Field<'a>(bool, &'a Value);

impl serde::Serialize for Field<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field(true, Value::Object(meta)) => s.collect_map(
                meta.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "resourceVersion" | "selfLink")),
            ),
            Field(_, v) => v.serialize(s),
        }
    }
}

fn with_revision(bytes: &[u8], revision: Revision) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored object: {e}")))?;
    obj["metadata"]["resourceVersion"] = json!(revision.to_string());
    Ok(obj)
}

fn parse_rv(rv: &str) -> ApiResult<Revision> {
    rv.parse::<Revision>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
}

/// The continue token: the revision of the first page and the next key, as upstream encodes it.
fn encode_continue(revision: Revision, next_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": next_key});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(Revision, String)> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    match (v["rv"].as_i64(), v["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_owned())),
        _ => Err(bad()),
    }
}

/// The names of fields in `input` that the typed form dropped, as dotted paths.
fn unknown_fields(input: &Value, typed: &Value, path: &mut String, out: &mut Vec<String>) {
    // One path buffer for the whole walk: most fields are known, and
    // formatting each one's path would cost more than comparing it.
    let len = path.len();
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if len > 0 {
                    path.push('.');
                }
                path.push_str(k);
                match b.get(k) {
                    Some(t) => unknown_fields(v, t, path, out),
                    None if !v.is_null() => out.push(path.clone()),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                use std::fmt::Write;
                let _ = write!(path, "[{i}]");
                unknown_fields(x, y, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Records a write in the object's managedFields, in the version the
/// client wrote: for a converted version, on that version's view of the old
/// and new objects, so the field paths are those the client sent.
fn track_update(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    writer: &apply::Writer,
    views: apply::Views,
) {
    if rt.conversion.is_none() {
        return apply::track_update(old, new, writer, views);
    }
    let old_view = old.map(|o| rt.from_storage(o.clone()));
    let mut new_view = rt.from_storage(new.clone());
    apply::track_update(old_view.as_ref(), &mut new_view, writer, views);
    match new_view["metadata"]
        .get_mut("managedFields")
        .map(Value::take)
    {
        Some(fields) if !fields.is_null() => new["metadata"]["managedFields"] = fields,
        _ => {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
    }
}

/// A watch of stored objects seen in a converted version. The forwarding
/// task ends when either side does: a closed cache watch (a lagging
/// watcher) closes the client's, as it would unconverted.
fn converted_watch(
    served: Arc<ResourceType>,
    mut stored: tokio::sync::mpsc::Receiver<WatchEvent>,
) -> tokio::sync::mpsc::Receiver<WatchEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(event) = stored.recv().await {
            let event = match event {
                WatchEvent::Object(kind, s) => WatchEvent::Object(kind, s.served(&served)),
                other => other,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// A LIST's result, its items shared with the watch cache where they come
/// from it, so a response is assembled from their JSON as encoded once.
pub struct List {
    pub kind: String,
    pub api_version: String,
    pub metadata: Value,
    pub items: Vec<Arc<Stored>>,
}

impl List {
    /// The list as one JSON value, for the server's own uses of it.
    pub fn into_value(self) -> Value {
        let items: Vec<Value> = self.items.iter().map(|s| s.object()).collect();
        json!({
            "kind": self.kind,
            "apiVersion": self.api_version,
            "metadata": self.metadata,
            "items": items,
        })
    }

    /// The list's JSON, written around its items' cached encodings.
    pub fn to_json(&self) -> Bytes {
        let head = json!({
            "kind": self.kind,
            "apiVersion": self.api_version,
            "metadata": self.metadata,
        })
        .to_string();
        let size = self.items.iter().map(|s| s.json().len() + 1).sum::<usize>();
        let mut out = Vec::with_capacity(head.len() + size + 16);
        // `head` is an object: reopen it before its closing brace.
        out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        out.extend_from_slice(b",\"items\":[");
        for (i, s) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(s.json());
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

impl Api {
    pub fn new(store: Arc<dyn Store>, event_ttl: std::time::Duration) -> Self {
        let registry = Registry::builtin();
        let caches = registry
            .types()
            .iter()
            // A converted version shares the stored version's cache.
            .filter(|t| t.stored() && t.conversion.is_none())
            .map(|t| (t.plural, Cache::start(store.clone(), t.key_prefix())))
            .collect();
        let own_writes = Arc::new(OwnWrites::default());
        let store = Arc::new(Recording::new(store, own_writes.clone()));
        Self {
            registry,
            admission: Chain::default(),
            write_checks: std::sync::OnceLock::new(),
            bootstrapped: Default::default(),
            store,
            own_writes,
            caches,
            event_leases: ExpiringLeases::new(event_ttl),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What admission reads through.
    fn reads(&self) -> Reads<'_> {
        Reads::new(&*self.store, &self.caches, &self.own_writes)
    }

    fn cache(&self, rt: &ResourceType) -> &Arc<Cache> {
        &self.caches[rt.plural]
    }

    /// How many objects of each stored resource there are, by upstream's
    /// `resource` label (`pods`, `deployments.apps`), from the watch caches.
    pub fn object_counts(&self) -> Vec<(String, usize)> {
        self.registry
            .types()
            .iter()
            .filter_map(|t| {
                let cache = self.caches.get(t.plural)?;
                let name = if t.group.is_empty() {
                    t.plural.to_owned()
                } else {
                    format!("{}.{}", t.plural, t.group)
                };
                Some((name, cache.object_count()))
            })
            .collect()
    }

    /// The watch cache of a resource, by plural name.
    pub(crate) fn cache_of(&self, plural: &str) -> Option<Arc<Cache>> {
        self.caches.get(plural).cloned()
    }

    /// Objects of `rt` (in its version's form) as the resource's other
    /// served versions show them, for managedFields recorded in those.
    fn views<'a>(&'a self, rt: &'a ResourceType) -> impl Fn(&str, &Value) -> Option<Value> + 'a {
        move |api_version, obj| {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let other = self.registry.get(group, version, rt.plural)?;
            let stored = rt
                .to_storage(obj.clone(), self.registry.storage_of(rt))
                .ok()?;
            Some(other.from_storage(stored))
        }
    }

    /// [`Self::check_write`] of an update of `target` from `old` to `new`.
    fn check_update(
        &self,
        opts: &WriteOptions,
        target: ObjectRef<'_>,
        old: &Value,
        new: &Value,
    ) -> ApiResult<()> {
        self.check_write(
            opts,
            CheckedWrite {
                rt: target.rt,
                ns: target.ns,
                subresource: target.subresource,
                old: Some(old),
                obj: new,
            },
        )
    }

    fn check_write(&self, opts: &WriteOptions, write: CheckedWrite<'_>) -> ApiResult<()> {
        match (&opts.user, self.write_checks.get()) {
            (Some(user), Some(checks)) => checks.iter().try_for_each(|c| c.check(user, &write)),
            _ => Ok(()),
        }
    }

    /// Whether every cache has loaded from the store.
    pub fn ready(&self) -> bool {
        self.caches.values().all(|c| c.revision() >= 0)
    }

    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Decodes a request body as an object of `rt`, checking kind and apiVersion.
    fn decode(
        &self,
        rt: &ResourceType,
        body: &[u8],
        opts: &WriteOptions,
    ) -> ApiResult<(Value, Vec<String>)> {
        let input: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?;
        if !input.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let kind = input
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let api_version = input
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if (!kind.is_empty() && kind != rt.kind)
            || (!api_version.is_empty() && api_version != rt.api_version())
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        let typed = (rt.normalize)(&input).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        let mut unknown = Vec::new();
        unknown_fields(&input, &typed, &mut String::new(), &mut unknown);
        let warnings: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        if opts.strict && !warnings.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                rt.kind,
                rt.version,
                rt.kind,
                warnings.join(", ")
            )));
        }
        let mut obj = typed;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let mut obj = rt.to_storage(obj, self.registry.storage_of(rt))?;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        // Empty metadata lists and maps are omitted, as Go's `omitempty`
        // leaves them (a patch removing the last owner reference, say).
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.retain(|k, v| {
                !matches!(
                    k.as_str(),
                    "ownerReferences" | "finalizers" | "labels" | "annotations" | "managedFields"
                ) || !(v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|m| m.is_empty()))
            });
        }
        Ok((obj, warnings))
    }

    fn validate(&self, rt: &ResourceType, obj: &Value) -> ApiResult<()> {
        let mut errs = validation::metadata(&obj["metadata"], rt.plural);
        errs.extend(rt.strategy.validate(obj));
        if errs.is_empty() {
            Ok(())
        } else {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            Err(ApiError::invalid(rt.group, rt.kind, name, errs))
        }
    }

    pub async fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        Ok(rt.from_storage(self.load(rt, ns, name).await?.0))
    }

    /// The stored object, with its resourceVersion set, and its revision; 404 if absent.
    async fn load(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)> {
        let (kv, _) = self.store.get(&rt.key(ns, name)).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(rt.group, rt.plural, name))?;
        Ok((with_revision(&kv.value, kv.mod_revision)?, kv.mod_revision))
    }

    fn filter(rt: &ResourceType, ns: Option<&str>, opts: &ListOptions) -> ApiResult<Filter> {
        for f in opts.field_selector.fields() {
            let generic = ["metadata.name", "metadata.namespace"].contains(&f);
            let supported = match rt.conversion {
                Some(c) => c.field_labels.iter().any(|(served, _)| *served == f),
                None => crate::selectors::supported_fields(rt.plural).contains(&f),
            };
            if !generic && !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        // Selectors match stored objects, so they name the stored form's fields.
        let labels = opts.label_selector.clone();
        let fields = opts
            .field_selector
            .renamed(|f| rt.storage_field_label(f).to_owned());
        let ns = ns.map(str::to_owned);
        Ok(Arc::new(move |s: &Stored| {
            let selectable = s.selectable();
            let meta = &selectable["metadata"];
            ns.as_deref().is_none_or(|n| meta["namespace"] == n)
                && labels.matches(&meta["labels"])
                && fields.matches(selectable)
        }))
    }

    /// Waits until `cache` has seen `revision`, or, with None, every write
    /// committed before this call. A cache only hears of writes under its own
    /// prefix, so when it is behind, the store is asked for a progress
    /// notification at once rather than at its next interval.
    pub(crate) async fn catch_up(
        &self,
        cache: &Cache,
        revision: Option<Revision>,
    ) -> ApiResult<()> {
        let target = match revision {
            Some(rv) => rv,
            None => self.store.current_revision().await?,
        };
        if cache.revision() < target {
            self.store.request_progress().await?;
        }
        cache.wait_for(target).await
    }

    /// LIST: from the cache, or from the store for paginated and exact reads.
    pub async fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<Value> {
        Ok(self.list_shared(rt, ns, opts).await?.into_value())
    }

    /// LIST, with the items the cache holds shared rather than copied.
    pub async fn list_shared(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<List> {
        let filter = Self::filter(rt, ns, opts)?;
        let prefix = rt.namespace_prefix(ns);
        let exact = opts.resource_version_match.as_deref() == Some("Exact");
        let (items, revision, cont, remaining) =
            if opts.limit > 0 || opts.continue_token.is_some() || exact {
                self.list_from_store(&prefix, opts, &*filter).await?
            } else {
                let cache = self.cache(rt);
                match opts.resource_version.as_deref() {
                    // "0": any state the cache has.
                    Some("0") => {}
                    Some(rv) => self.catch_up(cache, Some(parse_rv(rv)?)).await?,
                    // Unset: consistent, at least as new as the store now.
                    None => self.catch_up(cache, None).await?,
                }
                let (items, revision) = cache.list(&prefix, &*filter);
                (items, revision, None, None)
            };
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(c) = cont {
            metadata["continue"] = json!(c);
        }
        if let Some(r) = remaining {
            metadata["remainingItemCount"] = json!(r);
        }
        Ok(List {
            kind: format!("{}List", rt.kind),
            api_version: rt.api_version(),
            metadata,
            items: items.iter().map(|s| s.served(rt)).collect(),
        })
    }

    async fn list_from_store(
        &self,
        prefix: &str,
        opts: &ListOptions,
        filter: &(dyn Fn(&Stored) -> bool + Send + Sync),
    ) -> ApiResult<(Vec<Arc<Stored>>, Revision, Option<String>, Option<i64>)> {
        let (mut revision, mut start) = match &opts.continue_token {
            Some(token) => {
                let (rv, key) = decode_continue(token)?;
                (rv, Some(format!("{prefix}{key}")))
            }
            None => match (
                opts.resource_version.as_deref(),
                opts.resource_version_match.as_deref(),
            ) {
                (Some(rv), Some("Exact")) => (parse_rv(rv)?, None),
                _ => (0, None),
            },
        };
        let mut items = Vec::new();
        let limit = opts.limit;
        loop {
            let page = self
                .store
                .range(RangeRequest {
                    prefix: prefix.to_owned(),
                    start: start.clone(),
                    limit: if limit == 0 { 0 } else { limit - items.len() + 1 },
                    revision,
                    count_only: false,
                })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ),
                    other => other.into(),
                })?;
            revision = page.revision;
            let mut last_key = None;
            for kv in &page.kvs {
                if limit > 0 && items.len() == limit {
                    // One more matching object exists: continue from it.
                    let next = kv.key.strip_prefix(prefix).unwrap_or(&kv.key);
                    return Ok((items, revision, Some(encode_continue(revision, next)), None));
                }
                let obj = with_revision(&kv.value, kv.mod_revision)?;
                let stored = Stored::new(kv.key.clone(), obj, kv.mod_revision);
                if filter(&stored) {
                    items.push(Arc::new(stored));
                }
                last_key = Some(kv.key.clone());
            }
            match (page.more, last_key) {
                (true, Some(k)) => start = Some(format!("{k}\0")),
                _ => return Ok((items, revision, None, None)),
            }
        }
    }

    /// Starts a WATCH from the cache.
    pub async fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<tokio::sync::mpsc::Receiver<WatchEvent>> {
        let filter = Self::filter(rt, ns, opts)?;
        let cache = self.cache(rt);
        let from = match opts.resource_version.as_deref() {
            None | Some("") => {
                self.catch_up(cache, None).await?;
                None
            }
            Some("0") => None,
            Some(rv) => {
                let rv = parse_rv(rv)?;
                self.catch_up(cache, Some(rv)).await?;
                // sendInitialEvents with a resourceVersion: the state at least as new, then changes.
                if opts.send_initial_events {
                    None
                } else {
                    Some(rv)
                }
            }
        };
        let mark_initial_end = from.is_none() && opts.send_initial_events && opts.allow_bookmarks;
        let stored = cache.watch(from, filter, opts.allow_bookmarks, mark_initial_end)?;
        match self.registry.get(rt.group, rt.version, rt.plural) {
            Some(served) if served.conversion.is_some() => {
                Ok(converted_watch(served.clone(), stored))
            }
            _ => Ok(stored),
        }
    }

    /// CREATE, with upstream's metadata handling.
    pub async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: &[u8],
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let (obj, warnings) = self.decode(rt, body, opts)?;
        let mut written = self
            .create_object(rt, ns, obj, warnings, opts, true)
            .await?;
        written.object = rt.from_storage(written.object);
        Ok(written)
    }

    /// Creates a decoded object; `track` records the write in its
    /// managedFields (an apply has done so already).
    async fn create_object(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        warnings: Vec<String>,
        opts: &WriteOptions,
        track: bool,
    ) -> ApiResult<Written> {
        let meta = &mut obj["metadata"];
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if rt.namespaced {
            let body_ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let ns =
                ns.ok_or_else(|| ApiError::bad_request("the namespace of the object must be set"))?;
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty()
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            meta["name"] = json!(format!("{prefix}{}", generate_suffix()));
        }
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now_rfc3339());
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
        }
        if rt.strategy.tracks_generation() {
            obj["metadata"]["generation"] = json!(1);
        }
        rt.strategy.default(&mut obj);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let attrs = Attributes {
            operation: Operation::Create,
            resource: rt,
            subresource: None,
            namespace: ns,
            name: &name,
            dry_run: opts.dry_run,
            user: opts.user.as_ref(),
            old: None,
        };
        self.admission
            .mutate(&attrs, &mut obj, &self.reads())
            .await?;
        // After mutating admission, as upstream: a pod's QoS class counts
        // the requests LimitRanger gave it.
        rt.strategy.prepare_create(&mut obj);
        self.validate(rt, &obj)?;
        self.admission.validate(&attrs, &obj, &self.reads()).await?;
        self.check_write(
            opts,
            CheckedWrite {
                rt,
                ns,
                subresource: None,
                old: None,
                obj: &obj,
            },
        )?;
        if track {
            let now = now_rfc3339();
            let views = self.views(rt);
            track_update(rt, None, &mut obj, &opts.writer(rt, None, &now), &views);
        }
        let key = rt.key(ns, &name);
        if opts.dry_run {
            let (existing, _) = self.store.get(&key).await?;
            if existing.is_some() {
                return Err(ApiError::already_exists(rt.group, rt.plural, &name));
            }
            return Ok(Written {
                object: obj,
                warnings,
            });
        }
        let reserved = self.allocate(rt, &mut obj, None, &key).await?;
        let lease = self.lease_for(rt).await?;
        let kv = match self.store.create(&key, encode(&obj), lease).await {
            Ok(kv) => kv,
            Err(e) => {
                allocator::release(&*self.store, &reserved).await;
                return Err(match e {
                    StoreError::AlreadyExists(..) => {
                        ApiError::already_exists(rt.group, rt.plural, &name)
                    }
                    other => other.into(),
                });
            }
        };
        obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        Ok(Written {
            object: obj,
            warnings,
        })
    }

    /// The lease an object is written under: Events expire, all else stays.
    async fn lease_for(&self, rt: &ResourceType) -> ApiResult<kubox_store::LeaseId> {
        if rt.plural == "events" {
            self.event_leases.lease(&*self.store).await
        } else {
            Ok(0)
        }
    }

    /// Gives a Service its addresses and ports (see `allocator`); nothing for
    /// other resources. Returns what was newly reserved.
    async fn allocate(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
        key: &str,
    ) -> ApiResult<Vec<String>> {
        if rt.plural != "services" {
            return Ok(Vec::new());
        }
        allocator::allocate(&*self.store, obj, old, key).await
    }

    /// Merges an updated object with the stored one as upstream's update
    /// strategies do, and writes it if `expected` is still the stored revision.
    async fn write_update(
        &self,
        target: ObjectRef<'_>,
        old: &Value,
        mut new: Value,
        expected: Revision,
        dry_run: bool,
        track: Option<&WriteOptions>,
    ) -> ApiResult<Value> {
        let ObjectRef {
            rt,
            ns,
            name,
            subresource,
        } = target;
        // Fields the client cannot change through an update.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        new["metadata"]["name"] = json!(name);
        if rt.namespaced {
            new["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
        }
        match subresource {
            // The status subresource changes status and metadata, never the
            // spec (a Deployment's labels neither), as upstream's status
            // strategies: the Deployment controller records revisions in
            // annotations this way.
            Some("status") => {
                let status = new.get("status").cloned();
                let mut merged = old.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                merged["metadata"] = new["metadata"].take();
                if rt.plural == "deployments" {
                    match old["metadata"].get("labels") {
                        Some(l) => merged["metadata"]["labels"] = l.clone(),
                        None => {
                            if let Some(m) = merged["metadata"].as_object_mut() {
                                m.remove("labels");
                            }
                        }
                    }
                }
                new = merged;
            }
            // A CertificateSigningRequest's `approval` changes only its
            // conditions (Approved, Denied) and metadata.
            Some("approval") => {
                let mut merged = old.clone();
                merged["status"]["conditions"] = new["status"]["conditions"].take();
                merged["metadata"] = new["metadata"].take();
                new = merged;
            }
            // A namespace's `finalize` changes its spec (the finalizers)
            // and metadata, never its status.
            Some("finalize") => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            // Only `finalize` changes a namespace's finalizers.
            _ if rt.plural == "namespaces" => {
                let finalizers = old["spec"].get("finalizers").cloned();
                match (finalizers, new["spec"].as_object_mut()) {
                    (Some(f), _) => new["spec"]["finalizers"] = f,
                    (None, Some(spec)) => {
                        spec.remove("finalizers");
                    }
                    (None, None) => {}
                }
                new["status"] = old["status"].clone();
            }
            // With a status subresource, the main resource cannot change status.
            _ if rt.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            _ => {}
        }
        rt.strategy.default(&mut new);
        if rt.strategy.tracks_generation() {
            let spec_of = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            if spec_of(old) != spec_of(&new) {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                new["metadata"]["generation"] = json!(generation);
            }
        }
        let attrs = Attributes {
            operation: Operation::Update,
            resource: rt,
            subresource,
            namespace: ns,
            name,
            dry_run,
            user: track.and_then(|o| o.user.as_ref()),
            old: Some(old),
        };
        self.admission
            .mutate(&attrs, &mut new, &self.reads())
            .await?;
        self.validate(rt, &new)?;
        let errs = rt.strategy.validate_update(old, &new);
        if !errs.is_empty() {
            return Err(ApiError::invalid(rt.group, rt.kind, name, errs));
        }
        self.admission.validate(&attrs, &new, &self.reads()).await?;
        if let Some(opts) = track {
            let now = now_rfc3339();
            let views = self.views(rt);
            let writer = opts.writer(rt, subresource, &now);
            track_update(rt, Some(old), &mut new, &writer, &views);
        }
        if dry_run {
            return Ok(new);
        }
        // An object whose finalizers are all gone while it is being deleted
        // goes now; a namespace also waits for its spec's finalizers.
        let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
        let finalized = new["metadata"]["deletionTimestamp"].is_string()
            && empty(&new["metadata"]["finalizers"])
            && (rt.plural != "namespaces" || empty(&new["spec"]["finalizers"]));
        let key = rt.key(ns, name);
        if finalized {
            self.store
                .delete(&key, Some(expected))
                .await
                .map_err(|e| self.write_error(rt, name, e))?;
            if rt.plural == "services" {
                allocator::release(&*self.store, &allocator::held(old)).await;
            }
            return Ok(new);
        }
        let reserved = if subresource.is_none() {
            self.allocate(rt, &mut new, Some(old), &key).await?
        } else {
            Vec::new()
        };
        let lease = self.lease_for(rt).await?;
        let kv = match self.store.update(&key, encode(&new), expected, lease).await {
            Ok(kv) => kv,
            Err(e) => {
                allocator::release(&*self.store, &reserved).await;
                return Err(self.write_error(rt, name, e));
            }
        };
        if rt.plural == "services" {
            let still = allocator::held(&new);
            let dropped: Vec<String> = allocator::held(old)
                .into_iter()
                .filter(|k| !still.contains(k))
                .collect();
            allocator::release(&*self.store, &dropped).await;
        }
        new["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        Ok(new)
    }

    fn write_error(&self, rt: &ResourceType, name: &str, e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { current: None, .. } | StoreError::NotFound(_) => {
                ApiError::not_found(rt.group, rt.plural, name)
            }
            StoreError::Conflict { .. } => ApiError::modified(rt.group, rt.plural, name),
            other => other.into(),
        }
    }

    /// UPDATE (PUT), of the object or its status.
    pub async fn update(
        &self,
        target: ObjectRef<'_>,
        body: &[u8],
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let ObjectRef { rt, ns, name, .. } = target;
        let (new, warnings) = self.decode(rt, body, opts)?;
        let body_name = new["metadata"]["name"].as_str().unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let (old, revision) = self.load(rt, ns, name).await?;
        let expected = match new["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            Some(rv) => parse_rv(rv)?,
            // No resourceVersion: an unconditional update, as upstream allows.
            None => revision,
        };
        self.check_update(opts, target, &old, &new)?;
        let object = self
            .write_update(target, &old, new, expected, opts.dry_run, Some(opts))
            .await?;
        Ok(Written {
            object: rt.from_storage(object),
            warnings,
        })
    }

    /// PATCH: applied to the stored object, retried on concurrent writes
    /// unless the patch itself names a resourceVersion.
    pub async fn patch(
        &self,
        target: ObjectRef<'_>,
        patch_type: PatchType,
        body: &[u8],
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let ObjectRef { rt, ns, name, .. } = target;
        for _ in 0..16 {
            let (old, revision) = self.load(rt, ns, name).await?;
            // The patch applies to the object in the version it is sent to.
            let mut patched = rt.from_storage(old.clone());
            patch::apply(&mut patched, patch_type, body)
                .map_err(|e| ApiError::new(http::StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e))?;
            let pinned = patched["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned);
            let expected = match pinned.as_deref() {
                Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
                    parse_rv(rv)?
                }
                _ => revision,
            };
            let (new, warnings) =
                self.decode(rt, &serde_json::to_vec(&patched).unwrap_or_default(), opts)?;
            self.check_update(opts, target, &old, &new)?;
            match self
                .write_update(target, &old, new, expected, opts.dry_run, Some(opts))
                .await
            {
                Err(e)
                    if e.reason == "Conflict"
                        && pinned.as_deref() == old["metadata"]["resourceVersion"].as_str() =>
                {
                    continue;
                }
                Err(e) => return Err(e),
                Ok(object) => {
                    return Ok(Written {
                        object: rt.from_storage(object),
                        warnings,
                    });
                }
            }
        }
        Err(ApiError::modified(rt.group, rt.plural, name))
    }

    /// PATCH with `application/apply-patch+yaml`: server-side apply of the
    /// body (YAML or JSON) as `opts.field_manager`; creates the object when
    /// it does not exist. Returns the object and whether it was created.
    pub async fn apply(
        &self,
        target: ObjectRef<'_>,
        body: &[u8],
        opts: &WriteOptions,
    ) -> ApiResult<(Written, bool)> {
        let ObjectRef { rt, ns, name, .. } = target;
        let subresource = target.subresource;
        let config: Value = serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let body_name = config["metadata"]["name"].as_str().unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let now = now_rfc3339();
        let writer = opts.writer(rt, subresource, &now);
        let views = self.views(rt);
        let conflict = |c: apply::Conflicts| {
            ApiError::new(http::StatusCode::CONFLICT, "Conflict", c.message())
                .with_causes(c.causes())
        };
        for _ in 0..16 {
            let (old, revision) = match self.load(rt, ns, name).await {
                Err(e) if e.reason == "NotFound" && subresource.is_none() => {
                    let obj = apply::apply(None, &config, &writer, opts.force, &views)
                        .map_err(conflict)?;
                    let (obj, warnings) =
                        self.decode(rt, &serde_json::to_vec(&obj).unwrap_or_default(), opts)?;
                    match self.create_object(rt, ns, obj, warnings, opts, false).await {
                        Err(e) if e.reason == "AlreadyExists" => continue,
                        Err(e) => return Err(e),
                        Ok(mut w) => {
                            w.object = rt.from_storage(w.object);
                            return Ok((w, true));
                        }
                    }
                }
                other => other?,
            };
            let live = rt.from_storage(old.clone());
            let merged = apply::apply(Some(&live), &config, &writer, opts.force, &views)
                .map_err(conflict)?;
            let (new, warnings) =
                self.decode(rt, &serde_json::to_vec(&merged).unwrap_or_default(), opts)?;
            // An apply that changes nothing writes nothing, as upstream.
            if new == old {
                return Ok((
                    Written {
                        object: live,
                        warnings,
                    },
                    false,
                ));
            }
            self.check_update(opts, target, &old, &new)?;
            match self
                .write_update(target, &old, new, revision, opts.dry_run, None)
                .await
            {
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
                Ok(object) => {
                    return Ok((
                        Written {
                            object: rt.from_storage(object),
                            warnings,
                        },
                        false,
                    ));
                }
            }
        }
        Err(ApiError::modified(rt.group, rt.plural, name))
    }

    /// POST of a pod's binding subresource: assigns the pod to a node, once.
    pub async fn bind(
        &self,
        target: ObjectRef<'_>,
        body: &[u8],
        dry_run: bool,
    ) -> ApiResult<Value> {
        let ObjectRef { rt, ns, name, .. } = target;
        let binding: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding Binding: {e}")))?;
        let node = binding["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "Binding",
                    name,
                    vec![crate::status::FieldError::required("target.name")],
                )
            })?;
        let conflict = |why: String| ApiError::conflict("", "pods/binding", name, &why);
        loop {
            let (mut pod, revision) = self.load(rt, ns, name).await?;
            if pod["metadata"]["deletionTimestamp"].is_string() {
                return Err(conflict(format!(
                    "pod {name} is being deleted, cannot be assigned to a host"
                )));
            }
            if let Some(current) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(conflict(format!(
                    "pod {name} is already assigned to node {current:?}"
                )));
            }
            pod["spec"]["nodeName"] = json!(node);
            for (k, v) in binding["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                pod["metadata"]["annotations"][k] = v.clone();
            }
            let mut conditions: Vec<Value> = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
            pod["status"]["conditions"] = json!(conditions);
            if dry_run {
                break;
            }
            match self
                .store
                .update(&rt.key(ns, name), encode(&pod), revision, 0)
                .await
            {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// POST of a pod's eviction subresource: the pod is deleted (with the
    /// Eviction's deleteOptions) if the PodDisruptionBudget guarding it
    /// allows a disruption now, which it then has one fewer of.
    pub async fn evict(&self, target: ObjectRef<'_>, body: &[u8]) -> ApiResult<Value> {
        let ObjectRef { rt, ns, name, .. } = target;
        let eviction: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding Eviction: {e}")))?;
        if eviction["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
        let options = DeleteOptions::parse(&eviction["deleteOptions"], &HashMap::new())?;
        let budgets_type = self
            .registry
            .get("policy", "v1", "poddisruptionbudgets")
            .cloned()
            .ok_or_else(|| ApiError::internal("PodDisruptionBudgets are not served"))?;
        loop {
            let pod = self.get(rt, ns, name).await?;
            if !eviction::ignores_budgets(&pod) {
                let budgets = self
                    .list(&budgets_type, ns, &ListOptions::default())
                    .await?;
                let budgets = budgets["items"].as_array().cloned().unwrap_or_default();
                let guarding = eviction::guarding(&budgets, &pod);
                if guarding.len() > 1 {
                    return Err(ApiError::internal(
                        "Internal error occurred: This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ));
                }
                if let Some(budget) = guarding.first() {
                    let budget_name = budget["metadata"]["name"].as_str().unwrap_or_default();
                    let (mut budget, revision) = self.load(&budgets_type, ns, budget_name).await?;
                    if eviction::take(&mut budget, &pod, &now_rfc3339())? && !options.dry_run {
                        match self
                            .store
                            .update(
                                &budgets_type.key(ns, budget_name),
                                encode(&budget),
                                revision,
                                0,
                            )
                            .await
                        {
                            Ok(_) => {}
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            self.delete(rt, ns, name, &options).await?;
            return Ok(
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            );
        }
    }

    /// GET of the scale subresource.
    pub async fn get_scale(&self, target: ObjectRef<'_>) -> ApiResult<Value> {
        Ok(scale::to_scale(
            &self.get(target.rt, target.ns, target.name).await?,
        ))
    }

    /// PUT or PATCH of the scale subresource: the patch applies to the Scale
    /// view; the workload's replicas change, guarded by its resourceVersion.
    pub async fn write_scale(
        &self,
        target: ObjectRef<'_>,
        patch_type: Option<PatchType>,
        body: &[u8],
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        let ObjectRef { rt, ns, name, .. } = target;
        for _ in 0..16 {
            let (old, revision) = self.load(rt, ns, name).await?;
            let scale = match patch_type {
                None => serde_json::from_slice::<Value>(body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding request body: {e}"))
                })?,
                Some(t) => {
                    let mut view = scale::to_scale(&old);
                    patch::apply(&mut view, t, body).map_err(|e| {
                        ApiError::new(http::StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e)
                    })?;
                    view
                }
            };
            let pinned = scale["metadata"]["resourceVersion"]
                .as_str()
                .filter(|rv| !rv.is_empty() && patch_type.is_none());
            let expected = match pinned {
                Some(rv) => parse_rv(rv)?,
                None => revision,
            };
            let mut new = old.clone();
            scale::apply_scale(rt, &mut new, &scale)?;
            let now = now_rfc3339();
            let views = self.views(rt);
            apply::track_scale(
                &old,
                &mut new,
                &opts.writer(rt, Some("scale"), &now),
                &views,
            );
            let main = ObjectRef {
                subresource: None,
                ..target
            };
            match self
                .write_update(main, &old, new, expected, opts.dry_run, None)
                .await
            {
                Err(e) if e.reason == "Conflict" && pinned.is_none() => continue,
                Err(e) => return Err(e),
                Ok(written) => return Ok(scale::to_scale(&written)),
            }
        }
        Err(ApiError::modified(rt.group, rt.plural, name))
    }

    /// DELETE: immediate, or marked for deletion while finalizers remain or a
    /// pod on a node shuts down gracefully. The options' propagation policy
    /// (else the object's finalizers, else the resource's default) sets the
    /// garbage collector's `orphan` or `foregroundDeletion` finalizer, as
    /// upstream's registry does.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        Ok(rt.from_storage(self.delete_stored(rt, ns, name, opts).await?))
    }

    /// DELETE, returning the object in its stored form.
    async fn delete_stored(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let key = rt.key(ns, name);
        loop {
            let (mut obj, revision) = self.load(rt, ns, name).await?;
            if let Some(uid) = opts.preconditions.as_ref().and_then(|p| p["uid"].as_str())
                && obj["metadata"]["uid"] != uid
            {
                return Err(ApiError::conflict(
                    rt.group,
                    rt.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        obj["metadata"]["uid"].as_str().unwrap_or_default()
                    ),
                ));
            }
            if let Some(rv) = opts
                .preconditions
                .as_ref()
                .and_then(|p| p["resourceVersion"].as_str())
                && parse_rv(rv)? != revision
            {
                return Err(ApiError::conflict(
                    rt.group,
                    rt.plural,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        revision
                    ),
                ));
            }
            let attrs = Attributes {
                operation: Operation::Delete,
                resource: rt,
                subresource: None,
                namespace: ns,
                name,
                dry_run: opts.dry_run,
                user: opts.user.as_ref(),
                old: None,
            };
            self.admission.validate(&attrs, &obj, &self.reads()).await?;
            let being_deleted = obj["metadata"]["deletionTimestamp"].is_string();
            let changed = if rt.plural == "namespaces" && !being_deleted {
                // The first DELETE of a namespace starts its termination;
                // the namespace controller empties and finalizes it.
                obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                obj["status"]["phase"] = json!("Terminating");
                obj["metadata"]["finalizers"] =
                    json!(deletion::namespace_gc_finalizers(&obj, opts));
                true
            } else if rt.plural == "namespaces"
                && obj["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
            {
                return Ok(obj);
            } else {
                let graceful_pod = rt.plural == "pods"
                    && obj["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty())
                    && opts.grace_period != Some(0)
                    && obj["status"]["phase"] != "Succeeded"
                    && obj["status"]["phase"] != "Failed";
                // A graceful deletion under way keeps its finalizers as they are.
                if being_deleted && graceful_pod {
                    return Ok(obj);
                }
                let gc_finalizers = deletion::gc_finalizers(rt, &obj, opts);
                if let Some(f) = &gc_finalizers {
                    obj["metadata"]["finalizers"] = json!(f);
                }
                let pending = !deletion::finalizers(&obj).is_empty();
                if !being_deleted && (graceful_pod || pending) {
                    obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    let grace = if graceful_pod {
                        opts.grace_period
                            .or(obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                            .unwrap_or(30)
                    } else {
                        0
                    };
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    if let Some(g) = obj["metadata"]["generation"].as_i64().filter(|g| *g > 0) {
                        obj["metadata"]["generation"] = json!(g + 1);
                    }
                    true
                } else if pending {
                    if gc_finalizers.is_none() {
                        return Ok(obj);
                    }
                    true
                } else {
                    false
                }
            };
            if opts.dry_run {
                return Ok(obj);
            }
            if changed {
                match self.store.update(&key, encode(&obj), revision, 0).await {
                    Ok(kv) => {
                        obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                        return Ok(obj);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            match self.store.delete(&key, Some(revision)).await {
                Ok(_) => {
                    if rt.plural == "services" {
                        allocator::release(&*self.store, &allocator::held(&obj)).await;
                    }
                    return Ok(obj);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => {
                    return Err(ApiError::not_found(rt.group, rt.plural, name));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// DELETECOLLECTION: every matching object, each as a DELETE.
    pub async fn delete_collection(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        list_opts: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let list = self.list(rt, ns, list_opts).await?;
        let mut items = Vec::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let item_ns = item["metadata"]["namespace"].as_str();
            match self.delete(rt, item_ns.or(ns), name, opts).await {
                Ok(obj) => items.push(obj),
                Err(e) if e.reason == "NotFound" => {}
                Err(e) => return Err(e),
            }
        }
        let mut out = list;
        out["items"] = json!(items);
        Ok(out)
    }

    /// Creates an object unless one of that name exists (bootstrap objects).
    pub async fn ensure(&self, rt: &ResourceType, ns: Option<&str>, obj: Value) -> ApiResult<()> {
        let body = serde_json::to_vec(&obj).unwrap_or_default();
        match self.create(rt, ns, &body, &WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: Vec<Value>) -> List {
        List {
            kind: "PodList".into(),
            api_version: "v1".into(),
            metadata: json!({"resourceVersion": "9", "continue": "c"}),
            items: items
                .into_iter()
                .enumerate()
                .map(|(i, o)| Arc::new(Stored::new(format!("/registry/pods/a/{i}"), o, 9)))
                .collect(),
        }
    }

    #[test]
    fn a_list_written_from_cached_items_is_the_list_value() {
        for items in [
            vec![],
            vec![json!({"metadata": {"name": "x"}})],
            vec![
                json!({"metadata": {"name": "x"}}),
                json!({"spec": {"a": "\"]}"}}),
            ],
        ] {
            let bytes = list(items.clone()).to_json();
            let parsed: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed, list(items).into_value());
        }
    }

    #[test]
    fn objects_are_stored_without_resource_version_and_self_link() {
        let obj = json!({
            "apiVersion": "v1",
            "metadata": {"name": "x", "resourceVersion": "7", "selfLink": "/x", "uid": "u"},
            "spec": {"metadata": {"resourceVersion": "kept"}},
        });
        let stored: Value = serde_json::from_slice(&encode(&obj)).unwrap();
        assert_eq!(
            stored,
            json!({
                "apiVersion": "v1",
                "metadata": {"name": "x", "uid": "u"},
                "spec": {"metadata": {"resourceVersion": "kept"}},
            })
        );
        assert_eq!(&encode(&json!("not an object"))[..], b"\"not an object\"");
    }
}
