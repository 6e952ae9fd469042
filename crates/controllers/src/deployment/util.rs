//! The Deployment controller's arithmetic, as upstream's
//! deployment/util: the pod template hash, surge and unavailability from
//! numbers or percentages, revisions and their annotations, proportional
//! scaling, conditions and status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The annotation `kubectl rollout undo` of old kubectl versions set.
pub const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How much of the revision history a ReplicaSet's annotation keeps.
pub const MAX_REVISION_HISTORY_CHARS: usize = 2000;

pub const PROGRESSING: &str = "Progressing";
pub const AVAILABLE: &str = "Available";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// What `progressDeadlineSeconds` is when it means "no deadline".
const NO_DEADLINE: i32 = i32::MAX;

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

pub fn set_rs_replicas(rs: &mut ReplicaSet, n: i32) {
    rs.spec.replicas = Some(n);
}

fn rs_status(rs: &ReplicaSet) -> k8s_openapi::api::apps::v1::ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

pub fn template(d: &Deployment) -> PodTemplateSpec {
    d.spec.template.clone()
}

pub fn rs_template(rs: &ReplicaSet) -> PodTemplateSpec {
    rs.spec.template.clone().unwrap_or_default()
}

pub fn is_rolling_update(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("RollingUpdate")
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .progress_deadline_seconds
        .filter(|s| *s != NO_DEADLINE)
}

pub fn revision_history_limit(d: &Deployment) -> Option<i32> {
    d.spec.revision_history_limit.filter(|l| *l != i32::MAX)
}

pub fn min_ready_seconds(d: &Deployment) -> Option<i32> {
    d.spec.min_ready_seconds
}

pub fn paused(d: &Deployment) -> bool {
    d.spec.paused.unwrap_or(false)
}

// ---- the pod template hash ----

/// Upstream's `rand.SafeEncodeString`: each byte to a character without
/// vowels or look-alikes, so a hash never spells a word.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn fnv32a(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(16_777_619))
}

/// Drops what semantic equality ignores: nulls, and empty lists and maps.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => {
            a.iter_mut().for_each(|x| {
                prune(x);
            });
            !a.is_empty()
        }
        Value::Object(m) => {
            m.retain(|_, x| prune(x));
            !m.is_empty()
        }
        _ => true,
    }
}

/// A template in a canonical form: sorted keys, empties dropped.
fn canonical(template: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(template).unwrap_or_default();
    prune(&mut v);
    v
}

/// The `pod-template-hash` of a template: FNV-32a of the template and the
/// collision count, printed in decimal and safe-encoded, as upstream's
/// ComputeHash (so it looks like `7c5ddbdf54`). The template is hashed in
/// its canonical JSON form rather than Go's in-memory form, so values
/// differ from upstream's while keeping their properties.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(&canonical(template)).unwrap_or_default();
    let mut hash = fnv32a(2_166_136_261, &bytes);
    if let Some(n) = collision_count {
        let mut count = [0u8; 8];
        count[..4].copy_from_slice(&(n as u32).to_le_bytes());
        hash = fnv32a(hash, &count);
    }
    safe_encode(&hash.to_string())
}

/// Whether two templates are equal but for the `pod-template-hash` label.
pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH);
        }
        canonical(&t)
    };
    strip(a) == strip(b)
}

// ---- surge and unavailability ----

/// An int, or a percentage of `total` rounded up or down (upstream's
/// GetScaledValueFromIntOrPercent); anything else counts as 0.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let Some(percent) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return 0;
            };
            let scaled = percent * i64::from(total);
            let value = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            value as i32
        }
    }
}

/// maxSurge and maxUnavailable resolved against `desired` together: surge
/// rounds up, unavailability down, and if both come to 0 one pod may be
/// unavailable, so a rollout can always move.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true);
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let rolling = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
}

pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling_update(d) {
        return 0;
    }
    fenceposts(d).0
}

pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling_update(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

// ---- revisions and annotations ----

fn annotation<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// A ReplicaSet's revision; 0 without one, `None` if unreadable.
pub fn revision(rs: &ReplicaSet) -> Option<i64> {
    match annotation(rs, REVISION) {
        None => Some(0),
        Some(v) => v.parse().ok(),
    }
}

pub fn max_revision(sets: &[ReplicaSet]) -> i64 {
    sets.iter().filter_map(revision).max().unwrap_or(0).max(0)
}

/// The second highest revision: the one before the current.
pub fn last_revision(sets: &[ReplicaSet]) -> i64 {
    let (mut max, mut second) = (0, 0);
    for v in sets.iter().filter_map(revision) {
        if v >= max {
            second = max;
            max = v;
        } else if v > second {
            second = v;
        }
    }
    second
}

/// Annotations of the Deployment that are not copied to its ReplicaSets.
fn skip_copy(key: &str) -> bool {
    [
        LAST_APPLIED,
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        ROLLBACK_TO,
    ]
    .contains(&key)
}

fn copy_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy(k) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Gives the new ReplicaSet the Deployment's annotations and `revision`,
/// keeping the revisions it had before in `revision-history` (a rollback
/// to it), and, when it is about to be created, the replica annotations.
/// Returns whether anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    history_limit_chars: usize,
) -> bool {
    let mut changed = copy_annotations(d, rs);
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = annotations.get(REVISION).cloned();
    let old_revision = match old.as_deref() {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return false,
        },
    };
    if old_revision < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            if history.is_empty() {
                annotations.insert(REVISION_HISTORY.into(), old);
            } else {
                let mut kept: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > history_limit_chars && start < kept.len() {
                    total -= kept[start].len() + 1;
                    start += 1;
                }
                if total <= history_limit_chars {
                    kept = kept.split_off(start);
                    kept.push(&old);
                    let joined = kept.join(",");
                    annotations.insert(REVISION_HISTORY.into(), joined);
                }
            }
        }
    }
    if !exists {
        let desired = replicas(d);
        changed |= set_replicas_annotations(rs, desired, desired + max_surge(d));
    }
    changed
}

pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            changed = true;
        }
    }
    changed
}

pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(rs, DESIRED_REPLICAS) != Some(desired.to_string().as_str())
        || annotation(rs, MAX_REPLICAS) != Some(max.to_string().as_str())
}

fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation(rs, key)?.parse().ok()
}

pub fn desired_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    int_annotation(rs, DESIRED_REPLICAS)
}

