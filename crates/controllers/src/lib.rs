//! kubox's controller manager: the control loops of kube-controller-manager,
//! each an API client built on kube-runtime's `Controller` over shared
//! informers (`informer`), retried with backoff (`runner`). Only the leader
//! of the `kube-controller-manager` Lease in kube-system runs them, so
//! several servers can run a controller manager for high availability.

mod informer;
mod runner;
mod serviceaccount;

use std::sync::Arc;

use futures::FutureExt;
use kubox_client::leader::{self, LeaderElection};

pub use informer::{Informed, Informer, Informers};

/// The Lease the controller managers of a cluster elect their leader with.
pub const LEASE: &str = "kube-controller-manager";

/// What every controller shares.
pub struct Context {
    pub client: kube::Client,
    pub informers: Informers,
}

/// A running controller manager; dropping it stops it.
pub struct ControllerManager {
    _tasks: kubox_client::Tasks,
}

impl ControllerManager {
    /// Campaigns for leadership and runs the controllers while leading.
    pub fn start(client: kube::Client) -> Self {
        let election =
            LeaderElection::new(client.clone(), "kube-system", LEASE, leader::identity());
        let task = tokio::spawn(election.run(move || lead(client.clone())));
        Self {
            _tasks: kubox_client::Tasks::new(vec![task]),
        }
    }
}

/// Every controller, until leadership is lost (then this future is dropped,
/// and with it the controllers and their informers).
async fn lead(client: kube::Client) {
    let ctx = Arc::new(Context {
        informers: Informers::new(client.clone()),
        client,
    });
    let controllers = vec![serviceaccount::run(ctx.clone()).boxed()];
    futures::future::join_all(controllers).await;
}
