//! The etcd backend: the same interface over a real etcd v3 cluster, so that
//! several API servers can share one store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client as etcd;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::types::*;
use crate::{Error, Result, Store, WatchRequest, WatchStream, check_txn_size};

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// How often an idle watch that asked for progress gets it.
    pub progress_interval: Duration,
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            progress_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    client: etcd::Client,
    progress_interval: Duration,
    /// Wakes every watch to ask etcd for progress now.
    progress_wanted: Arc<Notify>,
}

impl EtcdStore {
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let options = etcd::ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(Duration::from_secs(30));
        let mut client = etcd::Client::connect(&config.endpoints, Some(options)).await?;
        // Connecting is lazy; a status call shows now whether etcd answers.
        client.status().await.map_err(|e| {
            Error::Unavailable(format!(
                "etcd at {} does not answer: {e}",
                config.endpoints.join(",")
            ))
        })?;
        Ok(Self {
            client,
            progress_interval: config.progress_interval,
            progress_wanted: Arc::new(Notify::new()),
        })
    }
}

fn kv_from(kv: &etcd::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn header_revision(header: Option<&etcd::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// Maps etcd's errors to ours, recognising those the interface names.
fn map_error(e: etcd::Error, revision: Revision, lease: LeaseId) -> Error {
    if let etcd::Error::GRpcStatus(status) = &e {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return Error::Compacted {
                requested: revision,
            };
        }
        if msg.contains("required revision is a future revision") {
            return Error::FutureRevision {
                requested: revision,
                current: 0,
            };
        }
        if msg.contains("requested lease not found") {
            return Error::LeaseNotFound(lease);
        }
    }
    if let etcd::Error::LeaseKeepAliveError(msg) = &e
        && msg.contains("lease not found")
    {
        return Error::LeaseNotFound(lease);
    }
    e.into()
}

fn compare_to_etcd(c: &Compare) -> etcd::Compare {
    let op = match c.op {
        CompareOp::Equal => etcd::CompareOp::Equal,
        CompareOp::NotEqual => etcd::CompareOp::NotEqual,
        CompareOp::Greater => etcd::CompareOp::Greater,
        CompareOp::Less => etcd::CompareOp::Less,
    };
    let key = c.key.as_bytes();
    match &c.target {
        CompareTarget::ModRevision(r) => etcd::Compare::mod_revision(key, op, *r),
        CompareTarget::CreateRevision(r) => etcd::Compare::create_revision(key, op, *r),
        CompareTarget::Version(v) => etcd::Compare::version(key, op, *v),
        CompareTarget::Value(v) => etcd::Compare::value(key, op, v.to_vec()),
    }
}

fn op_to_etcd(op: &Op) -> etcd::TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let mut opts = etcd::PutOptions::new().with_prev_key();
            if *lease != 0 {
                opts = opts.with_lease(*lease);
            }
            etcd::TxnOp::put(key.as_bytes(), value.to_vec(), Some(opts))
        }
        Op::Delete { key } => etcd::TxnOp::delete(
            key.as_bytes(),
            Some(etcd::DeleteOptions::new().with_prev_key()),
        ),
        Op::Get { key } => etcd::TxnOp::get(key.as_bytes(), None),
    }
}

/// Rebuilds what a put wrote: etcd answers only the previous value.
fn put_result(op: &Op, prev: Option<KeyValue>, revision: Revision) -> OpResult {
    let Op::Put { key, value, lease } = op else {
        unreachable!("put result for a put")
    };
    let kv = KeyValue {
        key: key.clone(),
        value: value.clone(),
        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
        mod_revision: revision,
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        lease: *lease,
    };
    OpResult::Put { prev, kv }
}

