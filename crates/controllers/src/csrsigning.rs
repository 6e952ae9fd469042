//! The CertificateSigningRequest signer for `kubernetes.io/kube-apiserver-client`
//! (upstream's csrsigning controller): an approved request, not denied or
//! failed and not yet signed, gets a client certificate from the cluster CA
//! in `status.certificate`, valid for `spec.expirationSeconds` (a year by
//! default, as upstream's `--cluster-signing-duration`).

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Context, Error, is_not_found, runner};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const DEFAULT_SECONDS: i64 = 365 * 24 * 3600;
/// Upstream refuses shorter durations than ten minutes.
const MIN_SECONDS: i64 = 600;

/// The cluster CA, which signs the requests.
#[derive(Clone, Debug)]
pub struct SigningCa {
    pub cert_pem: String,
    pub key_pem: String,
}

struct State {
    client: kube::Client,
    issuer: Issuer<'static, KeyPair>,
}

pub async fn run(ctx: Arc<Context>) {
    let Some(ca) = ctx.config.signing_ca.clone() else {
        return;
    };
    let issuer = match KeyPair::from_pem(&ca.key_pem)
        .and_then(|key| Issuer::from_ca_cert_pem(&ca.cert_pem, key))
    {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "the CSR signer cannot use the cluster CA");
            return;
        }
    };
    let csrs = ctx.informers.get::<CertificateSigningRequest>();
    csrs.synced().await;
    let controller = Controller::for_stream(csrs.stream(), csrs.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
        issuer,
    });
    runner::run("csrsigning", controller, reconcile, state).await;
}

fn has(conditions: &[CertificateSigningRequestCondition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
}

fn sign(
    csr: &CertificateSigningRequest,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<String, String> {
    let pem = String::from_utf8(csr.spec.request.0.clone()).map_err(|e| e.to_string())?;
    let mut request = CertificateSigningRequestParams::from_pem(&pem).map_err(|e| e.to_string())?;
    let seconds = csr
        .spec
        .expiration_seconds
        .map_or(DEFAULT_SECONDS, i64::from)
        .max(MIN_SECONDS);
    let now = time::OffsetDateTime::now_utc();
    let params = &mut request.params;
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(seconds);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names.clear();
    let cert = request.signed_by(issuer).map_err(|e| e.to_string())?;
    Ok(cert.pem())
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let status = csr.status.clone().unwrap_or_default();
    let conditions = status.conditions.clone().unwrap_or_default();
    let signed = status.certificate.as_ref().is_some_and(|c| !c.0.is_empty());
    if csr.spec.signer_name != SIGNER
        || signed
        || !has(&conditions, "Approved")
        || has(&conditions, "Denied")
        || has(&conditions, "Failed")
    {
        return Ok(Action::await_change());
    }
    let mut updated = (*csr).clone();
    let mut new_status = status;
    match sign(&csr, &state.issuer) {
        Ok(pem) => new_status.certificate = Some(ByteString(pem.into_bytes())),
        Err(reason) => {
            let mut all = conditions;
            all.push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("SignerValidationFailure".into()),
                message: Some(format!("invalid certificate request: {reason}")),
                last_update_time: Some(crate::now()),
                last_transition_time: Some(crate::now()),
            });
            new_status.conditions = Some(all);
        }
    }
    updated.status = Some(new_status);
    let api: Api<CertificateSigningRequest> = Api::all(state.client.clone());
    match api
        .replace_status(&csr.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
