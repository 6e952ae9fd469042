//! ServiceAccount tokens as upstream makes them: JWTs signed with the
//! cluster's service-account key. Bound tokens (the TokenRequest API) carry
//! audiences, an expiry and a `kubernetes.io` claim naming the namespace,
//! the ServiceAccount and the object they are bound to; legacy tokens
//! (filled into `kubernetes.io/service-account-token` Secrets) never expire
//! and name their Secret. Both the API server (which issues and verifies)
//! and the token controller (which signs legacy tokens) use this crate, so
//! the two agree on one format.

mod claims;
mod key;

pub use claims::{Bound, Claims, LEGACY_ISSUER, Private, Ref, Subject, lifetime};
pub use key::SigningKey;

/// The issuer upstream's API server names by default.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The prefix of a ServiceAccount's user name.
pub const USER_PREFIX: &str = "system:serviceaccount:";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the service-account key: {0}")]
    Key(String),
    #[error("signing a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// A token that does not authenticate; the text is for the server's log.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The user a ServiceAccount authenticates as.
pub fn username(namespace: &str, name: &str) -> String {
    format!("{USER_PREFIX}{namespace}:{name}")
}

/// The groups of every ServiceAccount of `namespace`, as upstream lists them.
pub fn groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_owned(),
    ]
}
