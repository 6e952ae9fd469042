//! The watch cache: one per resource type, holding every object and a window
//! of recent changes in memory, fed by a watch on the store. LISTs and WATCHes
//! are served from it; a slow watcher is closed (its client re-lists) and
//! never holds up the store, the cache or other watchers.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kubox_store::{EventKind, RangeRequest, Revision, Store, WatchMessage, WatchRequest};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use crate::registry::ResourceType;
use crate::status::{ApiError, ApiResult};

/// Changes kept for watches that resume from an older resourceVersion: as
/// upstream's watch cache, at least the last `HISTORY_MIN` and every one of
/// the last `HISTORY_FRESH`, but never more than `HISTORY_MAX`, so a burst
/// of writes is not held on to once it is over.
const HISTORY_MIN: usize = 100;
const HISTORY_MAX: usize = 10_000;
const HISTORY_FRESH: Duration = Duration::from_secs(75);
/// Events a watcher may have queued before it is closed as too slow.
const WATCHER_QUEUE: usize = 1_000;
/// How long a read waits for the cache to reach a resourceVersion.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// An object as stored, with `metadata.resourceVersion` filled in. Like
/// upstream's cachingObject, it is encoded to JSON once, however many LISTs
/// and watchers send it, and converted at most once per version it is
/// served in. It is kept as that JSON and decoded only when read whole: a
/// decoded `Value` costs several times the bytes, and the cache holds every
/// object and a window of past versions. Selectors read `selectable`, the
/// few fields they can name, kept decoded.
#[derive(Debug)]
pub struct Stored {
    pub key: String,
    pub revision: Revision,
    json: Bytes,
    selectable: Value,
    /// Its views in other versions, by (group, version) served.
    converted: Mutex<Vec<(GroupVersion, Arc<Stored>)>>,
}

type GroupVersion = (&'static str, &'static str);

/// The paths of the object's name, namespace and labels, and of the fields
/// selectors on its resource can name (all as upstream's field label
/// conversion lists them): what a `Filter` reads.
fn selectable_paths(key: &str) -> impl Iterator<Item = &'static str> {
    let plural = kubox_store::resource_of(key);
    ["metadata.name", "metadata.namespace", "metadata.labels"]
        .into_iter()
        .chain(crate::selectors::supported_fields(plural).iter().copied())
}

/// The selectable fields of `object`, at their paths in it.
fn selectable(key: &str, object: &Value) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    for path in selectable_paths(key) {
        let Some(v) = path.split('.').try_fold(object, |v, k| v.get(k)) else {
            continue;
        };
        let slot = path.split('.').fold(&mut out, |o, k| &mut o[k]);
        *slot = v.clone();
    }
    out
}

/// A JSON object's fields, left encoded.
type RawFields<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

/// The values at `paths` (each as its fields) in the encoded JSON `raw`,
/// set at the same paths in `out`. Only they are decoded; each object on
/// the way is scanned once, however many of the paths go through it.
fn pick(raw: &RawValue, paths: &[Vec<&str>], out: &mut Value) {
    if let Ok(fields) = serde_json::from_str::<RawFields>(raw.get()) {
        pick_fields(&fields, paths, out);
    }
}

/// `pick` on an object's fields, already scanned.
fn pick_fields(fields: &RawFields, paths: &[Vec<&str>], out: &mut Value) {
    for (i, path) in paths.iter().enumerate() {
        let Some((first, _)) = path.split_first() else {
            continue;
        };
        // Each field once, with the first of the paths through it.
        if paths[..i].iter().any(|p| p.first() == Some(first)) {
            continue;
        }
        let Some(value) = fields.get(*first) else {
            continue;
        };
        let rests: Vec<Vec<&str>> = paths
            .iter()
            .filter(|p| p.first() == Some(first))
            .map(|p| p[1..].to_vec())
            .collect();
        if rests.iter().any(Vec::is_empty) {
            if let Ok(v) = serde_json::from_str(value.get()) {
                out[*first] = v;
            }
        } else {
            let mut inner = Value::Object(serde_json::Map::new());
            pick(value, &rests, &mut inner);
            if inner.as_object().is_some_and(|m| !m.is_empty()) {
                out[*first] = inner;
            }
        }
    }
}