/// The Deployment's annotations after a rollback to `rs`: its own that are
/// never copied, and the ReplicaSet's others.
pub fn annotations_after_rollback(d: &Deployment, rs: &ReplicaSet) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| skip_copy(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in rs.metadata.annotations.iter().flatten() {
        if !skip_copy(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    annotations
}

// ---- finding ReplicaSets ----

/// Older first: by creation time, then name.
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.clone();
    t(a).cmp(&t(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

pub fn sort_by_creation(sets: &mut [ReplicaSet]) {
    sets.sort_by(by_creation);
}

/// The ReplicaSet with the Deployment's template (the oldest, should
/// several have it).
pub fn find_new(d: &Deployment, sets: &[ReplicaSet]) -> Option<ReplicaSet> {
    let mut sorted = sets.to_vec();
    sort_by_creation(&mut sorted);
    let t = template(d);
    sorted
        .into_iter()
        .find(|rs| equal_ignoring_hash(&rs_template(rs), &t))
}

/// Every ReplicaSet but the new one.
pub fn find_old(d: &Deployment, sets: &[ReplicaSet]) -> Vec<ReplicaSet> {
    let new_uid = find_new(d, sets).and_then(|rs| rs.metadata.uid);
    sets.iter()
        .filter(|rs| new_uid.is_none() || rs.metadata.uid != new_uid)
        .cloned()
        .collect()
}

/// ReplicaSets that have, or ought to have, pods.
pub fn active(sets: &[ReplicaSet]) -> Vec<ReplicaSet> {
    sets.iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .cloned()
        .collect()
}

/// The only active ReplicaSet, or the newest when none is; `None` when
/// several are active (they scale proportionally).
pub fn find_active_or_latest(new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Option<ReplicaSet> {
    if new.is_none() && old.is_empty() {
        return None;
    }
    let mut old = old.to_vec();
    sort_by_creation(&mut old);
    old.reverse();
    let mut all = old.clone();
    all.extend(new.cloned());
    let active = active(&all);
    match active.len() {
        0 => new.cloned().or_else(|| old.first().cloned()),
        1 => active.into_iter().next(),
        _ => None,
    }
}

pub fn total_replicas(sets: &[ReplicaSet]) -> i32 {
    sets.iter().map(rs_replicas).sum()
}

pub fn actual_replicas(sets: &[ReplicaSet]) -> i32 {
    sets.iter().map(|rs| rs_status(rs).replicas).sum()
}

pub fn ready_replicas(sets: &[ReplicaSet]) -> i32 {
    sets.iter()
        .map(|rs| rs_status(rs).ready_replicas.unwrap_or(0))
        .sum()
}

pub fn available_replicas(sets: &[ReplicaSet]) -> i32 {
    sets.iter()
        .map(|rs| rs_status(rs).available_replicas.unwrap_or(0))
        .sum()
}

// ---- scaling ----

/// How many replicas the new ReplicaSet should have now: up to
/// `replicas + maxSurge` pods in all for a rolling update, all at once for
/// Recreate.
pub fn new_rs_new_replicas(d: &Deployment, all: &[ReplicaSet], new: &ReplicaSet) -> i32 {
    if is_recreate(d) {
        return replicas(d);
    }
    let surge = scaled_value(
        d.spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_surge.as_ref())
            .unwrap_or(&IntOrString::Int(0)),
        replicas(d),
        true,
    );
    let current = total_replicas(all);
    let max_total = replicas(d) + surge;
    if current >= max_total {
        return rs_replicas(new);
    }
    let up = (max_total - current).min(replicas(d) - rs_replicas(new));
    rs_replicas(new) + up
}

/// The new ReplicaSet has all replicas, believes it should, and all are available.
pub fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    let Some(desired) = desired_replicas_annotation(rs) else {
        return false;
    };
    rs_replicas(rs) == replicas(d)
        && desired == replicas(d)
        && rs_status(rs).available_replicas.unwrap_or(0) == replicas(d)
}

/// The size change a ReplicaSet gets when the Deployment's size changes by
/// `to_add` mid-rollout, `added` of it given out already: its share by
/// the size it had at the last scale (its max-replicas annotation).
pub fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = replica_set_fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

fn replica_set_fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    if replicas(d) == 0 {
        return -rs_replicas(rs);
    }
    let deployment_replicas = replicas(d) + max_surge(d);
    let annotated = int_annotation(rs, MAX_REPLICAS)
        .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated == 0 {
        return 0;
    }
    let size = f64::from(rs_replicas(rs) * deployment_replicas) / f64::from(annotated);
    // Go's math.Round: halves away from zero.
    size.round() as i32 - rs_replicas(rs)
}

/// The new sizes of `sets` (all active ReplicaSets) when a rolling
/// Deployment is scaled mid-rollout: each gets its proportion, the
/// largest (newest on scale-up, oldest on scale-down) the leftover.
pub fn proportional_sizes(d: &Deployment, sets: &mut [ReplicaSet]) -> (Vec<i32>, &'static str) {
    let current = total_replicas(sets);
    let allowed = if replicas(d) > 0 {
        replicas(d) + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    let operation = match to_add.cmp(&0) {
        // Largest first; on the way up newer before older, down the reverse.
        std::cmp::Ordering::Greater => {
            sets.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| by_creation(b, a))
            });
            "up"
        }
        std::cmp::Ordering::Less => {
            sets.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| by_creation(a, b))
            });
            "down"
        }
        std::cmp::Ordering::Equal => "",
    };
    let mut added = 0;
    let mut sizes: Vec<i32> = sets
        .iter()
        .map(|rs| {
            if to_add == 0 {
                return rs_replicas(rs);
            }
            let p = proportion(rs, d, to_add, added);
            added += p;
            rs_replicas(rs) + p
        })
        .collect();
    if to_add != 0
        && let Some(first) = sizes.first_mut()
    {
        *first = (*first + to_add - added).max(0);
    }
    (sizes, operation)
}

// ---- conditions and status ----

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

