//! A cache of every object of a type, for components that rebuild what they
//! serve from whole caches (the service proxy, cluster DNS) or read them
//! whole (the scheduler) rather than reconcile one object at a time.

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// Caches every object of a type, cluster-wide; each change (and the end of
/// each complete list) wakes `changed`. The task ends when aborted.
pub fn follow<K>(
    client: kube::Client,
    changed: Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Followed,
{
    follow_slim(
        client,
        |_| {},
        move |event| {
            if matches!(
                event,
                watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
            ) {
                changed.notify_one()
            }
        },
    )
}

/// As `follow`, but each object is cached as `slim` leaves it, and `seen`
/// is told of every event once the cache holds it.
pub fn follow_slim<K>(
    client: kube::Client,
    slim: fn(&mut K),
    seen: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Followed,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let task = tokio::spawn(async move {
        let events = watcher(api, watcher::Config::default())
            .backoff(crate::node_watch_backoff())
            .modify(slim)
            .reflect(writer);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => seen(&event),
                Err(e) => tracing::warn!(kind = %K::kind(&()), "watching: {e}"),
            }
        }
    });
    (store, task)
}

/// What a followed type must be.
pub trait Followed:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Followed for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}