impl Stored {
    pub fn new(key: String, object: Value, revision: Revision) -> Self {
        let json = Bytes::from(serde_json::to_vec(&object).expect("a JSON value serializes"));
        Self {
            selectable: selectable(&key, &object),
            key,
            revision,
            json,
            converted: Mutex::new(Vec::new()),
        }
    }

    /// The object as the store holds it (JSON, without a resourceVersion),
    /// at `revision`: its resourceVersion is written into the stored bytes
    /// and only the selectable fields are decoded. None when the stored
    /// form is not one `api::encode` writes, so it must be decoded whole.
    fn from_stored(key: &str, value: &[u8], revision: Revision) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let top: RawFields = serde_json::from_str(text).ok()?;
        let meta = top.get("metadata")?.get();
        if !meta.starts_with('{') {
            return None;
        }
        // The resourceVersion is picked with the selectable fields, in the
        // same scan of the metadata, only to tell that it is there.
        let paths: Vec<Vec<&str>> = selectable_paths(key)
            .chain(["metadata.resourceVersion"])
            .map(|p| p.split('.').collect())
            .collect();
        let mut selectable = Value::Object(serde_json::Map::new());
        pick_fields(&top, &paths, &mut selectable);
        if selectable["metadata"].get("resourceVersion").is_some() {
            return None;
        }
        // Just inside the metadata's brace: `meta` is a slice of `text`.
        let at = meta.as_ptr() as usize - text.as_ptr() as usize + 1;
        let empty = meta[1..].trim_start().starts_with('}');
        let rv = format!(
            "\"resourceVersion\":\"{revision}\"{}",
            if empty { "" } else { "," }
        );
        let mut json = Vec::with_capacity(value.len() + rv.len());
        json.extend_from_slice(&value[..at]);
        json.extend_from_slice(rv.as_bytes());
        json.extend_from_slice(&value[at..]);
        Some(Self {
            key: key.to_owned(),
            revision,
            json: Bytes::from(json),
            selectable,
            converted: Mutex::new(Vec::new()),
        })
    }

    /// The object as JSON.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The object, decoded anew for each call.
    pub fn object(&self) -> Value {
        serde_json::from_slice(&self.json).expect("JSON encoded from a value decodes")
    }

    /// Only the object's metadata, decoded anew for each call.
    pub fn metadata(&self) -> Value {
        let mut out = Value::Object(serde_json::Map::new());
        let raw: &RawValue = serde_json::from_slice(&self.json).expect("stored JSON is JSON");
        pick(raw, &[vec!["metadata"]], &mut out);
        out["metadata"].take()
    }

    /// The fields a `Filter` may read: name, namespace, labels and the
    /// resource's selectable fields, at their paths in the object.
    pub fn selectable(&self) -> &Value {
        &self.selectable
    }

    /// The object as `served` presents it: itself, unless that version is
    /// converted from the stored one.
    pub fn served(self: &Arc<Self>, served: &ResourceType) -> Arc<Stored> {
        if served.conversion.is_none() {
            return self.clone();
        }
        let version = (served.group, served.version);
        let mut converted = self.converted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = converted.iter().find(|(v, _)| *v == version) {
            return s.clone();
        }
        let s = Arc::new(Stored::new(
            self.key.clone(),
            served.from_storage(self.object()),
            self.revision,
        ));
        converted.push((version, s.clone()));
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
struct Change {
    revision: Revision,
    at: Instant,
    object: Arc<Stored>,
    prev: Option<Arc<Stored>>,
    deleted: bool,
}

/// A change as the store reports it, before the cache has applied it.
enum Update {
    Put(Arc<Stored>),
    Delete { key: String, revision: Revision },
}

/// What a watcher receives.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    Object(EventType, Arc<Stored>),
    Bookmark(Revision),
    /// The initial state has been sent (`sendInitialEvents`).
    InitialEventsEnd(Revision),
}

