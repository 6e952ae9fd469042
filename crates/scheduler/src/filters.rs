//! The filters of upstream's default profile, in its order: each says why a
//! node cannot take a pod, in upstream's words.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use crate::node_info::{HostPort, NodeInfo, host_ports, non_zero_requests};
use crate::resources::{Resources, pod_requests};

/// Why a node was rejected, and whether evicting pods (preemption) could change that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Upstream's fixed texts are borrowed: most nodes of a large cluster
    /// are rejected for the same few reasons, once per pod.
    pub reasons: Vec<Cow<'static, str>>,
    pub resolvable: bool,
}

impl Rejection {
    /// A reason evicting pods cannot change (upstream's UnschedulableAndUnresolvable).
    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reasons: vec![reason.into()],
            resolvable: false,
        }
    }

    pub fn resolvable(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reasons: vec![reason.into()],
            resolvable: true,
        }
    }
}

/// What the filters and scores need computed once per pod (upstream's
/// PreFilter and PreScore state), so that no node pays for it again.
pub struct PreFilter<'a> {
    pub requests: Resources,
    /// CPU and memory as scoring counts them.
    pub non_zero: (i64, i64),
    pub host_ports: Vec<HostPort>,
    /// The tolerations that can tolerate PreferNoSchedule taints.
    pub prefer_tolerations: Vec<Toleration>,
    /// The pod's images, normalised.
    pub images: Vec<String>,
    pub affinity: Option<crate::affinity::State<'a>>,
    pub spread: Option<crate::spread::State<'a>>,
    /// The pod's claims; None: it has none (VolumeBinding is skipped).
    pub volumes: Option<crate::volumes::State>,
}

impl PreFilter<'_> {
    /// The per-pod inputs, without the cluster-wide affinity and spread
    /// state (added by the caller when the pod needs them).
    pub fn new(pod: &Pod) -> Self {
        Self {
            requests: pod_requests(pod),
            non_zero: non_zero_requests(pod),
            host_ports: host_ports(pod),
            prefer_tolerations: tolerations(pod)
                .iter()
                .filter(|t| {
                    t.effect
                        .as_deref()
                        .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
                })
                .cloned()
                .collect(),
            images: crate::scores::pod_images(pod),
            affinity: None,
            spread: None,
            volumes: None,
        }
    }
}

pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => {
                t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
            }
        };
        effect_ok && key_ok && value_ok
    })
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

fn node_unschedulable(pod: &Pod, info: &NodeInfo) -> Result<(), Rejection> {
    let cordoned = info
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !cordoned {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if !tolerates(tolerations(pod), &taint) {
        return Err(Rejection::unresolvable("node(s) were unschedulable"));
    }
    Ok(())
}

/// The first of the node's taints of `effects` the pod does not tolerate.
pub(crate) fn untolerated_taint<'a>(
    pod: &Pod,
    info: &'a NodeInfo,
    effects: &[&str],
) -> Option<&'a Taint> {
    info.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tolerates(tolerations(pod), t))
}

fn taint_toleration(pod: &Pod, info: &NodeInfo) -> Result<(), Rejection> {
    let untolerated = untolerated_taint(pod, info, &["NoSchedule", "NoExecute"]);
    match untolerated {
        Some(t) => Err(Rejection::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node matches a term: all its expressions on labels and fields.
pub fn term_matches(term: &NodeSelectorTerm, info: &NodeInfo) -> bool {
    let labels = info.labels();
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(info.name())))
}

pub(crate) fn node_affinity(pod: &Pod, info: &NodeInfo) -> Result<(), Rejection> {
    let spec = pod.spec.as_ref();
    let labels = info.labels();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok =
        required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, info)));
    if selector_ok && affinity_ok {
        Ok(())
    } else {
        Err(Rejection::unresolvable(
            "node(s) didn't match Pod's node affinity/selector",
        ))
    }
}

/// Whether `node` takes `pod` by its node name, node selector and
/// required node affinity, and tolerates the node's taints of `effects`:
/// the predicates the DaemonSet controller asks of every node.
pub fn node_fits(
    pod: &Pod,
    node: std::sync::Arc<k8s_openapi::api::core::v1::Node>,
    effects: &[&str],
) -> bool {
    let info = NodeInfo::new(node);
    let wanted = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if wanted.is_some_and(|n| !n.is_empty() && n != info.name())
        || node_affinity(pod, &info).is_err()
    {
        return false;
    }
    untolerated_taint(pod, &info, effects).is_none()
}

fn node_ports(wanted: &[HostPort], info: &NodeInfo) -> Result<(), Rejection> {
    let conflict = wanted.iter().any(|(proto, ip, port)| {
        info.ports
            .iter()
            .any(|(p, i, n)| p == proto && n == port && (i.is_empty() || ip.is_empty() || i == ip))
    });
    if conflict {
        return Err(Rejection {
            reasons: vec!["node(s) didn't have free ports for the requested pod ports".into()],
            resolvable: true,
        });
    }
    Ok(())
}

fn resources_fit(requests: &Resources, info: &NodeInfo) -> Result<(), Rejection> {
    let alloc = &info.allocatable;
    let mut reasons = Vec::new();
    if info.pods.len() as i64 + 1 > alloc.get("pods").copied().unwrap_or(0) {
        reasons.push("Too many pods".into());
    }
    for (resource, want) in requests {
        if *want <= 0 {
            continue;
        }
        let used = info.requested.get(resource).copied().unwrap_or(0);
        if used + want > alloc.get(resource).copied().unwrap_or(0) {
            reasons.push(format!("Insufficient {resource}").into());
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Rejection {
            reasons,
            resolvable: true,
        })
    }
}

