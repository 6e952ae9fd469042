//! The CSR approver for node client certificates (upstream's csrapproving
//! controller): a request to `kubernetes.io/kube-apiserver-client-kubelet`
//! for `CN=system:node:<name>, O=system:nodes` with client usages is
//! approved when a SubjectAccessReview lets its requester create
//! `certificatesigningrequests/nodeclient` (a bootstrap token joining a
//! node) or, for a node renewing its own certificate,
//! `certificatesigningrequests/selfnodeclient`. Others are left alone.
//!
//! A request is approved only if its key holds the node's name
//! (`nodeclaim`); one for a name another key holds is denied, so a second
//! machine cannot take over a node by claiming its name.

use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
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
/// The usages a node client certificate may ask for; client auth is required.
const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];

struct State {
    client: kube::Client,
}

pub async fn run(ctx: Arc<Context>) {
    let csrs = ctx.informers.get::<CertificateSigningRequest>();
    csrs.synced().await;
    let controller = Controller::for_shared_stream(csrs.stream(), csrs.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
    });
    runner::run("csrapproving", controller, reconcile, state).await;
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
    let condition = match crate::nodeclaim::hold(&state.client, &node, &hash, renewal).await? {
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
