//! Shared informers: one watch and one in-memory cache per resource type,
//! however many controllers read it, as client-go's SharedInformerFactory.
//! Each subscriber gets the changes client-go's event handlers would see
//! (`changes`: added, updated with the previous state, deleted), or just the
//! objects as a trigger stream for a kube-runtime `Controller` (`stream`).

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What a resource type must be to be informed on.
pub trait Informed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Informed for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// Any watchable object, typed or dynamic.
pub trait Watched:
    Resource<DynamicType: Clone + Eq + Hash + Send + Sync>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType: Clone + Eq + Hash + Send + Sync>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Only the metadata of an object of some served resource (the garbage
/// collector's view).
pub type Metadata = PartialObjectMeta<DynamicObject>;

/// One change to the cache, as client-go's event handlers get them.
#[derive(Debug)]
pub enum Change<K> {
    /// Added (`old` is `None`) or updated.
    Applied { old: Option<Arc<K>>, new: Arc<K> },
    /// Deleted, in its last known state.
    Deleted(Arc<K>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Self::Applied { old, new } => Self::Applied {
                old: old.clone(),
                new: new.clone(),
            },
            Self::Deleted(obj) => Self::Deleted(obj.clone()),
        }
    }
}

impl<K> Change<K> {
    /// The object as it is now, or was when deleted.
    pub fn object(&self) -> &Arc<K> {
        match self {
            Self::Applied { new, .. } => new,
            Self::Deleted(obj) => obj,
        }
    }
}

struct Subscribers<K>(Vec<mpsc::UnboundedSender<Change<K>>>);

impl<K: Resource> Subscribers<K> {
    fn send(&mut self, change: Change<K>) {
        self.0.retain(|s| s.send(change.clone()).is_ok());
    }

    /// `new` was applied over `old`; a new object under an old name is a
    /// delete and an add.
    fn applied(&mut self, old: Option<Arc<K>>, new: Arc<K>) {
        let old = match old {
            Some(o) if o.meta().uid != new.meta().uid => {
                self.send(Change::Deleted(o));
                None
            }
            o => o,
        };
        self.send(Change::Applied { old, new });
    }
}

/// The cache and the change feed of one resource type.
pub struct Informer<K: Watched> {
    store: Store<K>,
    subscribers: Arc<Mutex<Subscribers<K>>>,
    /// Whether the first list is in the cache. Not the store's own
    /// `wait_until_ready`: that keeps one waker, so of several controllers
    /// waiting on one informer only the last to ask would be woken.
    synced: watch::Receiver<bool>,
}

impl<K: Watched> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            subscribers: self.subscribers.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<K: Watched> Informer<K> {
    /// An informer fed by `events` in a task of its own.
    fn spawn<S>(events: S, dyntype: K::DynamicType) -> (Self, JoinHandle<()>)
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let writer = Writer::new(dyntype.clone());
        let (synced, synced_rx) = watch::channel(false);
        let informer = Informer {
            store: writer.as_reader(),
            subscribers: Arc::new(Mutex::new(Subscribers(Vec::new()))),
            synced: synced_rx,
        };
        let task = tokio::spawn(inform(
            events,
            writer,
            dyntype,
            informer.subscribers.clone(),
            synced,
        ));
        (informer, task)
    }

    /// Every object of the type as last seen.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits until the cache holds a complete first list.
    pub async fn synced(&self) {
        // The sender lives as long as the informer's task; if that is gone
        // the controllers are being dropped too.
        let _ = self.synced.clone().wait_for(|synced| *synced).await;
    }

    /// The objects in the cache now (as added), then every change, in
    /// order, with nothing missed or repeated.
    pub fn changes(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        // Under the lock the task writes the cache with, so the snapshot and
        // the feed meet exactly.
        let current = {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subscribers.0.push(tx);
            self.store.state()
        };
        let current = current
            .into_iter()
            .map(|new| Change::Applied { old: None, new });
        futures::stream::iter(current)
            .chain(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }

    /// Each object as it is applied or deleted (deleted ones in their last
    /// state, so owners hear of their children going), starting with the
    /// cached ones: a `Controller`'s shared trigger stream. Shared, not
    /// copied: a pod's change reaches several controllers.
    pub fn stream(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.changes().map(|c| c.object().clone())
    }
}