/// Runs every filter in upstream's order; the first to reject decides.
pub fn filter(pod: &Pod, pre: &PreFilter, info: &NodeInfo) -> Result<(), Rejection> {
    node_unschedulable(pod, info)?;
    taint_toleration(pod, info)?;
    node_affinity(pod, info)?;
    node_ports(&pre.host_ports, info)?;
    resources_fit(&pre.requests, info)?;
    if let Some(volumes) = &pre.volumes {
        volumes.filter(info)?;
    }
    if let Some(spread) = &pre.spread {
        spread.filter(info)?;
    }
    if let Some(affinity) = &pre.affinity {
        affinity.filter(info)?;
    }
    Ok(())
}

/// Upstream's FitError text: `0/3 nodes are available: 1 node(s) had
/// untolerated taint {k: v}, 2 Insufficient cpu. preemption: ...`; the
/// preemption part only when preemption found no victims.
pub fn fit_error(total: usize, rejections: &[Rejection], preempting: bool) -> String {
    report(total, None, rejections, preempting)
}

/// The FitError of a pod a PreFilter rejected: its reason once, not per
/// node, and every node's status unresolvable for preemption.
pub fn pre_filter_error(total: usize, reason: &str) -> String {
    let rejections = vec![Rejection::unresolvable(reason.to_owned()); total];
    report(total, Some(reason), &rejections, false)
}

fn report(
    total: usize,
    pre_filter: Option<&str>,
    rejections: &[Rejection],
    preempting: bool,
) -> String {
    let histogram = |items: Vec<String>| {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for i in items {
            *counts.entry(i).or_default() += 1;
        }
        let mut lines: Vec<String> = counts
            .into_iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        lines.sort();
        lines.join(", ")
    };
    let reasons = histogram(
        rejections
            .iter()
            .flat_map(|r| r.reasons.iter().map(|r| r.to_string()))
            .collect(),
    );
    let preemption = histogram(
        rejections
            .iter()
            .map(|r| {
                if r.resolvable {
                    "No preemption victims found for incoming pod"
                } else {
                    "Preemption is not helpful for scheduling"
                }
                .to_owned()
            })
            .collect(),
    );
    let mut message = format!("0/{total} nodes are available:");
    match pre_filter {
        Some(reason) => message.push_str(&format!(" {reason}.")),
        None if !reasons.is_empty() => message.push_str(&format!(" {reasons}.")),
        None => {}
    }
    if !preempting {
        message.push_str(&format!(
            " preemption: 0/{total} nodes are available: {preemption}."
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use std::sync::Arc;

    fn node(v: serde_json::Value) -> NodeInfo {
        let mut base = json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "zone": "3"}},
                              "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}});
        json_patch::merge(&mut base, &v);
        NodeInfo::new(Arc::new(serde_json::from_value::<Node>(base).unwrap()))
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        json_patch::merge(&mut base, &json!({"spec": spec}));
        serde_json::from_value(base).unwrap()
    }

    fn check(p: &Pod, n: &NodeInfo) -> Result<(), Rejection> {
        filter(p, &PreFilter::new(p), n)
    }

    #[test]
    fn taints_need_tolerations() {
        let n = node(json!({"spec": {"taints": [{"key": "role/log", "effect": "NoSchedule"}]}}));
        assert_eq!(
            check(&pod(json!({})), &n).unwrap_err().reasons,
            ["node(s) had untolerated taint {role/log: }"]
        );
        let tolerant = pod(
            json!({"tolerations": [{"key": "role/log", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(check(&tolerant, &n).is_ok());
        let everything = pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(check(&everything, &n).is_ok());
    }

    #[test]
    fn selectors_and_affinity_match_labels() {
        let n = node(json!({}));
        assert!(check(&pod(json!({"nodeSelector": {"disk": "ssd"}})), &n).is_ok());
        assert!(
            !check(&pod(json!({"nodeSelector": {"disk": "hdd"}})), &n)
                .unwrap_err()
                .resolvable
        );
        let gt = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["2"]}]}]}}}});
        assert!(check(&pod(gt), &n).is_ok());
        let by_name = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]}}}});
        assert!(check(&pod(by_name), &n).is_err());
    }

    #[test]
    fn resources_and_ports_must_fit() {
        let mut n = node(json!({}));
        let big = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "8Gi"}}}]}),
        );
        assert_eq!(
            check(&big, &n).unwrap_err().reasons,
            ["Insufficient cpu", "Insufficient memory"]
        );
        let web = pod(
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        assert!(check(&web, &n).is_ok());
        n.add("default/web".into(), Arc::new(web.clone()));
        assert_eq!(
            check(&web, &n).unwrap_err().reasons,
            ["node(s) didn't have free ports for the requested pod ports"]
        );
    }

    #[test]
    fn cordoned_nodes_take_nothing() {
        let n = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            check(&pod(json!({})), &n).unwrap_err().reasons,
            ["node(s) were unschedulable"]
        );
    }

    #[test]
    fn fit_errors_read_as_upstream() {
        let taint = Rejection::unresolvable(
            "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }",
        );
        let cpu = Rejection {
            reasons: vec!["Insufficient cpu".into()],
            resolvable: true,
        };
        assert_eq!(
            fit_error(3, &[taint, cpu.clone(), cpu], false),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn pre_filter_errors_name_their_reason_once() {
        assert_eq!(
            pre_filter_error(3, "pod has unbound immediate PersistentVolumeClaims"),
            "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }
}
