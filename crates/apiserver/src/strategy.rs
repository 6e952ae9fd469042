//! Per-type behaviour the generic handlers call: upstream's defaulting,
//! validation beyond types, and what counts as a spec change.

use serde_json::{Value, json};

use crate::status::FieldError;
use crate::{jobspec, updates, validation};

pub trait Strategy: Send + Sync {
    /// Sets upstream's defaults (done on create and update, as upstream's
    /// defaulting runs on every decode).
    fn default(&self, _obj: &mut Value) {}

    /// Type-specific checks; metadata is checked generically.
    fn validate(&self, _obj: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Whether a spec change bumps `metadata.generation`.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// Sets fields a new object starts with (e.g. a pod's Pending phase).
    fn prepare_create(&self, _obj: &mut Value) {}

    /// Checks of what an update may change, beyond `validate`.
    fn validate_update(&self, _old: &Value, _new: &Value) -> Vec<FieldError> {
        Vec::new()
    }
}

/// A resource with no behaviour of its own.
pub struct Plain;
impl Strategy for Plain {}

/// Inserts `value` at `key` of an object unless something is already there.
pub(crate) fn or_insert(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        map.entry(key).or_insert(value);
    }
}

fn path_mut<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(obj, |v, k| v.get_mut(*k))
}

pub struct Namespace;
impl Strategy for Namespace {
    fn default(&self, obj: &mut Value) {
        let name = obj["metadata"]["name"].clone();
        if let Some(meta) = obj.get_mut("metadata") {
            or_insert(meta, "labels", json!({}));
            meta["labels"]["kubernetes.io/metadata.name"] = name;
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
    }
}

pub struct Secret;
impl Strategy for Secret {
    fn default(&self, obj: &mut Value) {
        or_insert(obj, "type", json!("Opaque"));
        // stringData is write-only: it is merged into data and never stored.
        if let Some(Value::Object(string_data)) =
            obj.as_object_mut().and_then(|m| m.remove("stringData"))
        {
            use base64::Engine;
            or_insert(obj, "data", json!({}));
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default();
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        updates::secret(old, new)
    }
}

pub struct ConfigMap;
impl Strategy for ConfigMap {
    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        updates::config_map(old, new)
    }
}

pub struct PersistentVolumeClaim;
impl Strategy for PersistentVolumeClaim {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
            or_insert(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        updates::claim(old, new)
    }
}

pub struct PersistentVolume;
impl Strategy for PersistentVolume {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
            or_insert(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            or_insert(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }
}

pub struct StorageClass;
impl Strategy for StorageClass {
    fn default(&self, obj: &mut Value) {
        or_insert(obj, "reclaimPolicy", json!("Delete"));
        or_insert(obj, "volumeBindingMode", json!("Immediate"));
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        updates::storage_class(old, new)
    }
}

/// A rollout strategy field (`strategy`, `updateStrategy`): the type defaults
/// to RollingUpdate, and a RollingUpdate gets each of `rolling` it lacks, as
/// upstream defaults field by field (clients may send an empty strategy).
fn default_update_strategy(spec: &mut Value, field: &str, rolling: Value) {
    or_insert(spec, field, json!({}));
    let strategy = &mut spec[field];
    if strategy
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        strategy["type"] = json!("RollingUpdate");
    }
    if strategy["type"] == "RollingUpdate" {
        or_insert(strategy, "rollingUpdate", json!({}));
        for (k, v) in rolling.as_object().into_iter().flatten() {
            or_insert(&mut strategy["rollingUpdate"], k, v.clone());
        }
    }
}

/// Defaults of a pod spec, wherever it appears (pods and pod templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    or_insert(spec, "restartPolicy", json!("Always"));
    or_insert(spec, "terminationGracePeriodSeconds", json!(30));
    or_insert(spec, "dnsPolicy", json!("ClusterFirst"));
    or_insert(spec, "securityContext", json!({}));
    or_insert(spec, "schedulerName", json!("default-scheduler"));
    or_insert(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            containers.iter_mut().for_each(default_container);
        }
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_owned();
    // Upstream: Always for `:latest` or no tag, else IfNotPresent; a digest counts as a tag.
    let last = image.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':') || image.contains('@');
    let latest = last.ends_with(":latest");
    or_insert(
        c,
        "imagePullPolicy",
        json!(if !tagged || latest {
            "Always"
        } else {
            "IfNotPresent"
        }),
    );
    or_insert(c, "terminationMessagePath", json!("/dev/termination-log"));
    or_insert(c, "terminationMessagePolicy", json!("File"));
    or_insert(c, "resources", json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports {
            or_insert(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            or_insert(p, "timeoutSeconds", json!(1));
            or_insert(p, "periodSeconds", json!(10));
            or_insert(p, "successThreshold", json!(1));
            or_insert(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                or_insert(h, "path", json!("/"));
                or_insert(h, "scheme", json!("HTTP"));
            }
        }
    }
}

