//! The RBAC objects in memory: Roles, ClusterRoles, RoleBindings and
//! ClusterRoleBindings decoded once, kept current by watches on the API
//! server's own watch caches (`cache::follow`, upstream's informers), so authorizing a
//! request reads no storage.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject};
use kubox_store::Revision;
use serde_json::Value;
use tokio::sync::watch;

use crate::cache::{Cache, EventType, Follower, Stored};

/// A binding as the authorizer uses it.
#[derive(Clone, Debug)]
pub struct Binding {
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Roles,
    ClusterRoles,
    RoleBindings,
    ClusterRoleBindings,
}

const KINDS: [Kind; 4] = [
    Kind::Roles,
    Kind::ClusterRoles,
    Kind::RoleBindings,
    Kind::ClusterRoleBindings,
];

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Roles => "roles",
            Kind::ClusterRoles => "clusterroles",
            Kind::RoleBindings => "rolebindings",
            Kind::ClusterRoleBindings => "clusterrolebindings",
        }
    }

    fn of(plural: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.plural() == plural)
    }
}

/// An object's (namespace, name): the namespace is "" for cluster objects.
type Key = (String, String);

enum Entry {
    Rules(Arc<Vec<PolicyRule>>),
    Binding(Arc<Binding>),
}

#[derive(Default)]
struct Index {
    objects: HashMap<Kind, HashMap<Key, Entry>>,
}

pub struct RbacView {
    index: RwLock<Index>,
    /// Per kind, the newest revision applied.
    seen: HashMap<Kind, watch::Sender<Revision>>,
}

fn key(object: &Value) -> Key {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

fn entry(kind: Kind, object: &Value) -> Option<Entry> {
    match kind {
        Kind::Roles | Kind::ClusterRoles => {
            let rules: Vec<PolicyRule> =
                serde_json::from_value(object["rules"].clone()).unwrap_or_default();
            Some(Entry::Rules(Arc::new(rules)))
        }
        Kind::RoleBindings => {
            let b: RoleBinding = serde_json::from_value(object.clone()).ok()?;
            Some(Entry::Binding(Arc::new(Binding {
                role_ref: b.role_ref,
                subjects: b.subjects.unwrap_or_default(),
            })))
        }
        Kind::ClusterRoleBindings => {
            let b: ClusterRoleBinding = serde_json::from_value(object.clone()).ok()?;
            Some(Entry::Binding(Arc::new(Binding {
                role_ref: b.role_ref,
                subjects: b.subjects.unwrap_or_default(),
            })))
        }
    }
}

impl RbacView {
    /// Starts following the four caches (`cache_of` finds one by plural).
    pub fn start(cache_of: impl Fn(&str) -> Option<Arc<Cache>>) -> Arc<Self> {
        let view = Arc::new(Self {
            index: RwLock::default(),
            seen: KINDS.iter().map(|k| (*k, watch::channel(-1).0)).collect(),
        });
        for kind in KINDS {
            if let Some(cache) = cache_of(kind.plural()) {
                crate::cache::follow(&view, cache, kind.plural());
            }
        }
        view
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the view of `plural` has applied `revision`.
    pub async fn wait_for(&self, plural: &str, revision: Revision) -> bool {
        let Some(kind) = Kind::of(plural) else {
            return false;
        };
        let mut rx = self.seen[&kind].subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn rules(&self, kind: Kind, ns: &str, name: &str) -> Option<Arc<Vec<PolicyRule>>> {
        match self
            .read()
            .objects
            .get(&kind)?
            .get(&(ns.to_owned(), name.to_owned()))?
        {
            Entry::Rules(r) => Some(r.clone()),
            Entry::Binding(_) => None,
        }
    }

    pub fn cluster_role(&self, name: &str) -> Option<Arc<Vec<PolicyRule>>> {
        self.rules(Kind::ClusterRoles, "", name)
    }

    pub fn role(&self, ns: &str, name: &str) -> Option<Arc<Vec<PolicyRule>>> {
        self.rules(Kind::Roles, ns, name)
    }

    fn bindings(&self, kind: Kind, ns: Option<&str>) -> Vec<(String, Arc<Binding>)> {
        let index = self.read();
        let Some(objects) = index.objects.get(&kind) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| n == ns))
            .filter_map(|((n, _), e)| match e {
                Entry::Binding(b) => Some((n.clone(), b.clone())),
                Entry::Rules(_) => None,
            })
            .collect()
    }

    pub fn cluster_role_bindings(&self) -> Vec<Arc<Binding>> {
        self.bindings(Kind::ClusterRoleBindings, None)
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    pub fn role_bindings(&self, ns: &str) -> Vec<Arc<Binding>> {
        self.bindings(Kind::RoleBindings, Some(ns))
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    fn apply(&self, kind: Kind, event: EventType, object: &Value, revision: Revision) {
        let mut index = self.write();
        let objects = index.objects.entry(kind).or_default();
        let key = key(object);
        match (event, entry(kind, object)) {
            (EventType::Deleted, _) | (_, None) => {
                objects.remove(&key);
            }
            (_, Some(e)) => {
                objects.insert(key, e);
            }
        }
        drop(index);
        self.seen[&kind].send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }

    fn replace(&self, kind: Kind, objects: HashMap<Key, Entry>, revision: Revision) {
        self.write().objects.insert(kind, objects);
        self.seen[&kind].send_replace(revision);
    }
}

impl Follower for RbacView {
    fn replace(&self, plural: &'static str, objects: Vec<Arc<Stored>>, revision: Revision) {
        let Some(kind) = Kind::of(plural) else {
            return;
        };
        let entries = objects
            .iter()
            .filter_map(|s| {
                let object = s.object();
                Some((key(&object), entry(kind, &object)?))
            })
            .collect();
        RbacView::replace(self, kind, entries, revision);
    }

    fn apply(&self, plural: &'static str, event: EventType, object: &Stored) {
        if let Some(kind) = Kind::of(plural) {
            RbacView::apply(self, kind, event, &object.object(), object.revision);
        }
    }
}
