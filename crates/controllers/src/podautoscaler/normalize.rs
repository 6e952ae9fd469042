//! From the metrics' proposal to the replica count set: stabilization over
//! recent recommendations, then the scaling limits, as upstream's
//! normalizeDesiredReplicas (no `behavior`) and
//! normalizeDesiredReplicasWithBehaviors do. Each returns the count with the
//! AbleToScale and ScalingLimited (reason, message) it leads to.

use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};
use k8s_openapi::jiff::Timestamp;

/// A recommendation or a scale change at a time.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub at: Timestamp,
    pub value: i32,
}

/// What the controller remembers of one HPA between syncs.
#[derive(Debug, Default)]
pub struct History {
    pub recommendations: Vec<Timed>,
    pub scale_ups: Vec<Timed>,
    pub scale_downs: Vec<Timed>,
}

pub type Condition = (&'static str, &'static str);

pub struct Normalized {
    pub replicas: i32,
    pub able_to_scale: Condition,
    /// Whether the limits changed the stabilized count, and why.
    pub limited: (bool, Condition),
}

const READY: Condition = ("ReadyForNewScale", "recommended size matches current size");
const DOWN_STABILIZED: Condition = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const UP_STABILIZED: Condition = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const WITHIN: Condition = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const TOO_FEW: Condition = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);
const TOO_MANY: Condition = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const UP_LIMIT: Condition = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const DOWN_LIMIT: Condition = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);

fn before(now: Timestamp, seconds: i64) -> Timestamp {
    now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(now)
}

/// Records `rec`, reusing the slot of one older than `keep`.
fn record(list: &mut Vec<Timed>, rec: Timed, keep_after: Timestamp) {
    match list.iter_mut().find(|r| r.at < keep_after) {
        Some(slot) => *slot = rec,
        None => list.push(rec),
    }
}

/// Without `behavior`: the highest recommendation of the downscale
/// window, then at most double (or 4) up and min/max.
pub fn legacy(
    h: &mut History,
    now: Timestamp,
    window: Duration,
    current: i32,
    proposed: i32,
    min: i32,
    max: i32,
) -> Normalized {
    let cutoff = before(now, window.as_secs() as i64);
    let stabilized = h
        .recommendations
        .iter()
        .filter(|r| r.at >= cutoff)
        .map(|r| r.value)
        .fold(proposed, i32::max);
    record(
        &mut h.recommendations,
        Timed {
            at: now,
            value: proposed,
        },
        cutoff,
    );
    let able_to_scale = if stabilized != proposed {
        DOWN_STABILIZED
    } else {
        READY
    };
    let up_limit = (2 * current).max(4);
    let (ceiling, over) = if max > up_limit {
        (up_limit, UP_LIMIT)
    } else {
        (max, TOO_MANY)
    };
    let (replicas, why) = if stabilized < min {
        (min, TOO_FEW)
    } else if stabilized > ceiling {
        (ceiling, over)
    } else {
        (stabilized, WITHIN)
    };
    Normalized {
        replicas,
        able_to_scale,
        limited: (replicas != stabilized, why),
    }
}

/// The change of replicas within the last `period` seconds.
fn changed_within(events: &[Timed], now: Timestamp, period: i32) -> i32 {
    let cutoff = before(now, i64::from(period));
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.value)
        .sum()
}