fn validate_pod_spec(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            let mut names = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let at = format!("{path}.containers[{i}]");
                match c.get("name").and_then(Value::as_str) {
                    None | Some("") => errs.push(FieldError::required(format!("{at}.name"))),
                    Some(n) => {
                        if let Some(why) = validation::dns_label(n) {
                            errs.push(FieldError::invalid(format!("{at}.name"), &json!(n), why));
                        }
                        if names.contains(&n) {
                            errs.push(FieldError::duplicate(format!("{at}.name"), &json!(n)));
                        }
                        names.push(n);
                    }
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.push(FieldError::required(format!("{at}.image")));
                }
            }
        }
        _ => errs.push(FieldError::required(format!("{path}.containers"))),
    }
    if let Some(policy) = spec.get("restartPolicy") {
        let allowed = ["Always", "OnFailure", "Never"];
        if !policy.as_str().is_some_and(|p| allowed.contains(&p)) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                &allowed,
            ));
        }
    }
    errs
}

/// Upstream's QoS class from the containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        for res in ["cpu", "memory"] {
            let (req, lim) = (requests.get(res), limits.get(res));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            // A request defaults to its limit, so only a limit (equal to any request) is guaranteed.
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A limit without a request asks for what it allows. Upstream does this for
/// pods only, not pod templates, so a template keeps what its author wrote.
fn default_requests_to_limits(spec: &mut Value) {
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else {
            continue;
        };
        for resources in containers.iter_mut().filter_map(|c| c.get_mut("resources")) {
            let Some(Value::Object(limits)) = resources.get("limits").cloned() else {
                continue;
            };
            if !resources["requests"].is_object() {
                resources["requests"] = json!({});
            }
            let requests = &mut resources["requests"];
            for (name, quantity) in limits {
                or_insert(requests, &name, quantity);
            }
        }
    }
}

pub struct Pod;
impl Strategy for Pod {
    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            default_pod_spec(spec);
            default_requests_to_limits(spec);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        validate_pod_spec(&obj["spec"], "spec")
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        updates::pod(old, new)
    }

    fn prepare_create(&self, obj: &mut Value) {
        let qos = qos_class(&obj["spec"]);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        // The scheduler leaves a gated pod alone: the condition says why it waits.
        if obj["spec"]["schedulingGates"]
            .as_array()
            .is_some_and(|g| !g.is_empty())
        {
            obj["status"]["conditions"] = json!([{
                "type": "PodScheduled",
                "status": "False",
                "reason": "SchedulingGated",
                "message": "Scheduling is blocked due to non-empty scheduling gates",
                "lastProbeTime": null,
                "lastTransitionTime": crate::api::now_rfc3339(),
            }]);
        }
    }
}

