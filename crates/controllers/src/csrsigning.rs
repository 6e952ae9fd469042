//! The CertificateSigningRequest signer for `kubernetes.io/kube-apiserver-client`
//! and `kubernetes.io/kube-apiserver-client-kubelet` (nodes' client
//! certificates; upstream's csrsigning controller): an approved request,
//! not denied or failed and not yet signed, gets a client certificate from
//! the cluster CA in `status.certificate`, valid for `spec.expirationSeconds`
//! but no longer than `--cluster-signing-duration` (a year by default).

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
const SIGNERS: &[&str] = &[SIGNER, crate::csrapproving::KUBELET_SIGNER];
/// Upstream refuses shorter durations than ten minutes.
const MIN_SECONDS: i64 = 600;
/// Certificates start a little in the past for clocks a little behind,
/// except short-lived ones (under 8 hours), which would otherwise spend
/// much of their life before their rotation deadline (upstream's policy).
const BACKDATE: time::Duration = time::Duration::minutes(5);
const SHORT: time::Duration = time::Duration::hours(8);

/// The cluster CA, which signs the requests.
#[derive(Clone, Debug)]
pub struct SigningCa {
    pub cert_pem: String,
    pub key_pem: String,
}

struct State {
    client: kube::Client,
    issuer: Issuer<'static, KeyPair>,
    /// The longest lifetime a certificate gets.
    duration: time::Duration,
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
    let controller = Controller::for_shared_stream(csrs.stream(), csrs.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
        issuer,
        duration: time::Duration::try_from(ctx.config.cluster_signing_duration)
            .unwrap_or(time::Duration::MAX),
    });
    runner::run("csrsigning", controller, reconcile, state).await;
}

fn has(conditions: &[CertificateSigningRequestCondition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
}

fn sign(csr: &CertificateSigningRequest, state: &State) -> Result<String, String> {
    let pem = String::from_utf8(csr.spec.request.0.clone()).map_err(|e| e.to_string())?;
    let mut request = CertificateSigningRequestParams::from_pem(&pem).map_err(|e| e.to_string())?;
    let lifetime = csr.spec.expiration_seconds.map_or(state.duration, |s| {
        time::Duration::seconds(i64::from(s).max(MIN_SECONDS)).min(state.duration)
    });
    let now = time::OffsetDateTime::now_utc();
    let params = &mut request.params;
    params.not_before = if lifetime < SHORT {
        now
    } else {
        now - BACKDATE
    };
    params.not_after = now + lifetime;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names.clear();
    let cert = request
        .signed_by(&state.issuer)
        .map_err(|e| e.to_string())?;
    Ok(cert.pem())
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let status = csr.status.clone().unwrap_or_default();
    let conditions = status.conditions.clone().unwrap_or_default();
    let signed = status.certificate.as_ref().is_some_and(|c| !c.0.is_empty());
    if !SIGNERS.contains(&csr.spec.signer_name.as_str())
        || signed
        || !has(&conditions, "Approved")
        || has(&conditions, "Denied")
        || has(&conditions, "Failed")
    {
        return Ok(Action::await_change());
    }
    let mut updated = (*csr).clone();
    let mut new_status = status;
    match sign(&csr, &state) {
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
