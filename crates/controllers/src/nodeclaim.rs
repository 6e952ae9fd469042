//! Node name claims (k3s's node-password idea): a joining machine's node
//! name is held by the key of its first approved certificate request, in
//! the Secret `<node>.node-key.kubox` of kube-system holding the hash of
//! that public key. The claim is made by a create, so of two machines
//! asking for one new name at once exactly one gets it; a bootstrap
//! request for a claimed name with another key is denied. Once the node
//! registers, its claim is owned by the Node, so deleting the Node lets
//! the garbage collector drop the claim and another machine take the name.
//! Renewals by the node itself record their new key.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use crate::{Context, Error, is_reason, runner};

const NAMESPACE: &str = "kube-system";
const SUFFIX: &str = ".node-key.kubox";

/// The Secret holding the claim on a node's name.
pub fn secret_name(node: &str) -> String {
    format!("{node}{SUFFIX}")
}

fn recorded_hash(claim: &Secret) -> Option<String> {
    let hash = claim.data.as_ref()?.get("hash")?;
    Some(String::from_utf8_lossy(&hash.0).into_owned())
}

fn hash_data(hash: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([("hash".to_owned(), ByteString(hash.as_bytes().to_vec()))])
}

fn owner_ref(node: &Node) -> OwnerReference {
    OwnerReference {
        api_version: Node::api_version(&()).into_owned(),
        kind: Node::kind(&()).into_owned(),
        name: node.name_any(),
        uid: node.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

fn in_use(node: &str) -> String {
    format!(
        "node {node:?} is already registered by another machine (another key): \
         pick another --node-name, or delete the node first (kubectl delete node {node})"
    )
}

/// Claims `node` for the key hashed `hash`, or says why it is refused: the
/// name is claimed by another key (while the Node that owns the claim
/// lives, or until a claim no Node owns yet is deleted), or a Node by that
/// name was registered without a claim (the server's own, an agent given a
/// kubeconfig). A `renewal`, by the node itself, records its new key.
pub async fn hold(
    client: &kube::Client,
    node: &str,
    hash: &str,
    renewal: bool,
) -> Result<Result<(), String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client.clone());
    let name = secret_name(node);
    let Some(mut claim) = secrets.get_opt(&name).await? else {
        if !renewal && nodes.get_opt(node).await?.is_some() {
            return Ok(Err(in_use(node)));
        }
        let claim = Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(hash_data(hash)),
            ..Secret::default()
        };
        // AlreadyExists: another request claimed it meanwhile; retried,
        // this one then finds that claim.
        secrets.create(&PostParams::default(), &claim).await?;
        return Ok(Ok(()));
    };
    if recorded_hash(&claim).as_deref() == Some(hash) {
        return Ok(Ok(()));
    }
    if !renewal {
        let owner = claim
            .owner_references()
            .iter()
            .find(|r| r.kind == "Node")
            .map(|r| r.uid.clone());
        let Some(owner) = owner else {
            return Ok(Err(format!(
                "node {node:?} is claimed by another machine (another key) that has not \
                 registered it yet: pick another --node-name, or drop the claim \
                 (kubectl delete secret -n {NAMESPACE} {})",
                secret_name(node)
            )));
        };
        let current = nodes.get_opt(node).await?;
        if current.is_some_and(|n| n.uid().as_deref() == Some(owner.as_str())) {
            return Ok(Err(in_use(node)));
        }
        // The owning Node is gone, and the garbage collector not yet
        // done with its claim.
        claim.metadata.owner_references = None;
    }
    claim.data = Some(hash_data(hash));
    // Compare-and-swap on the version read: of two requests taking a stale
    // claim at once, the second conflicts and, retried, is denied.
    secrets
        .replace(&claim.name_any(), &PostParams::default(), &claim)
        .await?;
    Ok(Ok(()))
}

struct State {
    client: kube::Client,
    claims: Store<Secret>,
}

/// Gives each registered Node's claim the Node as its owner.
pub async fn run(ctx: Arc<Context>) {
    let nodes = ctx.informers.get::<Node>();
    let secrets = ctx.informers.get::<Secret>();
    nodes.synced().await;
    secrets.synced().await;
    let controller = Controller::for_stream(nodes.stream(), nodes.store()).watches_stream(
        secrets.stream(),
        |secret: Secret| {
            let name = secret.name_any();
            let node = name.strip_suffix(SUFFIX)?;
            (secret.namespace().as_deref() == Some(NAMESPACE)).then(|| ObjectRef::new(node))
        },
    );
    let state = Arc::new(State {
        client: ctx.client.clone(),
        claims: secrets.store(),
    });
    runner::run("nodeclaim", controller, reconcile, state).await;
}

async fn reconcile(node: Arc<Node>, state: Arc<State>) -> Result<Action, Error> {
    let key = ObjectRef::new(&secret_name(&node.name_any())).within(NAMESPACE);
    let Some(claim) = state.claims.get(&key) else {
        return Ok(Action::await_change());
    };
    let owner = owner_ref(&node);
    if node.metadata.deletion_timestamp.is_some()
        || claim.metadata.deletion_timestamp.is_some()
        || claim.owner_references() == std::slice::from_ref(&owner)
    {
        return Ok(Action::await_change());
    }
    let mut claim = (*claim).clone();
    claim.metadata.owner_references = Some(vec![owner]);
    let api: Api<Secret> = Api::namespaced(state.client.clone(), NAMESPACE);
    match api
        .replace(&claim.name_any(), &PostParams::default(), &claim)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Gone, or changed since it was cached: the informer brings the
        // news and this runs again.
        Err(e) if is_reason(&e, "NotFound") || is_reason(&e, "Conflict") => {
            Ok(Action::await_change())
        }
        Err(e) => Err(e.into()),
    }
}
