//! A [`Store`] that times every call into the process's metrics as the API
//! server's storage latency, `etcd_request_duration_seconds{operation,type}`
//! (upstream's name, whichever backend serves), `type` being the resource
//! a key belongs to (`/registry/pods/...` is `pods`).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use kubox_prometheus::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::{
    DbStatus, LeaseId, Op, RangeRequest, RangeResponse, Result, Revision, Store, Txn, TxnResponse,
    WatchRequest, WatchStream,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    operation: &'static str,
    r#type: String,
}

/// Upstream's storage latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    durations: Family<Labels, Histogram>,
}

/// The resource a key is stored under: `pods` for `/registry/pods/...`.
pub fn resource(key: &str) -> &str {
    key.strip_prefix("/registry/")
        .and_then(|k| k.split('/').next())
        .unwrap_or(key)
}

/// What a transaction does, as upstream's storage operations name it.
fn operation(txn: &Txn) -> (&'static str, String) {
    let key = |op: &Op| match op {
        Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => resource(key).to_owned(),
    };
    let first = txn.success.first().map(key).unwrap_or_default();
    if txn.success.iter().any(|op| matches!(op, Op::Delete { .. })) {
        ("delete", first)
    } else if txn.success.iter().any(|op| matches!(op, Op::Put { .. })) {
        // A create compares the key's absence; an update its revision.
        let create = txn
            .compares
            .iter()
            .any(|c| matches!(c.target, crate::CompareTarget::ModRevision(0)));
        (if create { "create" } else { "update" }, first)
    } else {
        ("get", first)
    }
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, registry: &Registry) -> Self {
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS.iter().copied())
        });
        registry.register(
            "etcd_request_duration_seconds",
            "[ALPHA] Etcd request latency in seconds for each operation and object type.",
            durations.clone(),
        );
        Self { inner, durations }
    }

    fn observe(&self, operation: &'static str, r#type: String, started: Instant) {
        self.durations
            .get_or_create(&Labels { operation, r#type })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let (op, kind) = operation(&txn);
        let started = Instant::now();
        let r = self.inner.txn(txn).await;
        self.observe(op, kind, started);
        r
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let kind = resource(&req.prefix).to_owned();
        let started = Instant::now();
        let r = self.inner.range(req).await;
        self.observe("list", kind, started);
        r
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        self.inner.watch(req).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn request_progress(&self) -> Result<()> {
        self.inner.request_progress().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let started = Instant::now();
        let r = self.inner.compact(revision).await;
        self.observe("compact", String::new(), started);
        r
    }

    async fn db_status(&self) -> Result<DbStatus> {
        self.inner.db_status().await
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        let started = Instant::now();
        let r = self.inner.lease_grant(ttl_seconds).await;
        self.observe("leaseGrant", String::new(), started);
        r
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.inner.lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.inner.lease_revoke(lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_resource() {
        assert_eq!(resource("/registry/pods/default/web"), "pods");
        assert_eq!(resource("/registry/namespaces/"), "namespaces");
    }
}
