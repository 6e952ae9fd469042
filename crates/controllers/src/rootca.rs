//! The root CA publisher (upstream's root-ca-cert-publisher): every
//! namespace has the ConfigMap `kube-root-ca.crt` holding the cluster CA
//! under `ca.crt`, so pods can verify the API server; edited or deleted
//! copies are put back.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::{Context, Error, is_not_found, namespace_terminating, runner};

pub const NAME: &str = "kube-root-ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct State {
    client: kube::Client,
    config_maps: Store<ConfigMap>,
    root_ca: String,
}

pub async fn run(ctx: Arc<Context>) {
    let namespaces = ctx.informers.get::<Namespace>();
    let config_maps = ctx.informers.get::<ConfigMap>();
    namespaces.synced().await;
    config_maps.synced().await;
    let controller = Controller::for_shared_stream(namespaces.stream(), namespaces.store())
        .watches_shared_stream(config_maps.stream(), |cm: Arc<ConfigMap>| {
            (cm.name_any() == NAME)
                .then(|| cm.namespace().map(|ns| ObjectRef::new(&ns)))
                .flatten()
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        config_maps: config_maps.store(),
        root_ca: ctx.config.root_ca.clone(),
    });
    runner::run("root-ca-cert-publisher", controller, reconcile, state).await;
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, Error> {
    let name = ns.name_any();
    let data = BTreeMap::from([("ca.crt".to_string(), state.root_ca.clone())]);
    let api: Api<ConfigMap> = Api::namespaced(state.client.clone(), &name);
    let Some(existing) = state.config_maps.get(&ObjectRef::new(NAME).within(&name)) else {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                annotations: Some(BTreeMap::from([(
                    DESCRIPTION_ANNOTATION.into(),
                    DESCRIPTION.into(),
                )])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        return match api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(Action::await_change()),
            // The namespace went, or is going.
            Err(e) if is_not_found(&e) || namespace_terminating(&e) => Ok(Action::await_change()),
            Err(e) => Err(e.into()),
        };
    };
    let described = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .is_some_and(|d| !d.is_empty());
    if existing.data.as_ref() == Some(&data) && described {
        return Ok(Action::await_change());
    }
    let mut cm = (*existing).clone();
    cm.data = Some(data);
    cm.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
    api.replace(NAME, &PostParams::default(), &cm).await?;
    Ok(Action::await_change())
}
