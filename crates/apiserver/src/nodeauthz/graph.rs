//! Upstream's node graph: which objects each node needs, as edges from an
//! object to what uses it (a Secret → the pod that mounts it → the node the
//! pod is bound to; a PersistentVolume → its claim → the pod). Built from
//! the pods and PersistentVolumes caches (`cache::follow`); a request of a
//! node for an object is allowed when a path leads from the object to that
//! node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use std::time::Duration;

use kubox_store::Revision;
use serde_json::Value;
use tokio::sync::watch;

use crate::cache::{EventType, Follower, Stored};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Node,
    Pod,
    Secret,
    ConfigMap,
    ServiceAccount,
    PersistentVolumeClaim,
    PersistentVolume,
}

/// An object of the graph: kind, namespace ("" for cluster objects), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vertex {
    kind: Kind,
    namespace: String,
    name: String,
}

impl Vertex {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

type Edge = (Vertex, Vertex);

#[derive(Default)]
struct Edges {
    /// From each object, the objects that use it.
    users: HashMap<Vertex, HashSet<Vertex>>,
    /// The edges each pod or PersistentVolume brought, removed with it.
    brought: HashMap<Vertex, Vec<Edge>>,
}

impl Edges {
    fn remove(&mut self, owner: &Vertex) {
        for (from, to) in self.brought.remove(owner).unwrap_or_default() {
            if let Some(users) = self.users.get_mut(&from) {
                users.remove(&to);
                if users.is_empty() {
                    self.users.remove(&from);
                }
            }
        }
    }

    fn set(&mut self, owner: Vertex, edges: Vec<Edge>) {
        self.remove(&owner);
        if edges.is_empty() {
            return;
        }
        for (from, to) in &edges {
            self.users
                .entry(from.clone())
                .or_default()
                .insert(to.clone());
        }
        self.brought.insert(owner, edges);
    }

