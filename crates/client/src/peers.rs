//! The live API servers of a cluster as their identity Leases show them
//! (`kube-system`, labelled as upstream's, renewed by each server), and
//! what each announces on its Lease: where its ingress controller listens.
//! Components that publish the set of all servers (Ingress status) read it
//! from here.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::ListParams;

/// Upstream's label on API server identity Leases.
const IDENTITY_SELECTOR: &str = "apiserver.kubernetes.io/identity=kube-apiserver";
/// The IP a server's ingress controller is reached at.
pub const INGRESS_ADDRESS: &str = "kubox.io/ingress-address";

/// The values of `annotation` on the Leases of the servers live at `now`,
/// sorted, without repeats. A Lease counts as live until its renew time
/// plus its duration.
pub fn announced(leases: &[Lease], annotation: &str, now: Timestamp) -> Vec<String> {
    let mut values: Vec<String> = leases
        .iter()
        .filter(|lease| {
            let Some(spec) = &lease.spec else {
                return false;
            };
            let seconds = spec.lease_duration_seconds.unwrap_or_default();
            spec.renew_time
                .as_ref()
                .is_some_and(|r| r.0 + SignedDuration::from_secs(seconds.into()) > now)
        })
        .filter_map(|lease| lease.metadata.annotations.as_ref()?.get(annotation))
        .cloned()
        .collect();
    values.sort();
    values.dedup();
    values
}

/// [`announced`] for the servers' Leases as the API lists them now.
pub async fn list_announced(
    client: &kube::Client,
    annotation: &str,
) -> Result<Vec<String>, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let listed = leases
        .list(&ListParams::default().labels(IDENTITY_SELECTOR))
        .await?;
    Ok(announced(&listed.items, annotation, Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(address: Option<&str>, renewed: Timestamp) -> Lease {
        let mut lease = Lease::default();
        if let Some(a) = address {
            lease.metadata.annotations = Some([(INGRESS_ADDRESS.to_owned(), a.to_owned())].into());
        }
        lease.spec = Some(LeaseSpec {
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        });
        lease
    }

    #[test]
    fn only_live_leases_that_announce_count_once_each_in_order() {
        let now = Timestamp::now();
        let ago = |s: i64| now - SignedDuration::from_secs(s);
        let leases = [
            lease(Some("10.0.0.2"), ago(1)),
            lease(Some("10.0.0.1"), ago(14)),
            lease(Some("10.0.0.3"), ago(16)),
            lease(None, ago(1)),
            lease(Some("10.0.0.2"), ago(2)),
        ];
        assert_eq!(
            announced(&leases, INGRESS_ADDRESS, now),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert!(announced(&leases, "kubox.io/other", now).is_empty());
    }
}