/// Decides whether an object is in a watcher's view.
pub type Filter = Arc<dyn Fn(&Stored) -> bool + Send + Sync>;

struct Watcher {
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::Sender<WatchEvent>,
}

impl Watcher {
    /// The event this watcher sees for a change, if any: an object entering
    /// its view is ADDED, one leaving it DELETED, as upstream's cacher does.
    fn view(&self, c: &Change) -> Option<WatchEvent> {
        let now = !c.deleted && (self.filter)(&c.object);
        let before = c.prev.as_ref().is_some_and(|p| (self.filter)(p));
        let kind = match (before, now) {
            (false, true) => EventType::Added,
            (true, true) => EventType::Modified,
            (true, false) => EventType::Deleted,
            (false, false) => return None,
        };
        Some(WatchEvent::Object(kind, c.object.clone()))
    }
}

#[derive(Default)]
struct State {
    revision: Revision,
    /// The oldest revision a watch may start after.
    oldest: Revision,
    objects: BTreeMap<String, Arc<Stored>>,
    history: VecDeque<Change>,
    watchers: Vec<Watcher>,
}

impl State {
    /// Drops the changes no longer kept; a watch from before the oldest kept
    /// one is then 410 Gone.
    fn trim(&mut self, now: Instant) {
        while self.history.len() > HISTORY_MAX
            || (self.history.len() > HISTORY_MIN
                && self
                    .history
                    .front()
                    .is_some_and(|c| now.duration_since(c.at) > HISTORY_FRESH))
        {
            if let Some(c) = self.history.pop_front() {
                self.oldest = c.revision;
            }
        }
    }
}

pub struct Cache {
    prefix: String,
    state: RwLock<State>,
    revision: watch::Sender<Revision>,
}

fn decode(key: &str, value: &[u8], revision: Revision) -> Option<Arc<Stored>> {
    if let Some(stored) = Stored::from_stored(key, value, revision) {
        return Some(Arc::new(stored));
    }
    match serde_json::from_slice::<Value>(value) {
        Ok(mut object) => {
            object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
            Some(Arc::new(Stored::new(key.to_owned(), object, revision)))
        }
        Err(e) => {
            tracing::error!(key, error = %e, "undecodable object in storage");
            None
        }
    }
}

impl Cache {
    /// Starts a cache for every key under `prefix`, kept current by a task
    /// that runs for as long as the cache is referenced.
    pub fn start(store: Arc<dyn Store>, prefix: String) -> Arc<Self> {
        // -1 until the first list has loaded.
        let cache = Arc::new(Self {
            prefix,
            state: RwLock::new(State {
                revision: -1,
                ..State::default()
            }),
            revision: watch::channel(-1).0,
        });
        tokio::spawn(feed(Arc::downgrade(&cache), store));
        cache
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// The keys it holds: every one under this prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Waits until the cache has seen `revision`; 504 as upstream when it does not in time.
    pub async fn wait_for(&self, revision: Revision) -> ApiResult<()> {
        let mut rx = self.revision.subscribe();
        let reached = tokio::time::timeout(FRESHNESS_WAIT, rx.wait_for(|r| *r >= revision)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::timeout(format!(
                "Too large resource version: {revision}, current: {}",
                self.revision()
            ))),
        }
    }

