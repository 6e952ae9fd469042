//! The ClusterRole aggregation controller (upstream's
//! clusterrole-aggregation): a ClusterRole with an `aggregationRule` gets
//! as its rules those of every ClusterRole its selectors match, in name
//! order without repeats, whenever any ClusterRole changes.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::PostParams;
use kube::core::{Selector, SelectorExt};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::{Context, Error, is_not_found, runner};

struct State {
    client: kube::Client,
    roles: Store<ClusterRole>,
}

pub async fn run(ctx: Arc<Context>) {
    let roles = ctx.informers.get::<ClusterRole>();
    roles.synced().await;
    let store = roles.store();
    // Any change may alter what an aggregated role is made of.
    let controller = Controller::for_shared_stream(roles.stream(), roles.store())
        .watches_shared_stream(roles.stream(), move |_changed: Arc<ClusterRole>| {
            store
                .state()
                .into_iter()
                .filter(|r| r.aggregation_rule.is_some())
                .map(|r| ObjectRef::new(&r.name_any()))
                .collect::<Vec<_>>()
        });
    let state = Arc::new(State {
        client: ctx.client.clone(),
        roles: roles.store(),
    });
    runner::run("clusterrole-aggregation", controller, reconcile, state).await;
}

/// The rules the selectors of `role` gather.
fn aggregate(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Vec<PolicyRule> {
    let selectors: Vec<Selector> = role
        .aggregation_rule
        .iter()
        .flat_map(|a| a.cluster_role_selectors.iter().flatten())
        .filter_map(|s| Selector::try_from(s.clone()).ok())
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.name_any() != role.name_any())
        .filter(|r| selectors.iter().any(|s| s.matches(r.labels())))
        .collect();
    sources.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in sources.iter().flat_map(|r| r.rules.iter().flatten()) {
        if !rules.contains(r) {
            rules.push(r.clone());
        }
    }
    rules
}

async fn reconcile(role: Arc<ClusterRole>, state: Arc<State>) -> Result<Action, Error> {
    if role.aggregation_rule.is_none() {
        return Ok(Action::await_change());
    }
    let rules = aggregate(&role, &state.roles.state());
    if role.rules.clone().unwrap_or_default() == rules {
        return Ok(Action::await_change());
    }
    let mut updated = (*role).clone();
    updated.rules = Some(rules);
    let api: Api<ClusterRole> = Api::all(state.client.clone());
    match api
        .replace(&role.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
