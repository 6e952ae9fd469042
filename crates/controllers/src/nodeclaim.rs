//! Node name claims (k3s's node-password idea): a joining machine's node
//! name is held by the key of its first approved certificate request, in
//! the Secret `<node>.node-key.kubox` of kube-system holding the hash of
//! that public key. The claim is made by a create, so of two machines
//! asking for one new name at once exactly one gets it; a bootstrap
//! request for a claimed name with another key is denied. Once the node
//! registers, its claim is owned by the Node, so deleting the Node lets
//! the garbage collector drop the claim and another machine take the name.
//! Renewals by the node itself record their new key. A claim whose
//! machine never registered its Node (it crashed mid-join) lapses after
//! [`UNREGISTERED_CLAIM_TTL`], as upstream's CSR cleaner drops approved
//! requests after an hour, so the name is not held forever: the next
//! machine asking for it takes it over.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use crate::{Context, Error, is_reason, runner};

const NAMESPACE: &str = "kube-system";
const SUFFIX: &str = ".node-key.kubox";
/// How long a claim no Node owns holds its name: upstream's CSR cleaner's
/// time for approved requests, ample for a machine to register once its
/// request is approved.
pub const UNREGISTERED_CLAIM_TTL: SignedDuration = SignedDuration::from_hours(1);

/// Whether `claim` is owned by no Node and older than
/// [`UNREGISTERED_CLAIM_TTL`] at `now`.
fn lapsed(claim: &Secret, now: Timestamp) -> bool {
    let owned = claim.owner_references().iter().any(|r| r.kind == "Node");
    let created = claim.metadata.creation_timestamp.as_ref().map(|t| t.0);
    !owned && created.is_some_and(|c| c + UNREGISTERED_CLAIM_TTL <= now)
}

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
        let current = nodes.get_opt(node).await?;
        match owner {
            // A Node registered by the claimant whose claim the controller
            // has not marked yet is the claimant's as much.
            None if current.is_some() || !lapsed(&claim, Timestamp::now()) => {
                return Ok(Err(format!(
                    "node {node:?} is claimed by another machine (another key) that has not \
                     registered it yet: pick another --node-name, wait for the claim to lapse \
                     ({} after it was made), or drop it (kubectl delete secret -n {NAMESPACE} {})",
                    UNREGISTERED_CLAIM_TTL,
                    secret_name(node)
                )));
            }
            // The claimant never registered (it crashed mid-join): the
            // claim has lapsed.
            None => {}
            Some(owner) if current.is_some_and(|n| n.uid().as_deref() == Some(owner.as_str())) => {
                return Ok(Err(in_use(node)));
            }
            // The owning Node is gone, and the garbage collector not yet
            // done with its claim.
            Some(_) => claim.metadata.owner_references = None,
        }
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
    let controller = Controller::for_shared_stream(nodes.stream(), nodes.store())
        .watches_shared_stream(secrets.stream(), |secret: Arc<Secret>| {
            let name = secret.name_any();
            let node = name.strip_suffix(SUFFIX)?;
            (secret.namespace().as_deref() == Some(NAMESPACE)).then(|| ObjectRef::new(node))
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn claim(age: SignedDuration, owned: bool) -> Secret {
        let now = Timestamp::now();
        let mut claim = Secret::default();
        claim.metadata.creation_timestamp = Some(Time(now - age));
        if owned {
            claim.metadata.owner_references = Some(vec![OwnerReference {
                kind: "Node".into(),
                name: "n".into(),
                uid: "u".into(),
                ..OwnerReference::default()
            }]);
        }
        claim
    }

    #[test]
    fn only_a_claim_no_node_owns_lapses_and_only_once_old_enough() {
        let now = Timestamp::now();
        let over = UNREGISTERED_CLAIM_TTL + SignedDuration::from_secs(1);
        let under = UNREGISTERED_CLAIM_TTL - SignedDuration::from_secs(60);
        assert!(lapsed(&claim(over, false), now));
        assert!(!lapsed(&claim(under, false), now));
        assert!(!lapsed(&claim(over, true), now));
        assert!(!lapsed(&Secret::default(), now));
    }
}