    /// The objects under `prefix` that pass `filter`, and the revision they are at.
    pub fn list(
        &self,
        prefix: &str,
        filter: &dyn Fn(&Stored) -> bool,
    ) -> (Vec<Arc<Stored>>, Revision) {
        let state = self.read();
        let items = state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, o)| filter(o))
            .map(|(_, o)| o.clone())
            .collect();
        (items, state.revision)
    }

    /// How many objects the cache holds.
    pub fn object_count(&self) -> usize {
        self.read().objects.len()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Stored>> {
        self.read().objects.get(key).cloned()
    }

    /// Starts a watch. With `from` = Some(rv), every change after rv (410 Gone
    /// if rv is older than the cache's window); with None, the current objects
    /// as ADDED events first (followed, if asked, by a marker), then changes.
    pub fn watch(
        &self,
        from: Option<Revision>,
        filter: Filter,
        bookmarks: bool,
        mark_initial_end: bool,
    ) -> ApiResult<mpsc::Receiver<WatchEvent>> {
        let mut state = self.write();
        let mut backlog: Vec<WatchEvent> = match from {
            Some(rv) if rv < state.oldest => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    state.oldest
                )));
            }
            Some(rv) => {
                let probe = Watcher {
                    filter: filter.clone(),
                    bookmarks,
                    tx: mpsc::channel(1).0,
                };
                state
                    .history
                    .iter()
                    .filter(|c| c.revision > rv)
                    .filter_map(|c| probe.view(c))
                    .collect()
            }
            None => state
                .objects
                .values()
                .filter(|o| filter(o))
                .map(|o| WatchEvent::Object(EventType::Added, o.clone()))
                .collect(),
        };
        if mark_initial_end {
            backlog.push(WatchEvent::InitialEventsEnd(state.revision));
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE.max(backlog.len() + 1));
        for e in backlog {
            // Capacity covers the backlog.
            let _ = tx.try_send(e);
        }
        state.watchers.push(Watcher {
            filter,
            bookmarks,
            tx,
        });
        Ok(rx)
    }

    fn apply(&self, revision: Revision, updates: Vec<Update>) {
        let now = Instant::now();
        let mut state = self.write();
        // The cache holds every object's previous state, so the store's
        // copy of it need not be decoded again.
        let changes: Vec<Change> = updates
            .into_iter()
            .filter_map(|u| match u {
                Update::Put(object) => {
                    let prev = state.objects.insert(object.key.clone(), object.clone());
                    Some(Change {
                        revision: object.revision,
                        at: now,
                        object,
                        prev,
                        deleted: false,
                    })
                }
                Update::Delete { key, revision } => {
                    let last = state.objects.remove(&key)?;
                    // A deleted object is reported in its last state, at the deletion's revision.
                    let mut object = last.object();
                    object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
                    Some(Change {
                        revision,
                        at: now,
                        object: Arc::new(Stored::new(key, object, revision)),
                        prev: Some(last),
                        deleted: true,
                    })
                }
            })
            .collect();
        state.watchers.retain(|w| {
            changes
                .iter()
                .filter_map(|c| w.view(c))
                .all(|e| w.tx.try_send(e).is_ok())
        });
        state.history.extend(changes);
        state.trim(now);
        state.revision = revision;
        drop(state);
        self.revision.send_replace(revision);
    }

    fn progress(&self, revision: Revision) {
        let mut state = self.write();
        if revision <= state.revision {
            return;
        }
        // Progress comes when nothing is written too: the history shrinks after a burst.
        state.trim(Instant::now());
        state.revision = revision;
        state.watchers.retain(|w| {
            !w.bookmarks
                || matches!(
                    w.tx.try_send(WatchEvent::Bookmark(revision)),
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_))
                )
        });
        drop(state);
        self.revision.send_replace(revision);
    }

    /// Replaces the whole state after a (re-)list; open watches end so their
    /// clients re-list too.
    fn reset(&self, objects: BTreeMap<String, Arc<Stored>>, revision: Revision) {
        let mut state = self.write();
        state.objects = objects;
        state.history.clear();
        state.watchers.clear();
        state.oldest = revision;
        state.revision = revision;
        drop(state);
        self.revision.send_replace(revision);
    }
}

