//! PodSecurity, as upstream's built-in pod-security-admission: a
//! namespace's `pod-security.kubernetes.io/<mode>[-version]` labels pick a
//! level (privileged, baseline, restricted) and version per mode. `enforce`
//! refuses pods that violate it; `warn` answers with warnings, for pods and
//! for the pod templates of workloads (which are never refused); audit
//! annotations go with the audit log, which kubox does not write yet.
//! Changing a namespace's enforce level warns about its existing pods that
//! would violate it.

mod checks;

use async_trait::async_trait;
use serde_json::{Value, json};

use self::checks::{Level, Version, detail, evaluate, reasons};
use super::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::status::{ApiError, ApiResult, FieldError};

const PREFIX: &str = "pod-security.kubernetes.io/";

/// One mode's level and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LevelVersion {
    level: Level,
    version: Version,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.as_str(), self.version)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Policy {
    enforce: LevelVersion,
    warn: LevelVersion,
}

/// A namespace's policy from its labels, with the errors of labels that do
/// not parse (upstream's PolicyToEvaluate; the default is privileged:latest).
fn policy(labels: &Value) -> (Policy, Vec<FieldError>) {
    let privileged = LevelVersion {
        level: Level::Privileged,
        version: Version::LATEST,
    };
    let mut p = Policy {
        enforce: privileged,
        warn: privileged,
    };
    let mut errs = Vec::new();
    let label = |key: &str| labels[format!("{PREFIX}{key}")].as_str().map(str::to_owned);
    let level = |key: &str, errs: &mut Vec<FieldError>| -> Option<Option<Level>> {
        let value = label(key)?;
        let parsed = Level::parse(&value);
        if parsed.is_none() {
            errs.push(FieldError::invalid(
                format!("metadata.labels[{PREFIX}{key}]"),
                &json!(value),
                "must be one of privileged, baseline, restricted",
            ));
        }
        Some(parsed)
    };
    let version = |key: &str, errs: &mut Vec<FieldError>| -> Option<Version> {
        let value = label(key)?;
        let parsed = Version::parse(&value);
        if parsed.is_none() {
            errs.push(FieldError::invalid(
                format!("metadata.labels[{PREFIX}{key}]"),
                &json!(value),
                "must be \"latest\" or \"v1.x\"",
            ));
        }
        Some(parsed.unwrap_or(Version::LATEST))
    };
    let enforce_level = level("enforce", &mut errs);
    if let Some(l) = enforce_level {
        // An enforce level that does not parse enforces restricted, as upstream.
        p.enforce.level = l.unwrap_or(Level::Restricted);
    }
    if let Some(v) = version("enforce-version", &mut errs) {
        p.enforce.version = v;
    }
    // Audit labels are checked for errors only: there is no audit log yet.
    level("audit", &mut errs);
    version("audit-version", &mut errs);
    let warn_level = level("warn", &mut errs);
    if let Some(l) = warn_level {
        p.warn.level = l.unwrap_or(Level::Privileged);
    }
    let warn_version = version("warn-version", &mut errs);
    if let Some(v) = warn_version {
        p.warn.version = v;
    }
    // An explicit enforce level stricter than warn warns at it too.
    if warn_level.is_none()
        && matches!(enforce_level, Some(Some(_)))
        && p.enforce.level > p.warn.level
    {
        p.warn.level = p.enforce.level;
        if warn_version.is_none() {
            p.warn.version = p.enforce.version;
        }
    }
    (p, errs)
}

/// Resources whose objects carry a pod template, and where it is.
fn template_of<'a>(plural: &str, group: &str, obj: &'a Value) -> Option<&'a Value> {
    let t = match (group, plural) {
        ("", "podtemplates") => &obj["template"],
        ("batch", "cronjobs") => &obj["spec"]["jobTemplate"]["spec"]["template"],
        ("", "replicationcontrollers")
        | ("apps", "replicasets" | "deployments" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => &obj["spec"]["template"],
        _ => return None,
    };
    Some(t)
}

pub struct PodSecurity;

async fn namespace(reads: &Reads<'_>, name: &str) -> ApiResult<Option<Value>> {
    reads
        .get("namespaces", &format!("/registry/namespaces/{name}"))
        .await
}

/// Upstream's warnings for a namespace whose enforce level changed: one per
/// distinct set of violations, naming the first pod and how many others.
fn existing_pod_warnings(ns: &str, enforce: LevelVersion, pods: &[Value]) -> Vec<String> {
    let mut by_reason: Vec<(String, String, usize)> = Vec::new();
    for pod in pods {
        let v = evaluate(
            enforce.level,
            enforce.version,
            &pod["metadata"],
            &pod["spec"],
        );
        if v.is_empty() {
            continue;
        }
        let reason = reasons(&v);
        let pod_name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match by_reason.iter_mut().find(|(r, _, _)| *r == reason) {
            Some((_, first, count)) => {
                if pod_name < *first {
                    *first = pod_name;
                }
                *count += 1;
            }
            None => by_reason.push((reason, pod_name, 1)),
        }
    }
    if by_reason.is_empty() {
        return Vec::new();
    }
    let mut pod_warnings: Vec<String> = by_reason
        .into_iter()
        .map(|(reason, first, count)| match count {
            1 => format!("{first}: {reason}"),
            2 => format!("{first} (and 1 other pod): {reason}"),
            n => format!("{first} (and {} other pods): {reason}", n - 1),
        })
        .collect();
    pod_warnings.sort();
    let mut warnings = vec![format!(
        "existing pods in namespace {ns:?} violate the new PodSecurity enforce level \"{enforce}\""
    )];
    warnings.extend(pod_warnings);
    warnings
}