fn policy_limit(
    rules: &HPAScalingRules,
    h: &History,
    now: Timestamp,
    current: i32,
    up: bool,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    // Scaling down, the smallest change is the highest count.
    let pick_max = (select == "Max") == up;
    let mut result = if pick_max { i32::MIN } else { i32::MAX };
    for p in rules.policies.iter().flatten() {
        let start = current - changed_within(&h.scale_ups, now, p.period_seconds)
            + changed_within(&h.scale_downs, now, p.period_seconds);
        let proposed = match (p.type_.as_str(), up) {
            ("Pods", true) => start + p.value,
            ("Pods", false) => start - p.value,
            (_, true) => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
            (_, false) => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = if pick_max {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
}

/// Upstream's defaults for rules a `behavior` leaves out (the scale-down
/// window comes from the controller's flag).
pub fn defaulted(
    behavior: &HorizontalPodAutoscalerBehavior,
    down_window: Duration,
) -> (HPAScalingRules, HPAScalingRules) {
    let policy = |type_: &str, value, period_seconds| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    };
    let fill = |rules: Option<&HPAScalingRules>, window: i32, policies: Vec<HPAScalingPolicy>| {
        let mut r = rules.cloned().unwrap_or_default();
        r.stabilization_window_seconds.get_or_insert(window);
        r.select_policy.get_or_insert_with(|| "Max".into());
        r.policies.get_or_insert(policies);
        r
    };
    (
        fill(
            behavior.scale_up.as_ref(),
            0,
            vec![policy("Pods", 4, 15), policy("Percent", 100, 15)],
        ),
        fill(
            behavior.scale_down.as_ref(),
            down_window.as_secs() as i32,
            vec![policy("Percent", 100, 15)],
        ),
    )
}

/// With `behavior`: stabilized within both windows, then limited by the
/// policies of the direction of the change.
#[allow(clippy::too_many_arguments)]
pub fn with_behavior(
    h: &mut History,
    now: Timestamp,
    up_rules: &HPAScalingRules,
    down_rules: &HPAScalingRules,
    current: i32,
    proposed: i32,
    min: i32,
    max: i32,
) -> Normalized {
    let up_cutoff = before(
        now,
        i64::from(up_rules.stabilization_window_seconds.unwrap_or(0)),
    );
    let down_cutoff = before(
        now,
        i64::from(down_rules.stabilization_window_seconds.unwrap_or(0)),
    );
    let (mut up, mut down) = (proposed, proposed);
    for r in &h.recommendations {
        if r.at > up_cutoff {
            up = up.min(r.value);
        }
        if r.at > down_cutoff {
            down = down.max(r.value);
        }
    }
    let stabilized = current.max(up).min(down);
    record(
        &mut h.recommendations,
        Timed {
            at: now,
            value: proposed,
        },
        up_cutoff.min(down_cutoff),
    );
    let able_to_scale = match (stabilized == proposed, proposed >= current) {
        (true, _) => READY,
        (false, true) => UP_STABILIZED,
        (false, false) => DOWN_STABILIZED,
    };
    let (replicas, why) = if stabilized > current {
        let limit = policy_limit(up_rules, h, now, current, true).max(current);
        let (ceiling, why) = if max > limit {
            (limit, UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        if stabilized > ceiling {
            (ceiling, why)
        } else {
            (stabilized, WITHIN)
        }
    } else if stabilized < current {
        let limit = policy_limit(down_rules, h, now, current, false).min(current);
        let (floor, why) = if min < limit {
            (limit, DOWN_LIMIT)
        } else {
            (min, TOO_FEW)
        };
        if stabilized < floor {
            (floor, why)
        } else {
            (stabilized, WITHIN)
        }
    } else {
        (stabilized, WITHIN)
    };
    Normalized {
        replicas,
        able_to_scale,
        limited: (replicas != stabilized, why),
    }
}

/// Remembers a scale change for the rate policies, dropping what no
/// policy's period still covers.
pub fn record_change(
    h: &mut History,
    behavior: Option<(&HPAScalingRules, &HPAScalingRules)>,
    now: Timestamp,
    from: i32,
    to: i32,
) {
    let Some((up_rules, down_rules)) = behavior else {
        return;
    };
    let (events, rules, change) = if to > from {
        (&mut h.scale_ups, up_rules, to - from)
    } else {
        (&mut h.scale_downs, down_rules, from - to)
    };
    let longest = rules
        .policies
        .iter()
        .flatten()
        .map(|p| p.period_seconds)
        .max()
        .unwrap_or(0);
    let cutoff = before(now, i64::from(longest));
    events.retain(|e| e.at > cutoff);
    events.push(Timed {
        at: now,
        value: change,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn scale_down_waits_out_the_window() {
        let mut h = History::default();
        let w = Duration::from_secs(300);
        let n = legacy(&mut h, t(0), w, 4, 4, 1, 10);
        assert_eq!((n.replicas, n.able_to_scale.0), (4, "ReadyForNewScale"));
        let n = legacy(&mut h, t(15), w, 4, 1, 1, 10);
        assert_eq!((n.replicas, n.able_to_scale.0), (4, "ScaleDownStabilized"));
        let n = legacy(&mut h, t(316), w, 4, 1, 1, 10);
        assert_eq!(n.replicas, 1);
    }

    #[test]
    fn scale_up_is_limited_to_double_or_four() {
        let mut h = History::default();
        let n = legacy(&mut h, t(0), Duration::ZERO, 1, 9, 1, 10);
        assert_eq!((n.replicas, n.limited), (4, (true, UP_LIMIT)));
        let n = legacy(&mut h, t(1), Duration::ZERO, 4, 12, 1, 10);
        assert_eq!((n.replicas, n.limited.1.0), (8, "ScaleUpLimit"));
    }

    #[test]
    fn behavior_policies_limit_the_rate() {
        let behavior = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(0),
                policies: Some(vec![HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 1,
                    period_seconds: 60,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (up, down) = defaulted(&behavior, Duration::from_secs(300));
        assert_eq!(up.policies.as_ref().unwrap().len(), 2);
        let mut h = History::default();
        let n = with_behavior(&mut h, t(0), &up, &down, 5, 1, 1, 10);
        assert_eq!((n.replicas, n.limited.1.0), (4, "ScaleDownLimit"));
        record_change(&mut h, Some((&up, &down)), t(0), 5, 4);
        // Within the period the one pod allowed has gone.
        let n = with_behavior(&mut h, t(30), &up, &down, 4, 1, 1, 10);
        assert_eq!(n.replicas, 4);
        let n = with_behavior(&mut h, t(61), &up, &down, 4, 1, 1, 10);
        assert_eq!(n.replicas, 3);
        // Up: 4 pods or 100% in 15 s, whichever is more.
        let n = with_behavior(&mut h, t(62), &up, &down, 3, 20, 1, 20);
        assert_eq!(n.replicas, 7);
    }
}
