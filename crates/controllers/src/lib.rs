//! kubox's controller manager: the control loops of kube-controller-manager,
//! each an API client built on kube-runtime's `Controller` over shared
//! informers (`informer`), retried with backoff (`runner`). Only the leader
//! of the `kube-controller-manager` Lease in kube-system runs them, so
//! several servers can run a controller manager for high availability.

mod clusterroleaggregation;
mod cronjob;
mod csrapproving;
mod csrsigning;
mod daemonset;
mod deployment;
mod discovery;
mod disruption;
mod endpoints;
mod endpointslice;
mod expectations;
mod garbagecollector;
mod history;
mod informer;
mod job;
mod localpath;
mod namespace;
mod nodeclaim;
mod nodeipam;
mod nodelifecycle;
mod ownerref;
mod persistentvolume;
mod podautoscaler;
mod podgc;
mod podowners;
mod pods;
mod protection;
mod queue;
mod queue_metrics;
mod replicaset;
mod resourcequota;
mod rootca;
mod runner;
mod serviceaccount;
mod servicelb;
mod statefulset;
mod tokencleaner;
mod tokens;
mod ttlafterfinished;

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubox_client::events::Recorder;
use kubox_client::leader::{self, LeaderElection};

pub use csrsigning::SigningCa;
pub use informer::{Change, Informed, Informer, Informers, Metadata, Watched};
pub use nodeipam::PodRanges;
pub use podautoscaler::{Settings as HpaSettings, Timing as HpaTiming};

/// The Lease the controller managers of a cluster elect their leader with.
pub const LEASE: &str = "kube-controller-manager";

/// What the controllers are told about the cluster.
#[derive(Clone, Debug)]
pub struct Config {
    pub pod_ranges: PodRanges,
    /// The cluster CA's certificate (PEM), which the root CA publisher
    /// hands to every namespace.
    pub root_ca: String,
    /// Which controllers run, as kube-controller-manager's `--controllers`
    /// says it: `*` (all), `job` (this one), `-job` (not this one).
    pub controllers: Vec<String>,
    /// The cluster CA's key too, when this controller manager signs
    /// CertificateSigningRequests.
    pub signing_ca: Option<SigningCa>,
    /// The ServiceAccount token signing key (PEM), when this controller
    /// manager fills legacy token Secrets (upstream's
    /// `--service-account-private-key-file`).
    pub service_account_key: Option<String>,
    /// The HorizontalPodAutoscaler controller's sync period and windows.
    pub hpa: HpaSettings,
    /// How long a node may go without renewing its Lease or posting status
    /// before it is taken to be unreachable (upstream's 40 s).
    pub node_monitor_grace_period: std::time::Duration,
    /// Where the local-path provisioner makes its volumes' directories.
    pub local_path_dir: std::path::PathBuf,
    /// The longest a signed certificate lives (upstream's
    /// `--cluster-signing-duration`, a year).
    pub cluster_signing_duration: std::time::Duration,
}

/// What every controller shares.
pub struct Context {
    pub client: kube::Client,
    pub informers: Informers,
    pub config: Config,
}

impl Context {
    /// An event recorder under a controller's upstream name
    /// (`replicaset-controller`, shown by `kubectl describe` as the source).
    pub fn recorder(&self, component: &str) -> Recorder {
        Recorder::new(self.client.clone(), component, None)
    }
}

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", api_message(.0))]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Failed(String),
}

