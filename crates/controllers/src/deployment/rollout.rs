//! The two rollout strategies (upstream's rolling.go and recreate.go).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;

use super::sync::Sync;
use super::util;
use crate::Error;

impl Sync<'_> {
    /// RollingUpdate: grow the new ReplicaSet within maxSurge, shrink the
    /// old ones within maxUnavailable, one step per sync.
    pub async fn rollout_rolling(
        &mut self,
        rs_list: &[ReplicaSet],
    ) -> Result<Option<Duration>, Error> {
        let (new, old) = self.all_replica_sets(rs_list, true).await?;
        let Some(new) = new else {
            return Err(Error::Failed("no new replica set".into()));
        };
        let mut all = old.clone();
        all.push(new.clone());
        if self.reconcile_new(&all, &new).await? {
            return self.sync_rollout_status(&all, Some(&new)).await;
        }
        if self.reconcile_old(&all, util::active(&old), &new).await? {
            return self.sync_rollout_status(&all, Some(&new)).await;
        }
        if util::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(&all, Some(&new)).await
    }

    async fn reconcile_new(&mut self, all: &[ReplicaSet], new: &ReplicaSet) -> Result<bool, Error> {
        let want = util::replicas(&self.d);
        let have = util::rs_replicas(new);
        if have == want {
            return Ok(false);
        }
        let size = if have > want {
            want
        } else {
            util::new_rs_new_replicas(&self.d, all, new)
        };
        Ok(self.scale_and_record(new, size).await?.0)
    }

    async fn reconcile_old(
        &mut self,
        all: &[ReplicaSet],
        old: Vec<ReplicaSet>,
        new: &ReplicaSet,
    ) -> Result<bool, Error> {
        if util::total_replicas(&old) == 0 {
            return Ok(false);
        }
        let all_pods = util::total_replicas(all);
        let min_available = util::replicas(&self.d) - util::max_unavailable(&self.d);
        let new_unavailable = util::rs_replicas(new)
            - new
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // As upstream, a failure here only ends this step; the next sync retries.
        let Ok((old, cleaned)) = self.cleanup_unhealthy(old, max_scaled_down).await else {
            return Ok(false);
        };
        let mut all = old.clone();
        all.push(new.clone());
        let Ok(scaled) = self.scale_down_old(&all, old).await else {
            return Ok(false);
        };
        Ok(cleaned + scaled > 0)
    }

    /// Scales old ReplicaSets down by their unavailable pods first: they
    /// serve nobody.
    async fn cleanup_unhealthy(
        &mut self,
        mut old: Vec<ReplicaSet>,
        max: i32,
    ) -> Result<(Vec<ReplicaSet>, i32), Error> {
        util::sort_by_creation(&mut old);
        let mut total = 0;
        for rs in old.iter_mut() {
            if total >= max {
                break;
            }
            let replicas = util::rs_replicas(rs);
            let available = rs
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if replicas == 0 || replicas == available {
                continue;
            }
            let down = (max - total).min(replicas - available);
            let (_, written) = self.scale_and_record(rs, replicas - down).await?;
            total += down;
            *rs = written;
        }
        Ok((old, total))
    }

    /// Scales the old ReplicaSets down, oldest first, as far as
    /// maxUnavailable allows.
    async fn scale_down_old(
        &mut self,
        all: &[ReplicaSet],
        mut old: Vec<ReplicaSet>,
    ) -> Result<i32, Error> {
        let min_available = util::replicas(&self.d) - util::max_unavailable(&self.d);
        let available = util::available_replicas(all);
        if available <= min_available {
            return Ok(0);
        }
        util::sort_by_creation(&mut old);
        let target = available - min_available;
        let mut total = 0;
        for rs in &old {
            if total >= target {
                break;
            }
            let replicas = util::rs_replicas(rs);
            if replicas == 0 {
                continue;
            }
            let down = replicas.min(target - total);
            self.scale_and_record(rs, replicas - down).await?;
            total += down;
        }
        Ok(total)
    }

    /// Recreate: every old pod gone before the new ReplicaSet is scaled up.
    pub async fn rollout_recreate(
        &mut self,
        rs_list: &[ReplicaSet],
        pod_map: &[(String, Vec<Arc<Pod>>)],
    ) -> Result<Option<Duration>, Error> {
        let (mut new, mut old) = self.all_replica_sets(rs_list, false).await?;
        let mut all = old.clone();
        all.extend(new.clone());
        let mut scaled = false;
        for rs in util::active(&old) {
            scaled |= self.scale_and_record(&rs, 0).await?.0;
        }
        if scaled {
            return self.sync_rollout_status(&all, new.as_ref()).await;
        }
        if old_pods_running(new.as_ref(), &old, pod_map) {
            return self.sync_rollout_status(&all, new.as_ref()).await;
        }
        if new.is_none() {
            (new, old) = self.all_replica_sets(rs_list, true).await?;
            all = old.clone();
            all.extend(new.clone());
        }
        if let Some(rs) = &new {
            let want = util::replicas(&self.d);
            self.scale_and_record(rs, want).await?;
        }
        if util::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(&all, new.as_ref()).await
    }
}

/// Whether any pod of an old ReplicaSet has not finished.
fn old_pods_running(
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    pod_map: &[(String, Vec<Arc<Pod>>)],
) -> bool {
    if util::actual_replicas(old) > 0 {
        return true;
    }
    let new_uid = new.and_then(|rs| rs.metadata.uid.as_deref());
    pod_map
        .iter()
        .filter(|(uid, _)| Some(uid.as_str()) != new_uid)
        .flat_map(|(_, pods)| pods)
        .any(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            )
        })
}
