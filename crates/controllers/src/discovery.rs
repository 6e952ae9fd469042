//! The resources the API server serves, as the garbage collector and the
//! namespace controller find them: every group at its preferred version,
//! from aggregated discovery.

use kube::api::ApiResource;
use kube::discovery::{ApiCapabilities, Discovery, Scope};

/// One served resource and what it allows.
#[derive(Clone, Debug)]
pub struct Served {
    pub resource: ApiResource,
    pub namespaced: bool,
    caps: ApiCapabilities,
}

impl Served {
    pub fn supports(&self, verbs: &[&str]) -> bool {
        verbs.iter().all(|v| self.caps.supports_operation(v))
    }

    /// The API group (empty for the core group).
    pub fn group(&self) -> &str {
        &self.resource.group
    }
}

pub async fn served(client: &kube::Client) -> Result<Vec<Served>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run_aggregated().await?;
    Ok(discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(resource, caps)| Served {
            namespaced: caps.scope == Scope::Namespaced,
            resource,
            caps,
        })
        .collect())
}

/// The group of an owner reference's `apiVersion`.
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}