/// An API error as client-go prints it: the Status message alone.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// Whether an error is the API's Status with this reason.
fn is_reason(e: &kube::Error, reason: &str) -> bool {
    matches!(e, kube::Error::Api(s) if s.reason == reason)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// A create refused because the namespace is being deleted (the Status
/// cause NamespaceLifecycle adds).
fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// Now, to the second, as the API stores times.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// A running controller manager; dropping it stops it.
pub enum ControllerManager {
    /// Running the controllers while it holds the Lease.
    Elected(leader::Candidate),
    /// Running them regardless (`--leader-elect=false`).
    Alone(kubox_client::Tasks),
}

impl ControllerManager {
    /// Runs the controllers, with their work queues' metrics in
    /// `registry`: with `elect`, only while leading; without, at once and
    /// for good, as kube-controller-manager does with `--leader-elect=false`.
    pub fn start(
        client: kube::Client,
        config: Config,
        elect: Option<leader::Timing>,
        registry: &kubox_prometheus::Registry,
    ) -> Self {
        queue_metrics::register(registry);
        let Some(timing) = elect else {
            return Self::Alone(kubox_client::Tasks::new(vec![tokio::spawn(lead(
                client, config,
            ))]));
        };
        let election = LeaderElection::with_timing(
            client.clone(),
            "kube-system",
            LEASE,
            leader::identity(),
            timing,
        );
        Self::Elected(election.spawn(move || lead(client.clone(), config.clone())))
    }

    /// Stops the controllers and gives up the leader lease, so another
    /// server (or this one restarted) leads without waiting it out.
    pub async fn stop(self, timeout: std::time::Duration) {
        if let Self::Elected(candidate) = self {
            candidate.release(timeout).await;
        }
    }
}

type Run = fn(Arc<Context>) -> BoxFuture<'static, ()>;

/// Every controller by kube-controller-manager's name for it.
const CONTROLLERS: &[(&str, Run)] = &[
    ("serviceaccount", |ctx| serviceaccount::run(ctx).boxed()),
    ("serviceaccount-token", |ctx| tokens::run(ctx).boxed()),
    ("replicaset", |ctx| replicaset::run_replicasets(ctx).boxed()),
    ("replicationcontroller", |ctx| {
        replicaset::run_replication_controllers(ctx).boxed()
    }),
    ("deployment", |ctx| deployment::run(ctx).boxed()),
    ("job", |ctx| job::run(ctx).boxed()),
    ("cronjob", |ctx| cronjob::run(ctx).boxed()),
    ("daemonset", |ctx| daemonset::run(ctx).boxed()),
    ("statefulset", |ctx| statefulset::run(ctx).boxed()),
    ("podgc", |ctx| podgc::run(ctx).boxed()),
    ("resourcequota", |ctx| resourcequota::run(ctx).boxed()),
    ("ttl-after-finished", |ctx| {
        ttlafterfinished::run(ctx).boxed()
    }),
    ("garbagecollector", |ctx| garbagecollector::run(ctx).boxed()),
    ("namespace", |ctx| namespace::run(ctx).boxed()),
    ("root-ca-cert-publisher", |ctx| rootca::run(ctx).boxed()),
    ("nodeipam", |ctx| nodeipam::run(ctx).boxed()),
    ("nodelifecycle", |ctx| nodelifecycle::run(ctx).boxed()),
    ("endpoint", |ctx| endpoints::run(ctx).boxed()),
    ("endpointslice", |ctx| endpointslice::run(ctx).boxed()),
    ("servicelb", |ctx| servicelb::run(ctx).boxed()),
    ("disruption", |ctx| disruption::run(ctx).boxed()),
    ("horizontalpodautoscaling", |ctx| {
        podautoscaler::run(ctx).boxed()
    }),
    ("clusterrole-aggregation", |ctx| {
        clusterroleaggregation::run(ctx).boxed()
    }),
    ("csrsigning", |ctx| csrsigning::run(ctx).boxed()),
    ("csrapproving", |ctx| csrapproving::run(ctx).boxed()),
    ("nodeclaim", |ctx| nodeclaim::run(ctx).boxed()),
    ("tokencleaner", |ctx| tokencleaner::run(ctx).boxed()),
    ("persistentvolume-binder", |ctx| {
        persistentvolume::run(ctx).boxed()
    }),
    ("pvc-protection", |ctx| protection::claims::run(ctx).boxed()),
    ("pv-protection", |ctx| protection::volumes::run(ctx).boxed()),
    ("local-path-provisioner", |ctx| localpath::run(ctx).boxed()),
];

/// The names `--controllers` takes.
pub fn names() -> impl Iterator<Item = &'static str> {
    CONTROLLERS.iter().map(|(name, _)| *name)
}

/// Whether `name` runs under a `--controllers` list, read as upstream
/// reads it: the first entry naming it (`foo` or `-foo`) decides, else
/// `*` runs it. kubox turns no controller off by default.
pub fn enabled(selection: &[String], name: &str) -> bool {
    let mut star = false;
    for entry in selection {
        if entry == name {
            return true;
        }
        if entry.strip_prefix('-') == Some(name) {
            return false;
        }
        star |= entry == "*";
    }
    star
}

/// Checks a `--controllers` list, refusing names no controller has with
/// upstream's message.
pub fn check_selection(selection: &[String]) -> Result<(), String> {
    for entry in selection {
        let name = entry.strip_prefix('-').unwrap_or(entry);
        if name != "*" && !names().any(|n| n == name) {
            return Err(format!("{name:?} is not in the list of known controllers"));
        }
    }
    Ok(())
}

/// Every controller enabled, until leadership is lost (then this future is dropped,
/// and with it the controllers and their informers).
async fn lead(client: kube::Client, config: Config) {
    let ctx = Arc::new(Context {
        informers: Informers::new(client.clone()),
        client,
        config,
    });
    let controllers: Vec<BoxFuture<'static, ()>> = CONTROLLERS
        .iter()
        .filter(|(name, _)| enabled(&ctx.config.controllers, name))
        .map(|(_, run)| run(ctx.clone()))
        .collect();
    futures::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn controllers_are_selected_as_upstream_selects_them() {
        assert!(enabled(&list(&["*"]), "job"));
        assert!(!enabled(&list(&["*", "-job"]), "job"));
        assert!(enabled(&list(&["*", "-job"]), "cronjob"));
        assert!(enabled(&list(&["job"]), "job"));
        assert!(!enabled(&list(&["job"]), "cronjob"));
        assert!(!enabled(&list(&[]), "job"));
        // The first entry naming a controller decides.
        assert!(enabled(&list(&["job", "-job"]), "job"));
        assert!(!enabled(&list(&["-job", "*"]), "job"));
    }

    #[test]
    fn unknown_controllers_are_refused() {
        assert!(check_selection(&list(&["*", "-job", "deployment"])).is_ok());
        assert_eq!(
            check_selection(&list(&["*", "-jobs"])),
            Err("\"jobs\" is not in the list of known controllers".to_owned())
        );
    }
}