    fn reaches(&self, start: &Vertex, node: &Vertex) -> bool {
        let mut seen = HashSet::new();
        let mut todo = vec![start];
        while let Some(v) = todo.pop() {
            if v == node {
                return true;
            }
            if v.kind == Kind::Node || !seen.insert(v) {
                continue;
            }
            todo.extend(self.users.get(v).into_iter().flatten());
        }
        false
    }
}

pub struct Graph {
    edges: RwLock<Edges>,
    /// The revision of each followed cache the graph has taken in.
    seen: watch::Sender<HashMap<&'static str, Revision>>,
}

impl Default for Graph {
    fn default() -> Self {
        Self {
            edges: RwLock::default(),
            seen: watch::channel(HashMap::new()).0,
        }
    }
}

impl Graph {
    /// Waits, at most `limit`, until the graph has taken in the cache
    /// `plural` up to `revision`; says whether it has.
    pub async fn wait_for(&self, plural: &str, revision: Revision, limit: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        let reached = rx.wait_for(|seen| seen.get(plural).is_some_and(|r| *r >= revision));
        tokio::time::timeout(limit, reached)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The vertex of a stored object.
fn identity(kind: Kind, object: &Value) -> Vertex {
    let meta = &object["metadata"];
    Vertex::new(kind, text(&meta["namespace"]), text(&meta["name"]))
}

/// What a pod uses: its ServiceAccount, and every Secret, ConfigMap and
/// claim, as upstream's pod reference visitors find them.
pub fn pod_references(pod: &Value) -> Vec<(Kind, String)> {
    let pod_name = text(&pod["metadata"]["name"]);
    let spec = &pod["spec"];
    let mut used: Vec<(Kind, String)> = Vec::new();
    let mut add = |kind, name: &str| {
        if !name.is_empty() && !used.iter().any(|(k, n)| *k == kind && n == name) {
            used.push((kind, name.to_owned()));
        }
    };
    add(Kind::ServiceAccount, text(&spec["serviceAccountName"]));
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(Kind::Secret, text(&s["name"]));
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten());
    for c in containers {
        for from in c["envFrom"].as_array().into_iter().flatten() {
            add(Kind::Secret, text(&from["secretRef"]["name"]));
            add(Kind::ConfigMap, text(&from["configMapRef"]["name"]));
        }
        for env in c["env"].as_array().into_iter().flatten() {
            let from = &env["valueFrom"];
            add(Kind::Secret, text(&from["secretKeyRef"]["name"]));
            add(Kind::ConfigMap, text(&from["configMapKeyRef"]["name"]));
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(Kind::Secret, text(&v["secret"]["secretName"]));
        add(Kind::Secret, text(&v["azureFile"]["secretName"]));
        add(
            Kind::Secret,
            text(&v["csi"]["nodePublishSecretRef"]["name"]),
        );
        for source in SECRET_REF_SOURCES {
            add(Kind::Secret, text(&v[source]["secretRef"]["name"]));
        }
        add(Kind::ConfigMap, text(&v["configMap"]["name"]));
        for p in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(Kind::Secret, text(&p["secret"]["name"]));
            add(Kind::ConfigMap, text(&p["configMap"]["name"]));
        }
        add(
            Kind::PersistentVolumeClaim,
            text(&v["persistentVolumeClaim"]["claimName"]),
        );
        if v["ephemeral"].is_object() {
            // The claim the ephemeral volume controller makes for it.
            add(
                Kind::PersistentVolumeClaim,
                &format!("{pod_name}-{}", text(&v["name"])),
            );
        }
    }
    used
}

/// Volume sources that name their Secret in `secretRef`.
const SECRET_REF_SOURCES: [&str; 7] = [
    "cephfs",
    "cinder",
    "flexVolume",
    "rbd",
    "scaleIO",
    "iscsi",
    "storageos",
];

/// The edges a pod bound to a node brings: itself to the node, and what it
/// uses to itself.
fn pod_edges(pod: &Value) -> Vec<Edge> {
    let node = text(&pod["spec"]["nodeName"]);
    if node.is_empty() {
        return Vec::new();
    }
    let this = identity(Kind::Pod, pod);
    let mut edges = vec![(this.clone(), Vertex::new(Kind::Node, "", node))];
    edges.extend(
        pod_references(pod)
            .into_iter()
            .map(|(kind, name)| (Vertex::new(kind, &this.namespace, &name), this.clone())),
    );
    edges
}

/// The edges a PersistentVolume brings: itself to the claim it is bound
/// to, and the Secrets a node reads to mount it to the volume.
fn volume_edges(pv: &Value) -> Vec<Edge> {
    let this = identity(Kind::PersistentVolume, pv);
    let spec = &pv["spec"];
    let claim = &spec["claimRef"];
    if text(&claim["name"]).is_empty() {
        return Vec::new();
    }
    let claim_ns = text(&claim["namespace"]);
    let mut edges = vec![(
        this.clone(),
        Vertex::new(Kind::PersistentVolumeClaim, claim_ns, text(&claim["name"])),
    )];
    let mut secret = |reference: &Value, default_ns: &str| {
        let name = text(&reference["name"]);
        if name.is_empty() {
            return;
        }
        let ns = Some(text(&reference["namespace"]))
            .filter(|n| !n.is_empty())
            .unwrap_or(default_ns);
        edges.push((Vertex::new(Kind::Secret, ns, name), this.clone()));
    };
    for source in SECRET_REF_SOURCES {
        secret(&spec[source]["secretRef"], claim_ns);
    }
    for r in [
        "nodePublishSecretRef",
        "nodeStageSecretRef",
        "nodeExpandSecretRef",
    ] {
        secret(&spec["csi"][r], claim_ns);
    }
    let azure = &spec["azureFile"];
    let azure_ns = Some(text(&azure["secretNamespace"]))
        .filter(|n| !n.is_empty())
        .unwrap_or(claim_ns);
    secret(&serde_json::json!({"name": azure["secretName"]}), azure_ns);
    edges
}

/// The kind of object a followed cache holds.
fn owner_kind(plural: &str) -> Option<Kind> {
    match plural {
        "pods" => Some(Kind::Pod),
        "persistentvolumes" => Some(Kind::PersistentVolume),
        _ => None,
    }
}

fn edges_of(kind: Kind, object: &Value) -> Vec<Edge> {
    match kind {
        Kind::Pod => pod_edges(object),
        Kind::PersistentVolume => volume_edges(object),
        _ => Vec::new(),
    }
}

impl Graph {
    /// Whether a pod's edges stand as they are, known without decoding it
    /// (from the fields selectors read): as upstream's graph populator, a
    /// pod without a node brings none, and one whose node is the one
    /// already recorded brings the same, since what a pod references is
    /// immutable once created.
    fn pod_unchanged(&self, pod: &Stored) -> bool {
        let fields = pod.selectable();
        let node = text(&fields["spec"]["nodeName"]);
        let owner = identity(Kind::Pod, fields);
        let edges = self.edges.read().unwrap_or_else(|e| e.into_inner());
        match edges.brought.get(&owner) {
            None => node.is_empty(),
            Some(brought) => brought
                .iter()
                .any(|(_, to)| to.kind == Kind::Node && to.name == node),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Edges> {
        self.edges.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `object` is used, through pods bound to it, by node `node`.
    pub fn reaches(&self, object: &Vertex, node: &str) -> bool {
        self.edges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reaches(object, &Vertex::new(Kind::Node, "", node))
    }
}

impl Follower for Graph {
    fn replace(&self, plural: &'static str, objects: Vec<Arc<Stored>>, _revision: Revision) {
        let Some(kind) = owner_kind(plural) else {
            return;
        };
        // Decoded before the lock is taken: authorizations wait on it.
        let set: Vec<_> = objects
            .iter()
            .map(|s| {
                let object = s.object();
                (identity(kind, &object), edges_of(kind, &object))
            })
            .collect();
        let mut edges = self.write();
        let gone: Vec<Vertex> = edges
            .brought
            .keys()
            .filter(|v| v.kind == kind)
            .cloned()
            .collect();
        for v in gone {
            edges.remove(&v);
        }
        for (owner, brought) in set {
            edges.set(owner, brought);
        }
    }

    fn apply(&self, plural: &'static str, event: EventType, object: &Stored) {
        let Some(kind) = owner_kind(plural) else {
            return;
        };
        if kind == Kind::Pod && event != EventType::Deleted && self.pod_unchanged(object) {
            return;
        }
        let object = object.object();
        let owner = identity(kind, &object);
        let mut edges = self.write();
        match event {
            EventType::Deleted => edges.remove(&owner),
            _ => edges.set(owner, edges_of(kind, &object)),
        }
    }

    fn progress(&self, plural: &'static str, revision: Revision) {
        self.seen.send_modify(|seen| {
            let r = seen.entry(plural).or_default();
            *r = (*r).max(revision);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(plural: &str, object: Value) -> Stored {
        let meta = &object["metadata"];
        let key = format!(
            "/registry/{plural}/{}/{}",
            text(&meta["namespace"]),
            text(&meta["name"])
        );
        Stored::new(key, object, 1)
    }

    fn pod(name: &str, node: &str, secret: &str) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "default",
                "containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "a"}}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": secret}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
                ],
            },
        })
    }