#[async_trait]
impl Store for EtcdStore {
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        check_txn_size(&txn)?;
        let lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .unwrap_or(0);
        let request = etcd::Txn::new()
            .when(txn.compares.iter().map(compare_to_etcd).collect::<Vec<_>>())
            .and_then(txn.success.iter().map(op_to_etcd).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(op_to_etcd).collect::<Vec<_>>());
        let resp = self
            .client
            .clone()
            .txn(request)
            .await
            .map_err(|e| map_error(e, 0, lease))?;
        let revision = header_revision(resp.header());
        let ops = if resp.succeeded() {
            &txn.success
        } else {
            &txn.failure
        };
        let results = ops
            .iter()
            .zip(resp.op_responses())
            .map(|(op, r)| match r {
                etcd::TxnOpResponse::Put(p) => put_result(op, p.prev_key().map(kv_from), revision),
                etcd::TxnOpResponse::Delete(d) => OpResult::Delete {
                    prev: d.prev_kvs().first().map(kv_from),
                },
                etcd::TxnOpResponse::Get(g) => OpResult::Get(g.kvs().first().map(kv_from)),
                etcd::TxnOpResponse::Txn(_) => unreachable!("no nested transactions are sent"),
            })
            .collect();
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision,
            results,
        })
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let start = match &req.start {
            Some(s) if s.as_str() > req.prefix.as_str() => s.clone(),
            _ => req.prefix.clone(),
        };
        let mut opts = etcd::GetOptions::new()
            .with_range(prefix_end(&req.prefix).map_or(vec![0], String::into_bytes))
            .with_limit(req.limit as i64)
            .with_revision(req.revision.max(0));
        if req.count_only {
            opts = opts.with_count_only();
        }
        let resp = self
            .client
            .clone()
            .get(start, Some(opts))
            .await
            .map_err(|e| map_error(e, req.revision, 0))?;
        let revision = if req.revision > 0 {
            req.revision
        } else {
            header_revision(resp.header())
        };
        Ok(RangeResponse {
            kvs: resp.kvs().iter().map(kv_from).collect(),
            more: resp.more(),
            count: resp.count(),
            revision,
        })
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        let mut opts = etcd::WatchOptions::new()
            .with_range(prefix_end(&req.prefix).map_or(vec![0], String::into_bytes))
            .with_prev_key()
            .with_progress_notify();
        if req.start_revision > 0 {
            opts = opts.with_start_revision(req.start_revision);
        }
        let mut stream = self
            .client
            .clone()
            .watch(req.prefix.as_bytes(), Some(opts))
            .await
            .map_err(|e| map_error(e, req.start_revision, 0))?;
        // etcd confirms the watch first, or cancels it if the start revision is compacted.
        match stream
            .message()
            .await
            .map_err(|e| map_error(e, req.start_revision, 0))?
        {
            Some(created) if created.canceled() && created.compact_revision() > 0 => {
                return Err(Error::Compacted {
                    requested: req.start_revision,
                });
            }
            Some(created) if created.canceled() => {
                return Err(Error::Backend(format!(
                    "watch canceled: {}",
                    created.cancel_reason()
                )));
            }
            Some(_) => {}
            None => return Err(Error::Unavailable("etcd closed the watch".into())),
        }
        let (tx, rx) = mpsc::channel(1024);
        let wanted = req.progress_notify.then(|| self.progress_wanted.clone());
        tokio::spawn(forward_watch(
            stream,
            tx,
            self.progress_interval,
            wanted,
            req.start_revision,
        ));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self.client.clone().status().await?;
        Ok(header_revision(resp.header()))
    }

    async fn request_progress(&self) -> Result<()> {
        self.progress_wanted.notify_waiters();
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.client
            .clone()
            .compact(
                revision,
                Some(etcd::CompactionOptions::new().with_physical()),
            )
            .await
            .map_err(|e| map_error(e, revision, 0))?;
        Ok(())
    }

    async fn db_status(&self) -> Result<DbStatus> {
        let resp = self.client.clone().status().await?;
        Ok(DbStatus {
            cluster_id: format!("etcd-{}", resp.header().map_or(0, |h| h.cluster_id())),
            size_bytes: u64::try_from(resp.db_size()).unwrap_or(0),
        })
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        Ok(self
            .client
            .clone()
            .lease_grant(ttl_seconds.max(1), None)
            .await?
            .id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        let (mut keeper, mut responses) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| map_error(e, 0, lease))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| map_error(e, 0, lease))?;
        match responses
            .message()
            .await
            .map_err(|e| map_error(e, 0, lease))?
        {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(Error::LeaseNotFound(lease)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| map_error(e, 0, lease))?;
        Ok(())
    }
}

/// Moves etcd's watch responses onto our stream, asking etcd for progress
/// when idle. Ends when the consumer drops the stream.
async fn forward_watch(
    mut stream: etcd::WatchStream,
    tx: mpsc::Sender<Result<WatchMessage>>,
    interval: Duration,
    progress_wanted: Option<Arc<Notify>>,
    start: Revision,
) {
    let progress = progress_wanted.is_some();
    let wanted = progress_wanted.unwrap_or_default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            _ = async { tokio::select! { _ = ticker.tick() => {}, _ = wanted.notified() => {} } }, if progress => {
                if stream.request_progress().await.is_err() {
                    let _ = tx.send(Err(Error::Unavailable("etcd watch closed".into()))).await;
                    return;
                }
                continue;
            }
            msg = stream.message() => msg,
        };
        let out = match msg {
            Ok(Some(resp)) if resp.canceled() => {
                let err = if resp.compact_revision() > 0 {
                    Error::Compacted { requested: start }
                } else {
                    Error::Backend(format!("watch canceled: {}", resp.cancel_reason()))
                };
                let _ = tx.send(Err(err)).await;
                return;
            }
            Ok(Some(resp)) if resp.events().is_empty() => {
                if !progress {
                    continue;
                }
                Ok(WatchMessage::Progress(header_revision(resp.header())))
            }
            Ok(Some(resp)) => Ok(WatchMessage::Events(
                resp.events()
                    .iter()
                    .filter_map(|e| {
                        let kv = kv_from(e.kv()?);
                        Some(Event {
                            kind: match e.event_type() {
                                etcd::EventType::Put => EventKind::Put,
                                etcd::EventType::Delete => EventKind::Delete,
                            },
                            kv,
                            prev_kv: e.prev_kv().map(kv_from),
                        })
                    })
                    .collect(),
            )),
            Ok(None) => Err(Error::Unavailable("etcd closed the watch".into())),
            Err(e) => Err(e.into()),
        };
        let end = out.is_err();
        if tx.send(out).await.is_err() || end {
            return;
        }
    }
}
