//! The token cleaner (upstream's tokencleaner controller): a bootstrap
//! token Secret in kube-system whose `expiration` has passed is deleted;
//! one still valid is looked at again when it expires.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::{Context, Error, is_not_found, runner};

pub const TYPE: &str = "bootstrap.kubernetes.io/token";
const NAMESPACE: &str = "kube-system";

struct State {
    client: kube::Client,
}

pub async fn run(ctx: Arc<Context>) {
    let secrets = ctx.informers.get::<Secret>();
    secrets.synced().await;
    let controller = Controller::for_shared_stream(secrets.stream(), secrets.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
    });
    runner::run("tokencleaner", controller, reconcile, state).await;
}

/// The Secret's expiration, when it has a readable one.
fn expiration(secret: &Secret) -> Option<Timestamp> {
    let raw = secret.data.as_ref()?.get("expiration")?;
    std::str::from_utf8(&raw.0).ok()?.parse().ok()
}

async fn reconcile(secret: Arc<Secret>, state: Arc<State>) -> Result<Action, Error> {
    if secret.type_.as_deref() != Some(TYPE)
        || secret.namespace().as_deref() != Some(NAMESPACE)
        || secret.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let Some(at) = expiration(&secret) else {
        return Ok(Action::await_change());
    };
    let left = at.duration_since(Timestamp::now());
    if left.is_positive() {
        let wait = Duration::try_from(left).unwrap_or_default();
        return Ok(Action::requeue(wait + Duration::from_secs(1)));
    }
    let api: Api<Secret> = Api::namespaced(state.client.clone(), NAMESPACE);
    // Only the version seen expired: a renewed token is kept.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: secret.resource_version(),
        }),
        ..DeleteParams::default()
    };
    tracing::info!(secret = %secret.name_any(), "deleting an expired bootstrap token");
    match api.delete(&secret.name_any(), &params).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