    #[test]
    fn a_node_reaches_what_its_pods_use_and_nothing_else() {
        let g = Graph::default();
        g.replace(
            "pods",
            vec![Arc::new(stored("pods", pod("web", "a", "tls")))],
            1,
        );
        let secret = |name| Vertex::new(Kind::Secret, "default", name);
        assert!(g.reaches(&secret("tls"), "a"));
        assert!(!g.reaches(&secret("tls"), "b"));
        assert!(!g.reaches(&secret("other"), "a"));
        assert!(!g.reaches(&Vertex::new(Kind::Secret, "elsewhere", "tls"), "a"));
        assert!(g.reaches(&Vertex::new(Kind::ConfigMap, "default", "conf"), "a"));
        assert!(g.reaches(
            &Vertex::new(Kind::ConfigMap, "default", "kube-root-ca.crt"),
            "a"
        ));
        assert!(g.reaches(
            &Vertex::new(Kind::ServiceAccount, "default", "default"),
            "a"
        ));
        assert!(g.reaches(&Vertex::new(Kind::Pod, "default", "web"), "a"));

        // A volume bound to the pod's claim, with a Secret to mount it.
        let pv = json!({
            "metadata": {"name": "pv1"},
            "spec": {
                "claimRef": {"namespace": "default", "name": "data"},
                "csi": {"driver": "d", "volumeHandle": "h", "nodePublishSecretRef": {"name": "creds"}},
            },
        });
        g.apply(
            "persistentvolumes",
            EventType::Added,
            &stored("persistentvolumes", pv.clone()),
        );
        assert!(g.reaches(&Vertex::new(Kind::PersistentVolume, "", "pv1"), "a"));
        assert!(g.reaches(&secret("creds"), "a"));
        g.apply(
            "persistentvolumes",
            EventType::Deleted,
            &stored("persistentvolumes", pv),
        );
        assert!(!g.reaches(&secret("creds"), "a"));

        // The pod moves on (a new pod of the name on b), then goes.
        g.apply(
            "pods",
            EventType::Modified,
            &stored("pods", pod("web", "b", "tls2")),
        );
        assert!(!g.reaches(&secret("tls"), "a"));
        assert!(!g.reaches(&secret("tls2"), "a"));
        assert!(g.reaches(&secret("tls2"), "b"));
        g.apply(
            "pods",
            EventType::Deleted,
            &stored("pods", pod("web", "b", "tls2")),
        );
        assert!(!g.reaches(&secret("tls2"), "b"));
    }

    #[test]
    fn an_unbound_pod_gives_no_node_anything() {
        let g = Graph::default();
        g.apply(
            "pods",
            EventType::Added,
            &stored("pods", pod("web", "", "tls")),
        );
        assert!(!g.reaches(&Vertex::new(Kind::Secret, "default", "tls"), ""));
        // A re-list drops what is no longer there.
        g.apply(
            "pods",
            EventType::Modified,
            &stored("pods", pod("web", "a", "tls")),
        );
        assert!(g.reaches(&Vertex::new(Kind::Secret, "default", "tls"), "a"));
        // Its status changes: what it uses stays.
        g.apply(
            "pods",
            EventType::Modified,
            &stored("pods", pod("web", "a", "tls")),
        );
        assert!(g.reaches(&Vertex::new(Kind::Secret, "default", "tls"), "a"));
        g.replace("pods", Vec::new(), 2);
        assert!(!g.reaches(&Vertex::new(Kind::Secret, "default", "tls"), "a"));
    }
}