/// Feeds a cache from a watch and tells every subscriber what changed.
async fn inform<K: Watched>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    mut writer: Writer<K>,
    dyntype: K::DynamicType,
    subscribers: Arc<Mutex<Subscribers<K>>>,
    synced: watch::Sender<bool>,
) {
    let store = writer.as_reader();
    // As upstream's informers' transform: no controller reads managedFields,
    // and it is often the largest part of an object's metadata.
    let events = events.modify(|o| o.meta_mut().managed_fields = None);
    let mut events = std::pin::pin!(events.default_backoff());
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(kind = %K::kind(&dyntype), "watching: {e}");
                continue;
            }
        };
        let mut subscribers = subscribers.lock().unwrap_or_else(|e| e.into_inner());
        match &event {
            watcher::Event::Apply(obj) => {
                let old = store.get(&ObjectRef::from_obj_with(obj, dyntype.clone()));
                writer.apply_watcher_event(&event);
                let new = store
                    .get(&ObjectRef::from_obj_with(obj, dyntype.clone()))
                    .unwrap_or_else(|| Arc::new(obj.clone()));
                subscribers.applied(old, new);
            }
            watcher::Event::Delete(obj) => {
                writer.apply_watcher_event(&event);
                subscribers.send(Change::Deleted(Arc::new(obj.clone())));
            }
            // After a (re)list the cache is replaced: what vanished meanwhile
            // was deleted, and everything else may have changed.
            watcher::Event::InitDone => {
                let mut before: HashMap<ObjectRef<K>, Arc<K>> = store
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from_obj_with(&*o, dyntype.clone()), o))
                    .collect();
                writer.apply_watcher_event(&event);
                for new in store.state() {
                    let old = before.remove(&ObjectRef::from_obj_with(&*new, dyntype.clone()));
                    subscribers.applied(old, new);
                }
                for gone in before.into_values() {
                    subscribers.send(Change::Deleted(gone));
                }
                synced.send_replace(true);
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {
                writer.apply_watcher_event(&event);
            }
        }
    }
}

/// The informers of one controller manager, made on first use.
#[derive(Clone)]
pub struct Informers {
    client: kube::Client,
    made: Arc<Mutex<HashMap<String, Box<dyn Any + Send>>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Informers {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            made: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// The informer of `K`, starting its watch the first time it is asked for.
    pub fn get<K: Informed>(&self) -> Informer<K> {
        let api: Api<K> = Api::all(self.client.clone());
        self.informer(std::any::type_name::<K>().to_owned(), (), move || {
            watcher(api, watcher::Config::default())
        })
    }

    /// An informer on the metadata of every object of a served resource.
    pub fn metadata(&self, resource: &ApiResource) -> Informer<Metadata> {
        let api: Api<Metadata> = Api::all_with(self.client.clone(), resource);
        let key = format!(
            "metadata:{}/{}/{}",
            resource.group, resource.version, resource.plural
        );
        self.informer(key, resource.clone(), move || {
            watcher(api, watcher::Config::default())
        })
    }

    fn informer<K, S>(
        &self,
        key: String,
        dyntype: K::DynamicType,
        events: impl FnOnce() -> S,
    ) -> Informer<K>
    where
        K: Watched,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(informer) = made.get(&key).and_then(|b| b.downcast_ref::<Informer<K>>()) {
            return informer.clone();
        }
        let (informer, task) = Informer::spawn(events(), dyntype);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        made.insert(key, Box::new(informer.clone()));
        informer
    }
}

impl Drop for Informers {
    fn drop(&mut self) {
        // Only the last handle stops the watches.
        if Arc::strong_count(&self.tasks) == 1 {
            for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[tokio::test]
    async fn every_waiter_hears_of_the_first_list() {
        let (tx, rx) = mpsc::unbounded_channel();
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let (informer, _task) = Informer::<ConfigMap>::spawn(events, ());
        // More waiters than `join_all` polls all at once on every wake-up.
        let waiters = futures::future::join_all((0..40).map(|_| informer.synced()));
        let list = async {
            for event in [watcher::Event::Init, watcher::Event::InitDone] {
                tx.send(Ok(event)).expect("the informer listens");
            }
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            futures::future::join(waiters, list),
        )
        .await
        .expect("every waiter woken");
    }
}