pub struct Service;
impl Strategy for Service {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        or_insert(spec, "type", json!("ClusterIP"));
        or_insert(spec, "sessionAffinity", json!("None"));
        if spec["type"] != "ExternalName" {
            or_insert(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports {
                or_insert(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                or_insert(p, "targetPort", port);
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let spec = &obj["spec"];
        let allowed = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if let Some(t) = spec.get("type")
            && !t.as_str().is_some_and(|t| allowed.contains(&t))
        {
            errs.push(FieldError::not_supported("spec.type", t, &allowed));
        }
        let headless = spec["clusterIP"] == "None";
        let external = spec["type"] == "ExternalName";
        let ports = spec.get("ports").and_then(Value::as_array);
        if ports.is_none_or(Vec::is_empty) && !headless && !external {
            errs.push(FieldError::required("spec.ports"));
        }
        for (i, p) in ports.into_iter().flatten().enumerate() {
            match p.get("port").and_then(Value::as_i64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => errs.push(FieldError::invalid(
                    format!("spec.ports[{i}].port"),
                    &json!(n),
                    "must be between 1 and 65535, inclusive",
                )),
                None => errs.push(FieldError::required(format!("spec.ports[{i}].port"))),
            }
        }
        errs
    }
}

/// Controllers with a pod template: ReplicaSets, ReplicationControllers,
/// StatefulSets, DaemonSets, Jobs, CronJobs.
pub struct Workload;
impl Strategy for Workload {
    fn default(&self, obj: &mut Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "ReplicationController" {
            default_from_template_labels(obj);
        }
        let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        match kind.as_str() {
            "ReplicaSet" | "ReplicationController" => or_insert(spec, "replicas", json!(1)),
            "StatefulSet" => {
                or_insert(spec, "replicas", json!(1));
                or_insert(spec, "podManagementPolicy", json!("OrderedReady"));
                default_update_strategy(spec, "updateStrategy", json!({"partition": 0}));
                or_insert(spec, "revisionHistoryLimit", json!(10));
                or_insert(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            "DaemonSet" => {
                default_update_strategy(
                    spec,
                    "updateStrategy",
                    json!({"maxUnavailable": 1, "maxSurge": 0}),
                );
                or_insert(spec, "revisionHistoryLimit", json!(10));
            }
            "Job" => {
                jobspec::default(spec);
                or_insert(spec, "manualSelector", json!(false));
            }
            "CronJob" => {
                or_insert(spec, "concurrencyPolicy", json!("Allow"));
                or_insert(spec, "suspend", json!(false));
                or_insert(spec, "successfulJobsHistoryLimit", json!(3));
                or_insert(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(job_spec) = path_mut(spec, &["jobTemplate", "spec"]) {
                    jobspec::default(job_spec);
                }
            }
            _ => {}
        }
        let template = if kind == "CronJob" {
            path_mut(spec, &["jobTemplate", "spec", "template", "spec"])
        } else {
            path_mut(spec, &["template", "spec"])
        };
        if let Some(pod_spec) = template {
            default_pod_spec(pod_spec);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        if obj["kind"] == "CronJob" {
            let mut errs = validate_pod_spec(
                &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                "spec.jobTemplate.spec.template.spec",
            );
            errs.extend(jobspec::validate(
                &obj["spec"]["jobTemplate"]["spec"],
                "spec.jobTemplate.spec",
            ));
            return errs;
        }
        let mut errs = validate_selector(obj);
        errs.extend(validate_pod_spec(
            &obj["spec"]["template"]["spec"],
            "spec.template.spec",
        ));
        if obj["kind"] == "Job" {
            errs.extend(jobspec::validate(&obj["spec"], "spec"));
        }
        errs
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        match new["kind"].as_str() {
            Some("ReplicaSet" | "DaemonSet") => updates::selector(old, new),
            Some("StatefulSet") => updates::statefulset(old, new),
            Some("Job") => updates::job(old, new),
            _ => Vec::new(),
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        if obj["kind"] == "Job" && obj["spec"]["manualSelector"] != true {
            generate_job_selector(obj);
        }
    }
}

/// Labels a Job's pods with its name and UID and selects them by the UID
/// (upstream's generateSelector), unless the user chose a manual selector;
/// labels the user set themselves are kept, and validation rejects a
/// conflict. A Job without labels of its own takes its pods' labels.
fn generate_job_selector(obj: &mut Value) {
    let name = obj["metadata"]["name"].clone();
    let uid = obj["metadata"]["uid"].clone();
    let Some(template) = path_mut(obj, &["spec", "template"]).filter(|t| t.is_object()) else {
        return;
    };
    or_insert(template, "metadata", json!({}));
    or_insert(&mut template["metadata"], "labels", json!({}));
    let labels = &mut template["metadata"]["labels"];
    for key in ["job-name", "batch.kubernetes.io/job-name"] {
        or_insert(labels, key, name.clone());
    }
    for key in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
        or_insert(labels, key, uid.clone());
    }
    let labels = labels.clone();
    let spec = &mut obj["spec"];
    if !spec["selector"].is_object() {
        spec["selector"] = json!({});
    }
    or_insert(&mut spec["selector"], "matchLabels", json!({}));
    or_insert(
        &mut spec["selector"]["matchLabels"],
        "batch.kubernetes.io/controller-uid",
        uid,
    );
    if obj["metadata"]["labels"]
        .as_object()
        .is_none_or(|l| l.is_empty())
    {
        obj["metadata"]["labels"] = labels;
    }
}

/// A ReplicationController without a selector selects its template's
/// labels, and one without labels takes them too (upstream's defaulting).
fn default_from_template_labels(obj: &mut Value) {
    let labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        return;
    }
    let empty = |v: &Value| v.as_object().is_none_or(|m| m.is_empty());
    if empty(&obj["spec"]["selector"]) {
        obj["spec"]["selector"] = labels.clone();
    }
    if empty(&obj["metadata"]["labels"]) {
        obj["metadata"]["labels"] = labels;
    }
}

/// The selector must be present and match the template's labels, as upstream
/// requires for every controller with a label selector.
fn validate_selector(obj: &Value) -> Vec<FieldError> {
    let spec = &obj["spec"];
    let kind = obj["kind"].as_str().unwrap_or_default();
    // Jobs and ReplicationControllers default their selector from the template.
    let optional = matches!(kind, "Job" | "ReplicationController");
    let labels = &spec["template"]["metadata"]["labels"];
    let selector = &spec["selector"];
    if selector.is_null() {
        return if optional {
            Vec::new()
        } else {
            vec![FieldError::required("spec.selector")]
        };
    }
    let matches = if kind == "ReplicationController" {
        crate::selectors::LabelSelector::from_map(selector).matches(labels)
    } else {
        match crate::selectors::LabelSelector::from_value(selector) {
            Ok(s) if s.is_empty() => {
                return vec![FieldError::invalid(
                    "spec.selector",
                    selector,
                    "empty selector is invalid for deployment",
                )];
            }
            Ok(s) => s.matches(labels),
            Err(e) => return vec![FieldError::invalid("spec.selector", selector, e)],
        }
    };
    if matches {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            "spec.template.metadata.labels",
            labels,
            "`selector` does not match template `labels`",
        )]
    }
}

pub struct Deployment;
impl Strategy for Deployment {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        or_insert(spec, "replicas", json!(1));
        default_update_strategy(
            spec,
            "strategy",
            json!({"maxSurge": "25%", "maxUnavailable": "25%"}),
        );
        or_insert(spec, "revisionHistoryLimit", json!(10));
        or_insert(spec, "progressDeadlineSeconds", json!(600));
        if let Some(pod_spec) = path_mut(spec, &["template", "spec"]) {
            default_pod_spec(pod_spec);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = validate_selector(obj);
        errs.extend(validate_pod_spec(
            &obj["spec"]["template"]["spec"],
            "spec.template.spec",
        ));
        if let Some(t) = obj["spec"]["strategy"].get("type") {
            let allowed = ["Recreate", "RollingUpdate"];
            if !t.as_str().is_some_and(|t| allowed.contains(&t)) {
                errs.push(FieldError::not_supported("spec.strategy.type", t, &allowed));
            }
        }
        errs
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        updates::selector(old, new)
    }
}

/// HorizontalPodAutoscalers count their spec's changes in
/// `metadata.generation`, as upstream's HPAGeneration feature (on by
/// default) makes them, so an autoscaler's status can say what it observed.
pub struct Autoscaler;
impl Strategy for Autoscaler {
    fn tracks_generation(&self) -> bool {
        true
    }
}

/// RoleBindings and ClusterRoleBindings: an empty `apiGroup` of the role
/// reference and of User and Group subjects means RBAC's group, as
/// upstream's defaults write it.
pub struct Binding;
impl Strategy for Binding {
    fn default(&self, obj: &mut Value) {
        const GROUP: &str = "rbac.authorization.k8s.io";
        let empty = |v: &Value| v.as_str().is_none_or(str::is_empty);
        if obj["roleRef"].is_object() && empty(&obj["roleRef"]["apiGroup"]) {
            obj["roleRef"]["apiGroup"] = Value::from(GROUP);
        }
        for s in obj["subjects"].as_array_mut().into_iter().flatten() {
            if matches!(s["kind"].as_str(), Some("User" | "Group")) && empty(&s["apiGroup"]) {
                s["apiGroup"] = Value::from(GROUP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_and_claims_start_pending_with_upstreams_defaults() {
        let mut pv = json!({"spec": {"capacity": {"storage": "1Gi"}},
            "status": {"phase": "Bound"}});
        PersistentVolume.default(&mut pv);
        PersistentVolume.prepare_create(&mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pv["status"], json!({"phase": "Pending"}));

        let mut pvc = json!({"spec": {"volumeMode": "Block"}});
        PersistentVolumeClaim.default(&mut pvc);
        PersistentVolumeClaim.prepare_create(&mut pvc);
        assert_eq!(pvc["spec"]["volumeMode"], "Block");
        assert_eq!(pvc["status"], json!({"phase": "Pending"}));
    }

    #[test]
    fn qos_classes_as_upstream() {
        let guaranteed =
            json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable = json!({"containers": [{"resources": {"requests": {"cpu": "100m"}}}]});
        assert_eq!(qos_class(&burstable), "Burstable");
        assert_eq!(qos_class(&json!({"containers": [{}]})), "BestEffort");
        let mixed =
            json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}, {}]});
        assert_eq!(qos_class(&mixed), "Burstable");
    }

    #[test]
    fn a_pods_limits_default_its_missing_requests_but_not_a_templates() {
        let spec = json!({"containers": [{"name": "c", "image": "i", "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m"}}}]});
        let mut pod = json!({"spec": spec.clone()});
        Pod.default(&mut pod);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "100m", "memory": "1Gi"})
        );
        let mut template = spec;
        default_pod_spec(&mut template);
        assert_eq!(
            template["containers"][0]["resources"]["requests"],
            json!({"cpu": "100m"})
        );
    }

    #[test]
    fn image_pull_policy_defaults() {
        for (image, policy) in [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("r:5000/app@sha256:ab", "IfNotPresent"),
            ("localhost:5000/app", "Always"),
        ] {
            let mut c = json!({"image": image});
            default_container(&mut c);
            assert_eq!(c["imagePullPolicy"], policy, "{image}");
        }
    }

    #[test]
    fn empty_strategies_are_defaulted_field_by_field() {
        let mut d = json!({"kind": "Deployment", "spec": {"strategy": {}}});
        Deployment.default(&mut d);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let mut r = json!({"kind": "Deployment", "spec": {"strategy": {"type": "Recreate"}}});
        Deployment.default(&mut r);
        assert_eq!(r["spec"]["strategy"], json!({"type": "Recreate"}));
        let mut ds = json!({"kind": "DaemonSet", "spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}});
        Workload.default(&mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2, "maxSurge": 0}})
        );
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"kind": "Deployment", "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = Deployment.validate(&d);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
        assert_eq!(
            errs[0].message,
            "Invalid value: {\"app\":\"b\"}: `selector` does not match template `labels`"
        );
    }
}