pub fn get_condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// Sets a condition unless one of that type with the same status and
/// reason is there; the transition time stays while the status does.
pub fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    let type_ = condition.type_.clone().unwrap_or_default();
    if let Some(current) = get_condition(status, &type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &type_);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
}

pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_.as_deref() != Some(type_));
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// The status the ReplicaSets make (upstream's calculateStatus), with the
/// Available condition.
pub fn calculate_status(
    all: &[ReplicaSet],
    new: Option<&ReplicaSet>,
    d: &Deployment,
    now: &Time,
) -> DeploymentStatus {
    let available = available_replicas(all);
    let unavailable = (total_replicas(all) - available).max(0);
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation.filter(|g| *g != 0),
        replicas: nonzero(actual_replicas(all)),
        updated_replicas: nonzero(new.map(|rs| rs_status(rs).replicas).unwrap_or(0)),
        ready_replicas: nonzero(ready_replicas(all)),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero(unavailable),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    if available >= replicas(d) - max_unavailable(d) {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    status
}

/// All replicas updated and available, none old, and the latest spec seen.
pub fn complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = replicas(d);
    status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// New pods came up, got ready or available, or old ones went.
pub fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

/// The last progress is older than progressDeadlineSeconds (or the
/// deadline was already reported exceeded).
pub fn timed_out(d: &Deployment, new: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(condition) = get_condition(new, PROGRESSING) else {
        return false;
    };
    match condition.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => return false,
        Some(TIMED_OUT) => return true,
        _ => {}
    }
    let Some(from) = condition.last_update_time.as_ref() else {
        return false;
    };
    from.0
        .checked_add(SignedDuration::from_secs(i64::from(deadline)))
        .is_ok_and(|t| t < now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, RollingUpdateDeployment,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn percent(p: &str) -> IntOrString {
        IntOrString::String(p.into())
    }

    #[test]
    fn hashes_look_like_upstreams_and_change_with_the_template_and_collisions() {
        let mut t = PodTemplateSpec::default();
        let h = compute_hash(&t, None);
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        // Decimal digits encode to these ten characters only.
        assert!(h.chars().all(|c| "456789bcdf".contains(c)), "{h}");
        assert_eq!(h, compute_hash(&t, None), "deterministic");
        assert_ne!(h, compute_hash(&t, Some(1)));
        assert_ne!(compute_hash(&t, Some(1)), compute_hash(&t, Some(2)));
        t.metadata = Some(ObjectMeta {
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        });
        assert_ne!(h, compute_hash(&t, None));
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        // FNV-32a of nothing is its offset basis.
        assert_eq!(fnv32a(2_166_136_261, b""), 2_166_136_261);
        assert_eq!(fnv32a(2_166_136_261, b"a"), 0xe40c292c);
    }

    #[test]
    fn templates_compare_without_the_hash_label_and_empty_fields() {
        let a: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {}}]}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "5d4f8b9c7"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        assert!(equal_ignoring_hash(&a, &b));
        let mut c = b.clone();
        c.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
        assert!(!equal_ignoring_hash(&a, &c));
    }

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        assert_eq!(
            resolve_fenceposts(Some(&percent("25%")), Some(&percent("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            resolve_fenceposts(Some(&percent("25%")), Some(&percent("25%")), 2),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&percent("25%")), Some(&percent("25%")), 4),
            (1, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(0)), 3),
            (2, 0)
        );
        // Both zero: one may be unavailable.
        assert_eq!(
            resolve_fenceposts(Some(&percent("0%")), Some(&percent("1%")), 2),
            (0, 1)
        );
        assert_eq!(resolve_fenceposts(None, None, 5), (0, 1));
        assert_eq!(scaled_value(&percent("100%"), 7, false), 7);
        assert_eq!(scaled_value(&percent("30%"), 7, true), 3);
        assert_eq!(scaled_value(&percent("30%"), 7, false), 2);
    }

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            },
            status: None,
        }
    }

    fn rs(name: &str, replicas: i32, created: i64, max_replicas: Option<i32>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                annotations: max_replicas
                    .map(|m| [(MAX_REPLICAS.to_string(), m.to_string())].into()),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn the_new_replica_set_grows_within_max_surge() {
        let d = deployment(10, percent("25%"), percent("25%"));
        let old = rs("old", 10, 1, None);
        let new = rs("new", 0, 2, None);
        assert_eq!(
            new_rs_new_replicas(&d, &[old.clone(), new.clone()], &new),
            3
        );
        let new = rs("new", 3, 2, None);
        let old = rs("old", 8, 1, None);
        assert_eq!(new_rs_new_replicas(&d, &[old, new.clone()], &new), 5);
        assert_eq!(max_unavailable(&d), 2);
        assert_eq!(max_surge(&d), 3);
    }

    /// The (old, new) sizes and the operation of scaling `d` with these
    /// two ReplicaSets, each last sized for `max` pods.
    fn scaled(d: &Deployment, old: i32, new: i32, max: i32) -> ((i32, i32), &'static str) {
        let mut sets = vec![rs("old", old, 1, Some(max)), rs("new", new, 2, Some(max))];
        let (sizes, op) = proportional_sizes(d, &mut sets);
        let by_name: BTreeMap<_, _> = sets
            .iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .zip(sizes)
            .collect();
        ((by_name["old"], by_name["new"]), op)
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // 10 replicas at 25% surge: 13 at most, split 8 old and 5 new;
        // scaled to 20 (25 at most) both grow by their share.
        let mut d = deployment(20, percent("25%"), percent("25%"));
        assert_eq!(scaled(&d, 8, 5, 13), ((15, 10), "up"));
        // And down to 5 (7 at most).
        d.spec.replicas = Some(5);
        assert_eq!(scaled(&d, 15, 10, 25), ((4, 3), "down"));
        // Rounding leftovers go to the first, the largest.
        d.spec.replicas = Some(3);
        assert_eq!(scaled(&d, 2, 1, 3), ((3, 1), "up"));
    }

    #[test]
    fn revisions_and_their_history() {
        let d = deployment(2, percent("25%"), percent("25%"));
        let mut r = rs("a", 2, 1, None);
        assert!(set_new_rs_annotations(
            &d,
            &mut r,
            1,
            false,
            MAX_REVISION_HISTORY_CHARS
        ));
        assert_eq!(annotation(&r, REVISION), Some("1"));
        assert_eq!(annotation(&r, DESIRED_REPLICAS), Some("2"));
        assert_eq!(annotation(&r, MAX_REPLICAS), Some("3"));
        assert!(!set_new_rs_annotations(
            &d,
            &mut r,
            1,
            true,
            MAX_REVISION_HISTORY_CHARS
        ));
        // Rolled back to: its old revisions are remembered.
        assert!(set_new_rs_annotations(
            &d,
            &mut r,
            3,
            true,
            MAX_REVISION_HISTORY_CHARS
        ));
        assert!(set_new_rs_annotations(
            &d,
            &mut r,
            5,
            true,
            MAX_REVISION_HISTORY_CHARS
        ));
        assert_eq!(annotation(&r, REVISION), Some("5"));
        assert_eq!(annotation(&r, REVISION_HISTORY), Some("1,3"));
        let sets = [rs("x", 0, 1, None), r.clone(), {
            let mut s = rs("y", 0, 1, None);
            s.metadata.annotations = Some([(REVISION.to_string(), "4".to_string())].into());
            s
        }];
        assert_eq!(max_revision(&sets), 5);
        assert_eq!(last_revision(&sets), 4);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let t1 = Time(Timestamp::from_second(100).unwrap());
        let t2 = Time(Timestamp::from_second(200).unwrap());
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", NEW_RS_CREATED, "a".into(), &t1),
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", RS_UPDATED, "b".into(), &t2),
        );
        let c = get_condition(&s, PROGRESSING).unwrap();
        assert_eq!(c.reason.as_deref(), Some(RS_UPDATED));
        assert_eq!(c.last_transition_time, Some(t1));
        assert_eq!(c.last_update_time, Some(t2.clone()));
        // Same status and reason: nothing changes.
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", RS_UPDATED, "c".into(), &t2),
        );
        assert_eq!(
            get_condition(&s, PROGRESSING).unwrap().message.as_deref(),
            Some("b")
        );
    }
}
