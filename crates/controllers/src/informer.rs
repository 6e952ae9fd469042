//! Shared informers: one watch and one in-memory cache per resource type,
//! however many controllers read it, as client-go's SharedInformerFactory.
//! Each subscriber gets every object applied or deleted, as a trigger
//! stream for a kube-runtime `Controller`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How many changes a slow subscriber may fall behind before it is handed
/// the whole cache again instead.
const BACKLOG: usize = 4096;

/// What a resource type must be to be informed on.
pub trait Informed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Informed for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// The cache and the change feed of one resource type.
pub struct Informer<K: Informed> {
    store: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
}

impl<K: Informed> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K: Informed> Informer<K> {
    /// Every object of the type as last seen.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The objects in the cache now, then each object as it is applied or
    /// deleted (deleted ones in their last state). A subscriber that falls
    /// behind gets the whole cache again rather than a gap.
    pub fn stream(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let rx = self.changes.subscribe();
        let store = self.store.clone();
        let current = futures::stream::iter(self.store.state());
        let changes = futures::stream::unfold(rx, move |mut rx| {
            let store = store.clone();
            async move {
                match rx.recv().await {
                    Ok(obj) => Some((vec![obj], rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => Some((store.state(), rx)),
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            }
        })
        .flat_map(futures::stream::iter);
        current.chain(changes).map(|obj| Ok((*obj).clone()))
    }
}

/// The informers of one controller manager, made on first use.
#[derive(Clone)]
pub struct Informers {
    client: kube::Client,
    made: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send>>>>,
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
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(informer) = made
            .get(&TypeId::of::<K>())
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return informer.clone();
        }
        let (store, mut writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(BACKLOG);
        let informer = Informer {
            store: store.clone(),
            changes: changes.clone(),
        };
        let api: Api<K> = Api::all(self.client.clone());
        let task = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), "watching: {e}");
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                match event {
                    watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                        let _ = changes.send(Arc::new(obj));
                    }
                    // After a (re)list every object is news: changes during
                    // a broken watch arrive only this way.
                    watcher::Event::InitDone => {
                        for obj in store.state() {
                            let _ = changes.send(obj);
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        made.insert(TypeId::of::<K>(), Box::new(informer.clone()));
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
