//! What kubox's components share as API clients.

mod backoff;
mod cache;
mod claims;
pub mod events;
pub mod failover;
pub mod leader;
pub mod peers;
pub mod quantity;
mod tasks;

pub use backoff::node_watch_backoff;
pub use cache::{Followed, follow, follow_slim};
pub use claims::{PodClaim, pod_claims};
pub use tasks::Tasks;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {0}: {1}")]
    Read(String, #[source] kube::config::KubeconfigError),
    #[error("kubeconfig {0}: {1}")]
    Config(String, #[source] kube::config::KubeconfigError),
    #[error("kubeconfig {0}: {1}")]
    Client(String, #[source] kube::Error),
    #[error("kubeconfig {0}: {1}")]
    Server(String, String),
}

/// A client with the identity and server of a kubeconfig file, and the file's contents.
pub async fn connect(
    path: &Path,
) -> Result<(kube::Client, kube::config::Kubeconfig), ConnectError> {
    let shown = path.display().to_string();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| ConnectError::Read(shown.clone(), e))?;
    let client = client_for(&kubeconfig, shown).await?;
    Ok((client, kubeconfig))
}

/// A client for a kubeconfig read from the file `shown` names.
async fn client_for(
    kubeconfig: &kube::config::Kubeconfig,
    shown: String,
) -> Result<kube::Client, ConnectError> {
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig.clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| ConnectError::Config(shown.clone(), e))?;
    kube::Client::try_from(config).map_err(|e| ConnectError::Client(shown, e))
}