impl PodSecurity {
    async fn validate_namespace(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        let (new, errs) = policy(&obj["metadata"]["labels"]);
        let invalid = || ApiError::invalid("", "Namespace", attrs.name, errs.clone());
        if attrs.operation == Operation::Create {
            return if errs.is_empty() {
                Ok(())
            } else {
                Err(invalid())
            };
        }
        let Some(old) = namespace(reads, attrs.name).await? else {
            return Ok(());
        };
        let (old, old_errs) = policy(&old["metadata"]["labels"]);
        if !errs.is_empty() && errs != old_errs {
            return Err(invalid());
        }
        let relaxed =
            new.enforce.version == old.enforce.version && new.enforce.level <= old.enforce.level;
        if new.enforce == old.enforce || new.enforce.level == Level::Privileged || relaxed {
            return Ok(());
        }
        let pods = reads
            .list("pods", &format!("/registry/pods/{}/", attrs.name))
            .await?;
        for w in existing_pod_warnings(attrs.name, new.enforce, &pods) {
            crate::warning::add(w);
        }
        Ok(())
    }
}

#[async_trait]
impl AdmissionPlugin for PodSecurity {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    async fn validate(
        &self,
        attrs: &Attributes<'_>,
        obj: &Value,
        reads: &Reads<'_>,
    ) -> ApiResult<()> {
        let rt = attrs.resource;
        if attrs.operation == Operation::Delete || attrs.subresource.is_some() {
            return Ok(());
        }
        if rt.group.is_empty() && rt.plural == "namespaces" {
            return self.validate_namespace(attrs, obj, reads).await;
        }
        let is_pod = rt.group.is_empty() && rt.plural == "pods";
        // A pod's spec barely changes after creation; its updates are not judged.
        let (meta, spec) = if is_pod && attrs.operation == Operation::Create {
            (&obj["metadata"], &obj["spec"])
        } else if let Some(t) = template_of(rt.plural, rt.group, obj) {
            (&t["metadata"], &t["spec"])
        } else {
            return Ok(());
        };
        let Some(ns) = attrs.namespace else {
            return Ok(());
        };
        let Some(namespace) = namespace(reads, ns).await? else {
            return Ok(());
        };
        let (p, _) = policy(&namespace["metadata"]["labels"]);
        if is_pod {
            let v = evaluate(p.enforce.level, p.enforce.version, meta, spec);
            if !v.is_empty() {
                return Err(ApiError::forbidden_on(
                    rt.group,
                    rt.plural,
                    attrs.name,
                    &format!("violates PodSecurity \"{}\": {}", p.enforce, detail(&v)),
                ));
            }
        }
        let v = evaluate(p.warn.level, p.warn.version, meta, spec);
        if !v.is_empty() {
            crate::warning::add(format!(
                "would violate PodSecurity \"{}\": {}",
                p.warn,
                detail(&v)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), json!(v)))
                .collect(),
        )
    }

    #[test]
    fn labels_pick_each_modes_level_and_version() {
        let (p, errs) = policy(&labels(&[
            ("enforce", "baseline"),
            ("enforce-version", "v1.29"),
            ("warn", "restricted"),
            ("warn-version", "v1.29"),
        ]));
        assert!(errs.is_empty());
        assert_eq!(p.enforce.to_string(), "baseline:v1.29");
        assert_eq!(p.warn.to_string(), "restricted:v1.29");
        // Warn follows a stricter enforce level unless set.
        let (p, _) = policy(&labels(&[("enforce", "restricted")]));
        assert_eq!(p.warn.to_string(), "restricted:latest");
        let (p, _) = policy(&json!({}));
        assert_eq!(p.enforce.to_string(), "privileged:latest");
        let (_, errs) = policy(&labels(&[("enforce", "strict"), ("warn-version", "1.2")]));
        assert_eq!(
            errs.iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>(),
            [
                "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted",
                "metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: \"1.2\": must be \"latest\" or \"v1.x\"",
            ]
        );
    }

    #[test]
    fn existing_pods_are_grouped_by_what_they_violate() {
        let pod = |name: &str, spec: Value| json!({"metadata": {"name": name}, "spec": spec});
        let host = json!({"hostNetwork": true, "containers": [{"name": "c"}]});
        let pods = [
            pod("web-b", host.clone()),
            pod("web-a", host.clone()),
            pod("web-c", host),
            pod("ok", json!({"containers": [{"name": "c"}]})),
            pod(
                "priv",
                json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}]}),
            ),
        ];
        let enforce = LevelVersion {
            level: Level::Baseline,
            version: Version::LATEST,
        };
        assert_eq!(
            existing_pod_warnings("dev", enforce, &pods),
            [
                "existing pods in namespace \"dev\" violate the new PodSecurity enforce level \"baseline:latest\"",
                "priv: privileged",
                "web-a (and 2 other pods): host namespaces",
            ]
        );
    }

    #[test]
    fn workloads_carry_their_template_where_upstream_finds_it() {
        let t = json!({"spec": {"containers": []}});
        let deploy = json!({"spec": {"template": t}});
        assert_eq!(template_of("deployments", "apps", &deploy), Some(&t));
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": t}}}});
        assert_eq!(template_of("cronjobs", "batch", &cron), Some(&t));
        assert_eq!(template_of("services", "", &deploy), None);
    }
}