/// What the server keeps in step with one of its own caches, as upstream's
/// API server runs informers on itself (the RBAC view, the node graph).
pub trait Follower: Send + Sync + 'static {
    /// The whole of the cache `plural`, at the start and after every re-watch.
    fn replace(&self, plural: &'static str, objects: Vec<Arc<Stored>>, revision: Revision);
    /// One change after that.
    fn apply(&self, plural: &'static str, event: EventType, object: &Stored);
    /// The cache has reached `revision`: every change up to it was handed over.
    fn progress(&self, _plural: &'static str, _revision: Revision) {}
}

/// Follows `cache` for as long as `follower` lives: its initial objects are
/// handed over at once (no moment with half of them), then changes one by
/// one. A closed watch (the cache re-listed, or this watcher fell behind)
/// starts over.
pub fn follow<F: Follower>(follower: &Arc<F>, cache: Arc<Cache>, plural: &'static str) {
    let follower = Arc::downgrade(follower);
    tokio::spawn(async move {
        loop {
            let mut rx = match cache.watch(None, Arc::new(|_| true), true, true) {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(error = %e.message, plural, "cannot follow the cache");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut initial = Some(Vec::new());
            while let Some(event) = rx.recv().await {
                let Some(follower) = follower.upgrade() else {
                    return;
                };
                match (event, initial.as_mut()) {
                    (WatchEvent::Object(_, stored), Some(objects)) => objects.push(stored),
                    (WatchEvent::InitialEventsEnd(rev), Some(_)) => {
                        follower.replace(plural, initial.take().unwrap_or_default(), rev);
                        follower.progress(plural, rev);
                    }
                    (WatchEvent::Object(event, stored), None) => {
                        follower.apply(plural, event, &stored);
                        follower.progress(plural, stored.revision);
                    }
                    (WatchEvent::Bookmark(rev), None) => follower.progress(plural, rev),
                    _ => {}
                }
            }
            if follower.strong_count() == 0 {
                return;
            }
        }
    });
}

/// Lists, then follows the store's watch; re-lists when the watch breaks.
async fn feed(cache: std::sync::Weak<Cache>, store: Arc<dyn Store>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(prefix) = cache.upgrade().map(|c| c.prefix.clone()) else {
            return;
        };
        let result = async {
            let listed = store.range(RangeRequest::prefix(prefix.clone())).await?;
            let objects = listed
                .kvs
                .iter()
                .filter_map(|kv| {
                    decode(&kv.key, &kv.value, kv.mod_revision).map(|o| (kv.key.clone(), o))
                })
                .collect();
            let mut stream = store
                .watch(WatchRequest {
                    prefix: prefix.clone(),
                    start_revision: listed.revision + 1,
                    progress_notify: true,
                })
                .await?;
            match cache.upgrade() {
                Some(c) => c.reset(objects, listed.revision),
                None => return Ok(()),
            }
            while let Some(msg) = stream.next().await {
                let Some(c) = cache.upgrade() else {
                    return Ok(());
                };
                match msg? {
                    WatchMessage::Progress(rev) => c.progress(rev),
                    WatchMessage::Events(events) => {
                        let revision = events.last().map_or(0, |e| e.revision());
                        // Decoded here, outside the cache's lock.
                        let updates = events
                            .into_iter()
                            .filter_map(|e| match e.kind {
                                EventKind::Put => decode(&e.kv.key, &e.kv.value, e.kv.mod_revision)
                                    .map(Update::Put),
                                EventKind::Delete => Some(Update::Delete {
                                    key: e.kv.key,
                                    revision: e.kv.mod_revision,
                                }),
                            })
                            .collect();
                        c.apply(revision, updates);
                    }
                }
            }
            Err(kubox_store::Error::Unavailable("store watch ended".into()))
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "watch cache re-listing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn an_object_is_encoded_once() {
        let s = Stored::new("/registry/pods/a/x".into(), json!({"kind": "Pod"}), 7);
        let first = s.json().clone();
        assert_eq!(serde_json::from_slice::<Value>(&first).unwrap(), s.object());
        // The same buffer, not an equal one.
        assert_eq!(s.json().as_ptr(), first.as_ptr());
    }

    #[test]
    fn filters_read_only_the_selectable_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"},
                                      "annotations": {"x": "y"}},
                         "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                         "status": {"phase": "Running"}});
        let s = Stored::new("/registry/pods/a/p".into(), pod.clone(), 4);
        assert_eq!(
            s.selectable(),
            &json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"}},
                    "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
        );
        assert_eq!(s.object(), pod);
    }

    #[test]
    fn stored_bytes_are_read_as_the_decoded_object_would_be() {
        let objects = [
            json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"},
                                "annotations": {"x": "y"}},
                   "spec": {"nodeName": "n1", "hostNetwork": null, "containers": [{"name": "c"}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.1"}}),
            json!({"metadata": {}, "spec": null, "status": "odd"}),
            json!({"metadata": {"name": "q\"uote\\", "labels": {"a\"b": "x"}}}),
            json!({"kind": "Pod"}),
            json!({"metadata": {"name": "old", "resourceVersion": "3"}}),
        ];
        let key = "/registry/pods/a/p";
        for object in objects {
            let bytes = serde_json::to_vec(&object).unwrap();
            let read = decode(key, &bytes, 12).unwrap();
            let mut expected = object.clone();
            expected["metadata"]["resourceVersion"] = json!("12");
            let decoded = Stored::new(key.into(), expected.clone(), 12);
            assert_eq!(read.object(), expected, "{object}");
            assert_eq!(read.selectable(), decoded.selectable(), "{object}");
            assert_eq!(read.metadata(), expected["metadata"], "{object}");
        }
        // Written into the bytes, not decoded and encoded again.
        let read = decode(key, br#"{"metadata":{"name":"p"},"spec":{"b":1,"a":2}}"#, 5).unwrap();
        assert_eq!(
            &read.json()[..],
            br#"{"metadata":{"resourceVersion":"5","name":"p"},"spec":{"b":1,"a":2}}"#
        );
    }

    fn change(revision: Revision, at: Instant) -> Change {
        let object = Arc::new(Stored::new(
            "/registry/pods/a/p".into(),
            json!({}),
            revision,
        ));
        Change {
            revision,
            at,
            object,
            prev: None,
            deleted: false,
        }
    }

    #[test]
    fn history_keeps_the_fresh_changes_or_the_last_few() {
        let now = Instant::now();
        let stale = now - HISTORY_FRESH - Duration::from_secs(1);
        let mut state = State::default();
        state.history.extend((1..=300).map(|r| change(r, stale)));
        state.history.extend((301..=400).map(|r| change(r, now)));
        state.trim(now);
        // The fresh hundred stay; resuming from before them is Gone.
        assert_eq!(state.history.len(), HISTORY_MIN);
        assert_eq!(state.oldest, 300);
        state
            .history
            .extend((401..=400 + HISTORY_MAX as Revision).map(|r| change(r, now)));
        state.trim(now);
        assert_eq!(state.history.len(), HISTORY_MAX);
        assert_eq!(state.oldest, 400);
    }

    #[test]
    fn a_converted_view_is_made_once_per_version() {
        let registry = Registry::builtin();
        let core = registry.get("", "v1", "events").unwrap();
        let events = registry.get("events.k8s.io", "v1", "events").unwrap();
        let (stored_form, converted) = if core.conversion.is_some() {
            (events, core)
        } else {
            (core, events)
        };
        let s = Arc::new(Stored::new(
            "/registry/events/a/e".into(),
            json!({"apiVersion": stored_form.api_version(), "kind": "Event",
                   "metadata": {"name": "e", "namespace": "a"}}),
            3,
        ));
        assert!(Arc::ptr_eq(&s.served(stored_form), &s));
        let view = s.served(converted);
        assert_eq!(view.object()["apiVersion"], converted.api_version());
        assert_eq!(view.revision, 3);
        assert!(Arc::ptr_eq(&s.served(converted), &view));
    }
}
