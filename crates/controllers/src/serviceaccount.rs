//! The ServiceAccount controller: every namespace that is not going away
//! has a ServiceAccount named `default`, recreated if deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::{Context, runner};

const DEFAULT: &str = "default";

struct State {
    client: kube::Client,
    accounts: Store<ServiceAccount>,
}

pub async fn run(ctx: Arc<Context>) {
    let namespaces = ctx.informers.get::<Namespace>();
    let accounts = ctx.informers.get::<ServiceAccount>();
    namespaces.synced().await;
    let controller = Controller::for_shared_stream(namespaces.stream(), namespaces.store())
        .watches_shared_stream(accounts.stream(), |sa: Arc<ServiceAccount>| {
            (sa.name_any() == DEFAULT)
                .then(|| sa.namespace().map(|ns| ObjectRef::new(&ns)))
                .flatten()
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        accounts: accounts.store(),
    });
    runner::run("serviceaccount", controller, reconcile, state).await;
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, kube::Error> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    let name = ns.name_any();
    if terminating
        || state
            .accounts
            .get(&ObjectRef::new(DEFAULT).within(&name))
            .is_some()
    {
        return Ok(Action::await_change());
    }
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(state.client.clone(), &name);
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(Action::await_change()),
        // Already there (the cache was behind), or the namespace began terminating.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}
