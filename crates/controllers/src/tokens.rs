//! The token controller (upstream's serviceaccount-token controller): a
//! Secret of type `kubernetes.io/service-account-token` annotated with its
//! ServiceAccount's name gets a legacy token for that account, the cluster
//! CA and the namespace; a Secret whose ServiceAccount is gone (or was made
//! anew) is deleted, as its token would no longer authenticate.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use kubox_satoken::{Claims, Ref, SigningKey};

use crate::{Context, Error, is_not_found, runner};

pub const TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

struct State {
    client: kube::Client,
    key: SigningKey,
    root_ca: String,
}

pub async fn run(ctx: Arc<Context>) {
    let Some(pem) = &ctx.config.service_account_key else {
        tracing::info!("no service-account key: the token controller does not run");
        return;
    };
    let key = match SigningKey::from_pem(pem) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(error = %e, "the token controller does not run");
            return;
        }
    };
    let secrets = ctx.informers.get::<Secret>();
    secrets.synced().await;
    let controller = Controller::for_shared_stream(secrets.stream(), secrets.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
        key,
        root_ca: ctx.config.root_ca.clone(),
    });
    runner::run("serviceaccount-token", controller, reconcile, state).await;
}

async fn reconcile(secret: Arc<Secret>, state: Arc<State>) -> Result<Action, Error> {
    let annotations = secret.annotations();
    let (Some(account_name), true, None) = (
        annotations.get(NAME_ANNOTATION),
        secret.type_.as_deref() == Some(TYPE),
        secret.metadata.deletion_timestamp.as_ref(),
    ) else {
        return Ok(Action::await_change());
    };
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(state.client.clone(), &ns);
    let account = accounts.get_opt(account_name).await?;
    let account_uid = account.as_ref().and_then(|a| a.uid());
    let recorded = annotations.get(UID_ANNOTATION);
    if account_uid.is_none() || recorded.is_some_and(|r| Some(r) != account_uid.as_ref()) {
        match secrets.delete(&name, &DeleteParams::default()).await {
            Err(e) if !is_not_found(&e) => return Err(e.into()),
            _ => return Ok(Action::await_change()),
        }
    }
    let uid = account_uid.unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let filled = ["token", "ca.crt", "namespace"]
        .iter()
        .all(|k| data.contains_key(*k));
    if filled && recorded.is_some() {
        return Ok(Action::await_change());
    }
    let mut updated = (*secret).clone();
    updated
        .annotations_mut()
        .insert(UID_ANNOTATION.into(), uid.clone());
    let mut data: BTreeMap<String, ByteString> = data;
    if !data.contains_key("token") {
        let account = Ref {
            name: account_name.clone(),
            uid,
        };
        let token = state
            .key
            .sign(&Claims::legacy(&ns, account, &name))
            .map_err(|e| Error::Failed(e.to_string()))?;
        data.insert("token".into(), ByteString(token.into_bytes()));
    }
    data.insert(
        "ca.crt".into(),
        ByteString(state.root_ca.clone().into_bytes()),
    );
    data.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
    updated.data = Some(data);
    match secrets
        .replace(&name, &PostParams::default(), &updated)
        .await
    {
        // A newer version comes back through the watch.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(Action::await_change()),
    }
}
