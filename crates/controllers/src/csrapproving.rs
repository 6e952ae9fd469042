//! The CSR approver for node client certificates (upstream's csrapproving
//! controller): a request to `kubernetes.io/kube-apiserver-client-kubelet`
//! for `CN=system:node:<name>, O=system:nodes` with client usages is
//! approved when a SubjectAccessReview lets its requester create
//! `certificatesigningrequests/nodeclient` (a bootstrap token joining a
//! node) or, for a node renewing its own certificate,
//! `certificatesigningrequests/selfnodeclient`. Others are left alone.
//!
//! A node name is held by one key (k3s's node-password idea): the first
//! approval records the hash of the request's public key in the Secret
//! `<node>.node-key.kubox` of kube-system; a later bootstrap request for
//! that name with another key is denied while the Node exists, so a second
//! machine cannot take over a node by claiming its name. Renewals by the
//! node itself record their new key.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use crate::{Context, Error, is_not_found, runner};

pub const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const NODE_USER_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
const KEYS_NAMESPACE: &str = "kube-system";
/// The usages a node client certificate may ask for; client auth is required.
const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];

struct State {
    client: kube::Client,
}

pub async fn run(ctx: Arc<Context>) {
    let csrs = ctx.informers.get::<CertificateSigningRequest>();
    csrs.synced().await;
    let controller = Controller::for_stream(csrs.stream(), csrs.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
    });
    runner::run("csrapproving", controller, reconcile, state).await;
}

/// The Secret recording the key that holds a node's name.
pub fn key_secret_name(node: &str) -> String {
    format!("{node}.node-key.kubox")
}

/// What a node client certificate request asks for: the node's name and
/// the hash of its public key; None when it is not one.
fn node_request(csr: &CertificateSigningRequest) -> Option<(String, String)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(&csr.spec.request.0).ok()?;
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .ok()?;
    request.verify_signature().ok()?;
    let info = &request.certification_request_info;
    let mut names = info.subject.iter_common_name();
    let cn = names.next()?.as_str().ok()?;
    let orgs: Vec<&str> = info
        .subject
        .iter_organization()
        .map(|o| o.as_str().ok())
        .collect::<Option<_>>()?;
    let node = cn.strip_prefix(NODE_USER_PREFIX)?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let recognized = names.next().is_none()
        && !node.is_empty()
        && orgs == [NODES_GROUP]
        && usages.iter().any(|u| u == "client auth")
        && usages.iter().all(|u| ALLOWED_USAGES.contains(&u.as_str()));
    let hash: String = Sha256::digest(info.subject_pki.raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    recognized.then(|| (node.to_owned(), hash))
}

fn has(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Whether the requester may create the CSR subresource `subresource`.
async fn allowed(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, Error> {
    let review = SubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            groups: csr.spec.groups.clone(),
            uid: csr.spec.uid.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        status: None,
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Records `hash` as the key of `node`, unless another key holds the name
/// of a registered Node: then why the request is refused.
async fn hold_name(
    client: &kube::Client,
    node: &str,
    hash: &str,
    renewal: bool,
) -> Result<Result<(), String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), KEYS_NAMESPACE);
    let name = key_secret_name(node);
    let current = secrets.get_opt(&name).await?;
    let recorded = current
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get("hash"))
        .map(|h| String::from_utf8_lossy(&h.0).into_owned());
    if recorded.as_deref() == Some(hash) {
        return Ok(Ok(()));
    }
    if recorded.is_some() && !renewal {
        let nodes: Api<Node> = Api::all(client.clone());
        if nodes.get_opt(node).await?.is_some() {
            return Ok(Err(format!(
                "node {node:?} is already registered by another machine (another key): \
                 pick another --node-name, or delete the node first (kubectl delete node {node})"
            )));
        }
    }
    let data = BTreeMap::from([("hash".to_owned(), ByteString(hash.as_bytes().to_vec()))]);
    let result = match current {
        Some(mut secret) => {
            secret.data = Some(data);
            secrets
                .replace(&name, &PostParams::default(), &secret)
                .await
                .map(drop)
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(KEYS_NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Secret::default()
            };
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map(drop)
        }
    };
    result?;
    Ok(Ok(()))
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if csr.spec.signer_name != KUBELET_SIGNER
        || signed
        || has(&csr, "Approved")
        || has(&csr, "Denied")
    {
        return Ok(Action::await_change());
    }
    let Some((node, hash)) = node_request(&csr) else {
        return Ok(Action::await_change());
    };
    let renewal = csr.spec.username.as_deref() == Some(&format!("{NODE_USER_PREFIX}{node}"));
    let subresource = if renewal {
        "selfnodeclient"
    } else {
        "nodeclient"
    };
    if !allowed(&state.client, &csr, subresource).await? {
        return Ok(Action::await_change());
    }
    let condition = match hold_name(&state.client, &node, &hash, renewal).await? {
        Ok(()) => (
            "Approved",
            "AutoApproved",
            "Auto approving kubelet client certificate after SubjectAccessReview.".to_owned(),
        ),
        Err(why) => ("Denied", "NodeNameInUse", why),
    };
    let mut conditions = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.push(CertificateSigningRequestCondition {
        type_: condition.0.into(),
        status: "True".into(),
        reason: Some(condition.1.into()),
        message: Some(condition.2),
        last_update_time: Some(crate::now()),
        last_transition_time: Some(crate::now()),
    });
    let api: Api<CertificateSigningRequest> = Api::all(state.client.clone());
    let patch = json!({"status": {"conditions": conditions}});
    match api
        .patch_approval(
            &csr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
