//! The namespace controller (upstream's namespace-controller): a
//! namespace being deleted has everything in it deleted, resource by
//! resource, its conditions saying what remains and why; once it is empty
//! its `kubernetes` finalizer is removed through `namespaces/{name}/finalize`
//! and the API server lets it go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::discovery::{self, Served};
use crate::{Context, Error, api_message, is_not_found, is_reason, runner};

pub const COMPONENT: &str = "namespace-controller";

/// The finalizer the namespace controller owns.
const FINALIZER: &str = "kubernetes";

/// How long content with finalizers is given before the next look.
const FINALIZER_ESTIMATE: i64 = 15;

/// Namespace events wait this long, so API servers and caches have seen
/// the deletion before the controller lists what to delete.
const GRACE: Duration = Duration::from_secs(5);

/// Upstream's condition types, with the reason and message each has when
/// all is well.
const CONDITIONS: [(&str, &str, &str); 5] = [
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

struct State {
    client: kube::Client,
}

pub async fn run(ctx: Arc<Context>) {
    let namespaces = ctx.informers.get::<Namespace>();
    namespaces.synced().await;
    let controller = Controller::for_shared_stream(namespaces.stream(), namespaces.store());
    let state = Arc::new(State {
        client: ctx.client.clone(),
    });
    runner::run(COMPONENT, controller, reconcile, state).await;
}

async fn reconcile(ns: Arc<Namespace>, state: Arc<State>) -> Result<Action, Error> {
    let Some(deleted_at) = ns.metadata.deletion_timestamp.clone() else {
        return Ok(Action::await_change());
    };
    if Timestamp::now().duration_since(deleted_at.0) < GRACE.try_into().unwrap_or_default() {
        return Ok(Action::requeue(GRACE));
    }
    let api: Api<Namespace> = Api::all(state.client.clone());
    let name = ns.name_any();
    let Some(mut ns) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if finalizers.is_empty() {
        return Ok(Action::await_change());
    }
    let estimate = delete_all_content(&state.client, &api, &mut ns, deleted_at.0).await?;
    if estimate > 0 {
        // Upstream looks again halfway through the estimate.
        return Ok(Action::requeue(Duration::from_secs(
            (estimate / 2 + 1) as u64,
        )));
    }
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let mut finalized = ns.clone();
    finalized
        .spec
        .get_or_insert_with(Default::default)
        .finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    let request = kube::core::Request::new("/api/v1/namespaces")
        .replace(
            &format!("{name}/finalize"),
            &PostParams::default(),
            serde_json::to_vec(&finalized).map_err(|e| Error::Failed(e.to_string()))?,
        )
        .map_err(|e| Error::Failed(e.to_string()))?;
    match state.client.request::<Namespace>(request).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// What deleting one resource's objects left.
#[derive(Default)]
struct Remaining {
    estimate: i64,
    count: usize,
    finalizers: BTreeMap<String, usize>,
}

/// Deletes everything in the namespace, sets its conditions, and returns
/// how many seconds until it should be looked at again (0: it is empty).
async fn delete_all_content(
    client: &kube::Client,
    api: &Api<Namespace>,
    ns: &mut Namespace,
    deleted_at: Timestamp,
) -> Result<i64, Error> {
    let name = ns.name_any();
    let mut failures: BTreeMap<&str, (String, String)> = BTreeMap::new();
    let mut errors = Vec::new();
    let resources = match discovery::served(client).await {
        Ok(r) => r,
        Err(e) => {
            failures.insert(
                "NamespaceDeletionDiscoveryFailure",
                ("DiscoveryFailed".into(), api_message(&e)),
            );
            errors.push(api_message(&e));
            Vec::new()
        }
    };
    let mut estimate = 0;
    let mut remaining_by_resource = Vec::new();
    let mut finalizers_remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut content_errors = Vec::new();
    for served in resources
        .iter()
        .filter(|s| s.namespaced && s.supports(&["delete"]))
    {
        let (r, error) = match delete_content(client, served, &name, deleted_at).await {
            Ok(r) => (r, None),
            Err((e, r)) => (r, Some(e)),
        };
        estimate = estimate.max(r.estimate);
        if r.count > 0 {
            remaining_by_resource.push(format!(
                "{}.{} has {} resource instances",
                served.resource.plural, served.resource.group, r.count
            ));
            for (f, n) in r.finalizers {
                *finalizers_remaining.entry(f).or_default() += n;
            }
        }
        content_errors.extend(error);
    }
    if !remaining_by_resource.is_empty() {
        remaining_by_resource.sort();
        failures.insert(
            "NamespaceContentRemaining",
            (
                "SomeResourcesRemain".into(),
                format!(
                    "Some resources are remaining: {}",
                    remaining_by_resource.join(", ")
                ),
            ),
        );
    }
    if !finalizers_remaining.is_empty() {
        let by_finalizer: Vec<String> = finalizers_remaining
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        failures.insert(
            "NamespaceFinalizersRemaining",
            (
                "SomeFinalizersRemain".into(),
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    by_finalizer.join(", ")
                ),
            ),
        );
    }
    if !content_errors.is_empty() {
        content_errors.sort();
        failures.insert(
            "NamespaceDeletionContentFailure",
            (
                "ContentDeletionFailed".into(),
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    content_errors.len(),
                    content_errors.join(", ")
                ),
            ),
        );
        errors.extend(content_errors);
    }
    if update_conditions(ns, &failures) {
        match api.replace_status(&name, &PostParams::default(), ns).await {
            Ok(written) => *ns = written,
            Err(e) => tracing::warn!("namespace {name}: updating conditions: {}", api_message(&e)),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Failed(errors.join(", ")));
    }
    Ok(estimate)
}

