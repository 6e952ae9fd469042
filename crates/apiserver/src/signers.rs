//! Upstream's CertificateApproval and CertificateSigning admission: who
//! approves a CertificateSigningRequest (its `approval` subresource) needs
//! the `approve` verb, and who issues its certificate (`status`) the `sign`
//! verb, on the `signers` resource of certificates.k8s.io named by the
//! request's signerName, or by its domain with `/*`
//! (`kubernetes.io/*`); the update verb on the subresource is not enough.

use std::sync::Arc;

use crate::api::{CheckedWrite, WriteCheck};
use crate::authz::{self, Attributes, Authorizer, Decision};
use crate::http::Identity;
use crate::status::{ApiError, ApiResult};

const GROUP: &str = "certificates.k8s.io";

pub struct Signers {
    /// Asked as upstream asks the cluster's authorizer: RBAC's rules are
    /// the only ones that grant these verbs.
    pub authorizer: Arc<dyn Authorizer>,
}

impl Signers {
    /// Whether `user` may `verb` the signer `name` or its domain's `/*`.
    fn may(&self, user: &Identity, verb: &str, signer: &str) -> bool {
        let domain = format!("{}/*", signer.split('/').next().unwrap_or_default());
        [signer, domain.as_str()].into_iter().any(|name| {
            let attrs = Attributes {
                user,
                verb,
                namespace: None,
                group: GROUP,
                resource: "signers",
                subresource: None,
                name: Some(name),
                fields: None,
                path: None,
            };
            authz::decide(&*self.authorizer, &attrs) == Decision::Allow
        })
    }
}

impl WriteCheck for Signers {
    fn check(&self, user: &Identity, write: &CheckedWrite<'_>) -> ApiResult<()> {
        if write.rt.group != GROUP || write.rt.plural != "certificatesigningrequests" {
            return Ok(());
        }
        let Some(old) = write.old else {
            return Ok(());
        };
        // The signer is the stored request's: an update never changes a spec.
        let signer = old["spec"]["signerName"].as_str().unwrap_or_default();
        let verb = match write.subresource {
            Some("approval") => "approve",
            // Only a write that changes the certificate issues one.
            Some("status")
                if old["status"]["certificate"] != write.obj["status"]["certificate"] =>
            {
                "sign"
            }
            _ => return Ok(()),
        };
        if self.may(user, verb, signer) {
            return Ok(());
        }
        let name = write.obj["metadata"]["name"].as_str().unwrap_or_default();
        Err(ApiError::forbidden_on(
            GROUP,
            write.rt.plural,
            name,
            &format!("user not permitted to {verb} requests with signerName {signer:?}"),
        ))
    }
}
