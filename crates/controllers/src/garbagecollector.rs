//! The garbage collector (upstream's garbagecollector controller): a graph
//! of owner references over the metadata of every served resource, kept
//! from one metadata informer per resource. Dependents whose owners are all
//! gone (or are other objects under the same name: references match by
//! UID) are deleted; an owner deleted in the foreground keeps its
//! `foregroundDeletion` finalizer until the dependents blocking it are
//! gone; one deleted with `orphan` has its dependents' references removed
//! first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::discovery::{self, Served};
use crate::queue::WorkQueue;
use crate::{Change, Context, Error, Metadata, is_not_found, is_reason};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// Workers deleting dependents, and orphaning them.
const DELETE_WORKERS: usize = 4;
const ORPHAN_WORKERS: usize = 2;

/// An object as the graph knows it; owner references name owners this way
/// (their namespace is the dependent's).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    uid: String,
}

impl Identity {
    fn of(resource: &ApiResource, meta: &Metadata) -> Self {
        Self {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: meta.metadata.namespace.clone(),
            name: meta.name_any(),
            uid: meta.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
struct Node {
    identity: Identity,
    owners: Vec<OwnerReference>,
    dependents: HashSet<String>,
    being_deleted: bool,
    deleting_dependents: bool,
    /// Only referred to as an owner, not yet seen by an informer.
    unseen: bool,
}

fn has_finalizer(meta: &Metadata, finalizer: &str) -> bool {
    meta.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == finalizer)
}

/// Deletion began with this finalizer in place (upstream's
/// deletionStartsWithFinalizer).
fn starts_deleting_with(old: Option<&Metadata>, new: &Metadata, finalizer: &str) -> bool {
    let deleting =
        |m: &Metadata| m.metadata.deletion_timestamp.is_some() && has_finalizer(m, finalizer);
    deleting(new) && !old.is_some_and(deleting)
}

fn blocks(r: &OwnerReference) -> bool {
    r.block_owner_deletion == Some(true)
}

enum GraphEvent {
    Observed(Arc<ApiResource>, Change<Metadata>),
    /// An object found gone (or replaced under its name) by a worker.
    Gone(Identity),
}

/// The most recently found absent owners (upstream keeps 500 too).
#[derive(Default)]
struct Absent {
    set: HashSet<Identity>,
    order: VecDeque<Identity>,
}

const ABSENT_OWNERS: usize = 500;

impl Absent {
    fn insert(&mut self, id: Identity) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > ABSENT_OWNERS
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &Identity) -> bool {
        self.set.contains(id)
    }
}

struct Graph {
    nodes: HashMap<String, Node>,
    /// Owners known to be gone, so their other dependents need no lookup.
    absent: Absent,
}

struct Collector {
    client: kube::Client,
    graph: Mutex<Graph>,
    /// Served resources by API group and kind.
    kinds: HashMap<(String, String), Served>,
    attempt_to_delete: Arc<WorkQueue<String>>,
    attempt_to_orphan: Arc<WorkQueue<String>>,
    gone: mpsc::UnboundedSender<GraphEvent>,
}

/// What a worker does with an item next.
enum Next {
    Forget,
    Requeue,
}

pub async fn run(ctx: Arc<Context>) {
    let resources = loop {
        match discovery::served(&ctx.client).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!("garbage collector: discovery failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    // Events take no part (upstream's ignored resources).
    let monitored: Vec<Served> = resources
        .iter()
        .filter(|s| s.supports(&["delete", "list", "watch"]))
        .filter(|s| s.resource.plural != "events")
        .cloned()
        .collect();
    let (gone, gone_rx) = mpsc::unbounded_channel();
    let collector = Arc::new(Collector {
        client: ctx.client.clone(),
        graph: Mutex::new(Graph {
            nodes: HashMap::new(),
            absent: Absent::default(),
        }),
        kinds: resources
            .into_iter()
            .map(|s| ((s.group().to_owned(), s.resource.kind.clone()), s))
            .collect(),
        attempt_to_delete: WorkQueue::new("garbage_collector_attempt_to_delete"),
        attempt_to_orphan: WorkQueue::new("garbage_collector_attempt_to_orphan"),
        gone,
    });
    let informers: Vec<_> = monitored
        .iter()
        .map(|s| {
            (
                Arc::new(s.resource.clone()),
                ctx.informers.metadata(&s.resource),
            )
        })
        .collect();
    let mut feeds: Vec<stream::BoxStream<'static, GraphEvent>> = informers
        .iter()
        .map(|(resource, informer)| {
            let resource = resource.clone();
            informer
                .changes()
                .map(move |c| GraphEvent::Observed(resource.clone(), c))
                .boxed()
        })
        .collect();
    feeds.push(tokio_stream::wrappers::UnboundedReceiverStream::new(gone_rx).boxed());
    let builder = {
        let collector = collector.clone();
        async move {
            let mut events = stream::select_all(feeds);
            while let Some(event) = events.next().await {
                collector.process(event);
            }
        }
    };
    let workers = {
        let collector = collector.clone();
        async move {
            for (_, informer) in &informers {
                informer.synced().await;
            }
            let mut workers = Vec::new();
            for _ in 0..DELETE_WORKERS {
                workers.push(collector.clone().delete_worker().boxed());
            }
            for _ in 0..ORPHAN_WORKERS {
                workers.push(collector.clone().orphan_worker().boxed());
            }
            join_all(workers).await;
        }
    };
    futures::join!(builder, workers);
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The graph builder: one event at a time (upstream's processGraphChanges).
    fn process(&self, event: GraphEvent) {
        let mut graph = self.lock();
        match event {
            GraphEvent::Observed(resource, Change::Applied { old, new }) => {
                let identity = Identity::of(&resource, &new);
                self.applied(&mut graph, identity, old.as_deref(), &new);
            }
            GraphEvent::Observed(resource, Change::Deleted(gone)) => {
                self.remove(&mut graph, &Identity::of(&resource, &gone));
            }
            GraphEvent::Gone(identity) => self.remove(&mut graph, &identity),
        }
    }

    fn applied(
        &self,
        graph: &mut Graph,
        identity: Identity,
        old: Option<&Metadata>,
        new: &Metadata,
    ) {
        let uid = identity.uid.clone();
        let owners = new.metadata.owner_references.clone().unwrap_or_default();
        let being_deleted = new.metadata.deletion_timestamp.is_some();
        match graph.nodes.get_mut(&uid) {
            None => {
                graph.nodes.insert(
                    uid.clone(),
                    Node {
                        identity,
                        owners: owners.clone(),
                        dependents: HashSet::new(),
                        being_deleted,
                        deleting_dependents: being_deleted && has_finalizer(new, FOREGROUND),
                        unseen: false,
                    },
                );
                self.add_to_owners(graph, &uid, &owners);
            }
            Some(node) => {
                if node.unseen {
                    // The owner, seen at last: it is what the informer says.
                    node.identity = identity;
                    node.unseen = false;
                }
                let old_owners = std::mem::replace(&mut node.owners, owners.clone());
                if being_deleted {
                    node.being_deleted = true;
                }
                let added: Vec<OwnerReference> = owners
                    .iter()
                    .filter(|r| !old_owners.iter().any(|o| o.uid == r.uid))
                    .cloned()
                    .collect();
                // Owners no longer blocked by this object may finish deleting.
                for o in &old_owners {
                    let unblocked = match owners.iter().find(|r| r.uid == o.uid) {
                        None => blocks(o),
                        Some(r) => blocks(o) && !blocks(r),
                    };
                    if unblocked
                        && graph
                            .nodes
                            .get(&o.uid)
                            .is_some_and(|n| n.deleting_dependents)
                    {
                        self.attempt_to_delete.add(o.uid.clone());
                    }
                    if !owners.iter().any(|r| r.uid == o.uid)
                        && let Some(owner) = graph.nodes.get_mut(&o.uid)
                    {
                        owner.dependents.remove(&uid);
                    }
                }
                self.add_to_owners(graph, &uid, &added);
            }
        }
        if starts_deleting_with(old, new, ORPHAN) {
            self.attempt_to_orphan.add(uid);
        } else if starts_deleting_with(old, new, FOREGROUND)
            && let Some(node) = graph.nodes.get_mut(&uid)
        {
            node.deleting_dependents = true;
            for dependent in &node.dependents {
                self.attempt_to_delete.add(dependent.clone());
            }
            self.attempt_to_delete.add(uid);
        }
    }

    /// Records `uid` as a dependent of `owners`; an owner not seen yet gets
    /// a placeholder, checked against the API by a worker.
    fn add_to_owners(&self, graph: &mut Graph, uid: &str, owners: &[OwnerReference]) {
        let namespace = graph
            .nodes
            .get(uid)
            .and_then(|n| n.identity.namespace.clone());
        for r in owners {
            match graph.nodes.get_mut(&r.uid) {
                Some(owner) => {
                    owner.dependents.insert(uid.to_owned());
                }
                None => {
                    graph.nodes.insert(
                        r.uid.clone(),
                        Node {
                            identity: Identity {
                                api_version: r.api_version.clone(),
                                kind: r.kind.clone(),
                                namespace: namespace.clone(),
                                name: r.name.clone(),
                                uid: r.uid.clone(),
                            },
                            owners: Vec::new(),
                            dependents: [uid.to_owned()].into(),
                            being_deleted: false,
                            deleting_dependents: false,
                            unseen: true,
                        },
                    );
                    self.attempt_to_delete.add(r.uid.clone());
                }
            }
        }
    }

    /// An object is gone: its dependents may be garbage now, and owners
    /// waiting for it may finish deleting.
    fn remove(&self, graph: &mut Graph, identity: &Identity) {
        let Some(node) = graph.nodes.remove(&identity.uid) else {
            return;
        };
        for r in &node.owners {
            if let Some(owner) = graph.nodes.get_mut(&r.uid) {
                owner.dependents.remove(&identity.uid);
                if owner.deleting_dependents {
                    self.attempt_to_delete.add(r.uid.clone());
                }
            }
        }
        if !node.dependents.is_empty() {
            graph.absent.insert(node.identity.clone());
        }
        for dependent in node.dependents {
            self.attempt_to_delete.add(dependent);
        }
    }

    fn node(&self, uid: &str) -> Option<Node> {
        self.lock().nodes.get(uid).cloned()
    }

    /// The API of `identity`'s resource, in its namespace if namespaced.
    fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<(Api<DynamicObject>, bool), Error> {
        let served = self
            .kinds
            .get(&(discovery::group_of(api_version).to_owned(), kind.to_owned()))
            .ok_or_else(|| {
                Error::Failed(format!(
                    "unable to get REST mapping for {api_version}/{kind}"
                ))
            })?;
        let api = match (served.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &served.resource),
            _ => Api::all_with(self.client.clone(), &served.resource),
        };
        Ok((api, served.namespaced))
    }

    async fn delete_worker(self: Arc<Self>) {
        loop {
            let uid = self.attempt_to_delete.get().await;
            let next = match self.attempt_to_delete_item(&uid).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::debug!("garbage collector: {uid}: {e}");
                    Next::Requeue
                }
            };
            self.attempt_to_delete.done(&uid);
            match next {
                Next::Forget => self.attempt_to_delete.forget(&uid),
                Next::Requeue => self.attempt_to_delete.add_rate_limited(uid),
            }
        }
    }

    async fn orphan_worker(self: Arc<Self>) {
        loop {
            let uid = self.attempt_to_orphan.get().await;
            let result = self.orphan_dependents(&uid).await;
            self.attempt_to_orphan.done(&uid);
            match result {
                Ok(()) => self.attempt_to_orphan.forget(&uid),
                Err(e) => {
                    tracing::debug!("garbage collector: orphaning the dependents of {uid}: {e}");
                    self.attempt_to_orphan.add_rate_limited(uid);
                }
            }
        }
    }

    /// Upstream's attemptToDeleteItem.
    async fn attempt_to_delete_item(&self, uid: &str) -> Result<Next, Error> {
        let Some(item) = self.node(uid) else {
            return Ok(Next::Forget);
        };
        if item.being_deleted && !item.deleting_dependents {
            return Ok(Next::Forget);
        }
        let id = &item.identity;
        let (api, _) = self.api(&id.api_version, &id.kind, id.namespace.as_deref())?;
        let latest = match api.get_metadata(&id.name).await {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => {
                let _ = self.gone.send(GraphEvent::Gone(id.clone()));
                return Ok(Next::Forget);
            }
            Err(e) => return Err(e.into()),
        };
        if latest.metadata.uid.as_deref() != Some(id.uid.as_str()) {
            let _ = self.gone.send(GraphEvent::Gone(id.clone()));
            return Ok(Next::Forget);
        }
        if item.deleting_dependents {
            self.process_deleting_dependents(&item).await?;
            return Ok(Next::Forget);
        }
        let references = latest.metadata.owner_references.clone().unwrap_or_default();
        if references.is_empty() {
            return Ok(if item.unseen {
                Next::Requeue
            } else {
                Next::Forget
            });
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for r in references {
            match self.owner_state(&r, &item).await? {
                OwnerState::Dangling => dangling.push(r),
                OwnerState::Waiting => waiting.push(r),
                OwnerState::Solid => solid.push(r),
                OwnerState::Invalid => return Ok(Next::Forget),
            }
        }
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(if item.unseen {
                    Next::Requeue
                } else {
                    Next::Forget
                });
            }
            let removed: Vec<_> = dangling
                .iter()
                .chain(&waiting)
                .map(|r| json!({"$patch": "delete", "uid": r.uid}))
                .collect();
            let patch = json!({"metadata": {"ownerReferences": removed, "uid": id.uid}});
            api.patch(&id.name, &PatchParams::default(), &Patch::Strategic(patch))
                .await?;
        } else if !waiting.is_empty() && !item.dependents.is_empty() {
            // Deleting this one in the foreground too; a dependent already
            // waiting on it could deadlock with it, so it stops blocking.
            let graph_dependents: Vec<Node> = item
                .dependents
                .iter()
                .filter_map(|d| self.node(d))
                .collect();
            if graph_dependents.iter().any(|d| d.deleting_dependents) {
                let unblocked: Vec<_> = latest
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| blocks(r))
                    .map(|r| json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid, "blockOwnerDeletion": false}))
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": unblocked, "uid": id.uid}});
                api.patch(&id.name, &PatchParams::default(), &Patch::Strategic(patch))
                    .await?;
            }
            self.delete(&api, id, PropagationPolicy::Foreground).await?;
        } else {
            let policy = if has_finalizer(&latest, ORPHAN) {
                PropagationPolicy::Orphan
            } else if has_finalizer(&latest, FOREGROUND) {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            self.delete(&api, id, policy).await?;
        }
        Ok(if item.unseen {
            Next::Requeue
        } else {
            Next::Forget
        })
    }

    async fn delete(
        &self,
        api: &Api<DynamicObject>,
        id: &Identity,
        policy: PropagationPolicy,
    ) -> Result<(), Error> {
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&id.name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an owner is there (solid), gone or replaced (dangling), or
    /// waiting for its dependents to go (upstream's isDangling and
    /// classifyReferences).
    async fn owner_state(&self, r: &OwnerReference, item: &Node) -> Result<OwnerState, Error> {
        let mut coordinates = Identity {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: None,
            name: r.name.clone(),
            uid: r.uid.clone(),
        };
        {
            let graph = self.lock();
            if graph.absent.contains(&coordinates) {
                return Ok(OwnerState::Dangling);
            }
            coordinates.namespace = item.identity.namespace.clone();
            if graph.absent.contains(&coordinates) {
                return Ok(OwnerState::Dangling);
            }
        }
        let (api, namespaced) =
            self.api(&r.api_version, &r.kind, item.identity.namespace.as_deref())?;
        if namespaced && item.identity.namespace.is_none() {
            tracing::info!(
                "garbage collector: cluster-scoped {} {} refers to a namespaced owner {} {}",
                item.identity.kind,
                item.identity.name,
                r.kind,
                r.name
            );
            return Ok(OwnerState::Invalid);
        }
        if !namespaced {
            coordinates.namespace = None;
        }
        let owner = match api.get_metadata(&r.name).await {
            Ok(o) => o,
            Err(e) if is_not_found(&e) => {
                self.lock().absent.insert(coordinates);
                return Ok(OwnerState::Dangling);
            }
            Err(e) => return Err(e.into()),
        };
        if owner.metadata.uid.as_deref() != Some(r.uid.as_str()) {
            self.lock().absent.insert(coordinates);
            return Ok(OwnerState::Dangling);
        }
        if owner.metadata.deletion_timestamp.is_some() && has_finalizer(&owner, FOREGROUND) {
            return Ok(OwnerState::Waiting);
        }
        Ok(OwnerState::Solid)
    }

    /// An owner deleted in the foreground: once no dependent blocks it, its
    /// finalizer goes; until then its blocking dependents are deleted.
    async fn process_deleting_dependents(&self, item: &Node) -> Result<(), Error> {
        let blocking: Vec<Node> = item
            .dependents
            .iter()
            .filter_map(|d| self.node(d))
            .filter(|d| {
                d.owners
                    .iter()
                    .any(|r| r.uid == item.identity.uid && blocks(r))
            })
            .collect();
        if blocking.is_empty() {
            return self.remove_finalizer(&item.identity, FOREGROUND).await;
        }
        for dependent in blocking.iter().filter(|d| !d.deleting_dependents) {
            self.attempt_to_delete.add(dependent.identity.uid.clone());
        }
        Ok(())
    }

    /// Removes the owner reference to `uid` from each of its dependents,
    /// then the owner's `orphan` finalizer.
    async fn orphan_dependents(&self, uid: &str) -> Result<(), Error> {
        let Some(owner) = self.node(uid) else {
            return Ok(());
        };
        let dependents: Vec<Node> = owner
            .dependents
            .iter()
            .filter_map(|d| self.node(d))
            .collect();
        let results = join_all(dependents.iter().map(|d| async move {
            let id = &d.identity;
            let (api, _) = self.api(&id.api_version, &id.kind, id.namespace.as_deref())?;
            let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": id.uid}});
            match api.patch(&id.name, &PatchParams::default(), &Patch::Strategic(patch)).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        }))
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(Error::Failed(format!(
                "failed to orphan dependents of owner {} {}: {e}",
                owner.identity.kind, owner.identity.name
            )));
        }
        self.remove_finalizer(&owner.identity, ORPHAN).await
    }

    /// Takes `finalizer` off the object, retrying on conflicting writes.
    async fn remove_finalizer(&self, id: &Identity, finalizer: &str) -> Result<(), Error> {
        let (api, _) = self.api(&id.api_version, &id.kind, id.namespace.as_deref())?;
        loop {
            let latest = match api.get_metadata(&id.name).await {
                Ok(m) if m.metadata.uid.as_deref() == Some(id.uid.as_str()) => m,
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if !has_finalizer(&latest, finalizer) {
                return Ok(());
            }
            let kept: Vec<&String> = latest
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != finalizer)
                .collect();
            let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": latest.metadata.resource_version}});
            match api
                .patch(&id.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_reason(&e, "Conflict") => continue,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

enum OwnerState {
    Solid,
    Dangling,
    Waiting,
    /// A cluster-scoped object cannot have a namespaced owner.
    Invalid,
}