/// Brings the namespace's conditions in line with `failures` (the others
/// report success); whether they changed.
fn update_conditions(ns: &mut Namespace, failures: &BTreeMap<&str, (String, String)>) -> bool {
    let conditions = ns
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new);
    let mut changed = false;
    for (type_, ok_reason, ok_message) in CONDITIONS {
        let (status, reason, message) = match failures.get(type_) {
            Some((reason, message)) => ("True", reason.as_str(), message.as_str()),
            None => ("False", ok_reason, ok_message),
        };
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => {
                conditions.push(NamespaceCondition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    last_transition_time: Some(crate::now()),
                });
                changed = true;
            }
            Some(c) => {
                if c.status != status
                    || c.reason.as_deref() != Some(reason)
                    || c.message.as_deref() != Some(message)
                {
                    if c.status != status {
                        c.last_transition_time = Some(crate::now());
                    }
                    c.status = status.into();
                    c.reason = Some(reason.into());
                    c.message = Some(message.into());
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Deletes one resource's objects in the namespace (a collection delete,
/// or one by one where that is not served) and counts what remains; an
/// error comes with what remained.
async fn delete_content(
    client: &kube::Client,
    served: &Served,
    namespace: &str,
    deleted_at: Timestamp,
) -> Result<Remaining, (String, Remaining)> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &served.resource);
    let estimate = if served.resource.group.is_empty() && served.resource.plural == "pods" {
        pods_grace_estimate(client, namespace, deleted_at)
            .await
            .map_err(|e| (api_message(&e), Remaining::default()))?
    } else {
        0
    };
    let failed = |e: kube::Error| {
        (
            api_message(&e),
            Remaining {
                estimate,
                ..Default::default()
            },
        )
    };
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let listable = served.supports(&["list"]);
    if served.supports(&["deletecollection"]) {
        match api
            .delete_collection(&background, &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || is_reason(&e, "MethodNotAllowed") => {}
            Err(e) => return Err(failed(e)),
        }
    } else if listable {
        let items = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(failed)?;
        for item in items {
            match api.delete(&item.name_any(), &background).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) || is_reason(&e, "MethodNotAllowed") => {}
                Err(e) => return Err(failed(e)),
            }
        }
    }
    if !listable {
        return Ok(Remaining {
            estimate,
            ..Default::default()
        });
    }
    let left = api
        .list_metadata(&ListParams::default())
        .await
        .map_err(failed)?;
    if left.items.is_empty() {
        return Ok(Remaining::default());
    }
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    for item in &left.items {
        for f in item.metadata.finalizers.iter().flatten() {
            *finalizers.entry(f.clone()).or_default() += 1;
        }
    }
    let remaining = Remaining {
        estimate,
        count: left.items.len(),
        finalizers,
    };
    if estimate != 0 {
        return Ok(remaining);
    }
    if !remaining.finalizers.is_empty() {
        return Ok(Remaining {
            estimate: FINALIZER_ESTIMATE,
            ..remaining
        });
    }
    Err((
        format!(
            "unexpected items still remain in namespace: {namespace} for gvr: {}",
            gvr(served)
        ),
        remaining,
    ))
}

fn gvr(served: &Served) -> String {
    let r = &served.resource;
    format!("{}/{}, Resource={}", r.group, r.version, r.plural)
}

/// The longest grace period of the namespace's running pods, unless the
/// deletion is older than that already.
async fn pods_grace_estimate(
    client: &kube::Client,
    namespace: &str,
    deleted_at: Timestamp,
) -> Result<i64, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let estimate = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .max()
        .unwrap_or(0);
    let elapsed = Timestamp::now().duration_since(deleted_at).as_secs();
    Ok(if elapsed >= estimate { 0 } else { estimate })
}
