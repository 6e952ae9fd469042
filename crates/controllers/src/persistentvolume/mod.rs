//! The PersistentVolume controller (upstream's persistent-volume-binder):
//! binds claims to volumes, keeps both phases, and reclaims volumes whose
//! claim is gone. Claims and volumes are synced by two controllers over
//! the shared informers; each object's writes go through the API's
//! optimistic concurrency, so a sync made on a stale cache fails with a
//! conflict and is retried rather than binding twice.

mod bind;
mod claims;
mod matching;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use kubox_client::events::Recorder;
use kubox_scheduler::{class_of, volume_class};

use crate::{Change, Context, runner};

pub use claims::STORAGE_PROVISIONER;

/// The name its events are recorded under.
pub const COMPONENT: &str = "persistentvolume-controller";
/// Set on a volume by the provisioner that made it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// How often a claim still waiting is tried again (upstream's
/// `--pvclaimbinder-sync-period`).
const RESYNC: Duration = Duration::from_secs(15);

pub(crate) struct Shared {
    client: kube::Client,
    recorder: Recorder,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    /// For the pods a waiting claim's event names.
    pods: Store<Pod>,
}

pub async fn run(ctx: Arc<Context>) {
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let volumes = ctx.informers.get::<PersistentVolume>();
    let classes = ctx.informers.get::<StorageClass>();
    let pods = ctx.informers.get::<Pod>();
    claims.synced().await;
    volumes.synced().await;
    classes.synced().await;
    pods.synced().await;
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: ctx.recorder(COMPONENT),
        claims: claims.store(),
        volumes: volumes.store(),
        classes: classes.store(),
        pods: pods.store(),
    });
    let waiting = {
        let claims = claims.store();
        volumes
            .changes()
            .flat_map(move |c| futures::stream::iter(claims_to_sync(&claims, c.object())))
    };
    let claiming = runner::run(
        COMPONENT,
        Controller::for_shared_stream(claims.stream(), claims.store()).reconcile_on(waiting),
        claims::sync,
        shared.clone(),
    );
    let released = {
        let volumes = volumes.store();
        claims
            .changes()
            .flat_map(move |c| futures::stream::iter(volumes_to_sync(&volumes, &c)))
    };
    let keeping = runner::run(
        COMPONENT,
        Controller::for_shared_stream(volumes.stream(), volumes.store()).reconcile_on(released),
        volumes::sync,
        shared,
    );
    futures::future::join(claiming, keeping).await;
}

/// The claims a change of `pv` may let bind: the one it is reserved for,
/// or, when it is free, every unbound claim of its class.
fn claims_to_sync(
    claims: &Store<PersistentVolumeClaim>,
    pv: &PersistentVolume,
) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        Some(r) => vec![
            ObjectRef::new(r.name.as_deref().unwrap_or_default())
                .within(r.namespace.as_deref().unwrap_or_default()),
        ],
        None => claims
            .state()
            .iter()
            .filter(|c| {
                c.spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .is_none_or(str::is_empty)
                    && class_of(c) == volume_class(pv)
            })
            .map(|c| ObjectRef::from_obj(&**c))
            .collect(),
    }
}

/// The volumes a change of a claim concerns: the one it names, and on its
/// deletion every volume reserved for it.
fn volumes_to_sync(
    volumes: &Store<PersistentVolume>,
    change: &Change<PersistentVolumeClaim>,
) -> Vec<ObjectRef<PersistentVolume>> {
    let claim = change.object();
    let mut refs: Vec<_> = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
        .map(ObjectRef::new)
        .into_iter()
        .collect();
    if let Change::Deleted(_) = change {
        refs.extend(
            volumes
                .state()
                .iter()
                .filter(|pv| {
                    pv.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| r.uid == claim.meta().uid)
                })
                .map(|pv| ObjectRef::new(&pv.name_any())),
        );
    }
    refs
}
