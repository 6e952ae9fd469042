//! The Pod Security Standards' checks, as upstream's pod-security-admission
//! policy package: each looks at a pod's metadata and spec and, when it
//! forbids them, gives a reason (`host namespaces`) and a detail
//! (`hostNetwork=true`). Checks change with the policy version; a restricted
//! check may replace a baseline one.

use std::collections::BTreeSet;

use serde_json::Value;

/// A policy level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A policy version: `v1.N`, or `latest` (newer than any).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

impl Version {
    pub const LATEST: Version = Version(u32::MAX);

    pub fn parse(s: &str) -> Option<Version> {
        if s == "latest" {
            return Some(Self::LATEST);
        }
        s.strip_prefix("v1.")?.parse().ok().map(Version)
    }

    fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::LATEST {
            f.write_str("latest")
        } else {
            write!(f, "v1.{}", self.0)
        }
    }
}

/// Why a check forbids a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| s.as_ref().to_owned()).collect();
    if items.is_empty() {
        return String::new();
    }
    format!("\"{}\"", items.join("\", \""))
}

fn plural<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 { singular } else { plural }
}

/// `container "a"`, `containers "a", "b"`.
fn containers_named(names: &[String]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Init, regular and ephemeral containers, in upstream's order.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |f| spec[f].as_array().into_iter().flatten())
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_owned()
}

/// Names of containers for which `bad` holds.
fn bad_containers(spec: &Value, mut bad: impl FnMut(&Value) -> bool) -> Vec<String> {
    containers(spec).filter(|c| bad(c)).map(name).collect()
}

/// `pod and containers "a"` for the ones setting a bad value.
fn setters(pod_bad: bool, containers: &[String]) -> String {
    let mut s = Vec::new();
    if pod_bad {
        s.push("pod".to_owned());
    }
    if !containers.is_empty() {
        s.push(containers_named(containers));
    }
    s.join(" and ")
}

fn user_namespaced(spec: &Value) -> bool {
    spec["hostUsers"] == false
}

fn windows(spec: &Value) -> bool {
    spec["os"]["name"] == "windows"
}

fn host_namespaces(spec: &Value) -> Option<Violation> {
    let set: Vec<&str> = [
        ("hostNetwork", "hostNetwork=true"),
        ("hostPID", "hostPID=true"),
        ("hostIPC", "hostIPC=true"),
    ]
    .into_iter()
    .filter(|(f, _)| spec[*f] == true)
    .map(|(_, d)| d)
    .collect();
    if set.is_empty() {
        return None;
    }
    violation("host namespaces", set.join(", "))
}

fn privileged(spec: &Value) -> Option<Violation> {
    let bad = bad_containers(spec, |c| c["securityContext"]["privileged"] == true);
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_named(&bad)
        ),
    )
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added(c: &Value) -> impl Iterator<Item = &str> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn capabilities_baseline(spec: &Value) -> Option<Violation> {
    let mut caps = BTreeSet::new();
    let bad = bad_containers(spec, |c| {
        let extra: Vec<&str> = added(c)
            .filter(|a| !BASELINE_CAPABILITIES.contains(a))
            .collect();
        caps.extend(extra.iter().map(|s| s.to_string()));
        !extra.is_empty()
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&bad),
            join_quote(&caps)
        ),
    )
}

fn host_path_volumes(spec: &Value) -> Option<Violation> {
    let names: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["hostPath"].is_object())
        .map(name)
        .collect();
    if names.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            plural("volume", "volumes", names.len()),
            join_quote(&names)
        ),
    )
}

fn host_ports(spec: &Value) -> Option<Violation> {
    let mut ports = BTreeSet::new();
    let bad = bad_containers(spec, |c| {
        let used: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64().filter(|n| *n != 0))
            .map(|n| n.to_string())
            .collect();
        let any = !used.is_empty();
        ports.extend(used);
        any
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_named(&bad),
            plural("uses", "use", bad.len()),
            plural("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn host_probes(spec: &Value) -> Option<Violation> {
    let mut hosts = BTreeSet::new();
    let mut bad = BTreeSet::new();
    for c in containers(spec) {
        let handlers = [
            &c["livenessProbe"],
            &c["readinessProbe"],
            &c["startupProbe"],
            &c["lifecycle"]["postStart"],
            &c["lifecycle"]["preStop"],
        ];
        for h in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(host) = h[kind]["host"].as_str().filter(|s| !s.is_empty()) {
                    hosts.insert(host.to_owned());
                    bad.insert(name(c));
                }
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    let bad: Vec<String> = bad.into_iter().collect();
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_named(&bad),
            plural("uses", "use", bad.len()),
            plural(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    )
}

fn app_armor(meta: &Value, spec: &Value) -> Option<Violation> {
    let allowed = |t: &Value| t == "RuntimeDefault" || t == "Localhost";
    let mut values = BTreeSet::new();
    let mut pod_bad = false;
    let profile = &spec["securityContext"]["appArmorProfile"];
    if profile.is_object() && !allowed(&profile["type"]) {
        pod_bad = true;
        values.insert(profile["type"].as_str().unwrap_or_default().to_owned());
    }
    let bad = bad_containers(spec, |c| {
        let p = &c["securityContext"]["appArmorProfile"];
        let is_bad = p.is_object() && !allowed(&p["type"]);
        if is_bad {
            values.insert(p["type"].as_str().unwrap_or_default().to_owned());
        }
        is_bad
    });
    let mut list: Vec<String> = values.into_iter().collect();
    let mut annotations: Vec<String> = meta["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            let ok = v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
            (!ok).then(|| format!("{k}={v:?}"))
        })
        .collect();
    annotations.sort();
    let mut who = setters(pod_bad, &bad);
    if !annotations.is_empty() {
        let word = plural("annotation", "annotations", annotations.len());
        who = if who.is_empty() {
            word.to_owned()
        } else {
            format!("{who} and {word}")
        };
        list.extend(annotations);
    }
    if who.is_empty() {
        return None;
    }
    violation(
        plural(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            list.len(),
        ),
        format!(
            "{who} must not set AppArmor profile type to {}",
            join_quote(&list)
        ),
    )
}

fn se_linux(spec: &Value, version: Version) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut valid = |o: &Value| {
        let t = o["type"].as_str().unwrap_or_default();
        let mut ok = true;
        let allowed = matches!(
            t,
            "" | "container_t" | "container_init_t" | "container_kvm_t"
        ) || (t == "container_engine_t" && version.at_least(31));
        if !allowed {
            ok = false;
            types.insert(t.to_owned());
        }
        if o["user"].as_str().is_some_and(|s| !s.is_empty()) {
            ok = false;
            user = true;
        }
        if o["role"].as_str().is_some_and(|s| !s.is_empty()) {
            ok = false;
            role = true;
        }
        ok
    };
    let pod_opts = &spec["securityContext"]["seLinuxOptions"];
    let pod_bad = pod_opts.is_object() && !valid(pod_opts);
    let bad: Vec<String> = containers(spec)
        .filter(|c| {
            let o = &c["securityContext"]["seLinuxOptions"];
            o.is_object() && !valid(o)
        })
        .map(name)
        .collect();
    if !pod_bad && bad.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !types.is_empty() {
        data.push(format!(
            "{} {}",
            plural("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if user {
        data.push("user may not be set".to_owned());
    }
    if role {
        data.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters(pod_bad, &bad),
            data.join("; ")
        ),
    )
}

fn proc_mount(spec: &Value) -> Option<Violation> {
    let mut kinds = BTreeSet::new();
    let bad = bad_containers(spec, |c| match c["securityContext"]["procMount"].as_str() {
        Some(m) if m != "Default" => {
            kinds.insert(m.to_owned());
            true
        }
        _ => false,
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_named(&bad),
            join_quote(&kinds)
        ),
    )
}

fn valid_seccomp(t: &Value) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// Explicitly bad seccomp types: whether the pod sets one, the containers
/// that do, the values.
fn seccomp_bad(spec: &Value) -> (bool, Vec<String>, BTreeSet<String>) {
    let mut values = BTreeSet::new();
    let pod = &spec["securityContext"]["seccompProfile"];
    let pod_bad = pod.is_object() && !valid_seccomp(&pod["type"]);
    if pod_bad {
        values.insert(pod["type"].as_str().unwrap_or_default().to_owned());
    }
    let bad = bad_containers(spec, |c| {
        let p = &c["securityContext"]["seccompProfile"];
        let b = p.is_object() && !valid_seccomp(&p["type"]);
        if b {
            values.insert(p["type"].as_str().unwrap_or_default().to_owned());
        }
        b
    });
    (pod_bad, bad, values)
}

fn seccomp_baseline(spec: &Value) -> Option<Violation> {
    let (pod_bad, bad, values) = seccomp_bad(spec);
    if !pod_bad && bad.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters(pod_bad, &bad),
            join_quote(&values)
        ),
    )
}

fn seccomp_restricted(spec: &Value, version: Version) -> Option<Violation> {
    if version.at_least(25) && windows(spec) {
        return None;
    }
    if let Some(v) = seccomp_baseline(spec) {
        return Some(v);
    }
    let pod_set = valid_seccomp(&spec["securityContext"]["seccompProfile"]["type"]);
    let implicit = bad_containers(spec, |c| {
        !c["securityContext"]["seccompProfile"].is_object() && !pod_set
    });
    if implicit.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_named(&implicit)
        ),
    )
}

fn allowed_sysctls(version: Version) -> Vec<&'static str> {
    let mut allowed = vec![
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    let later: &[(u32, &[&str])] = &[
        (27, &["net.ipv4.ip_local_reserved_ports"]),
        (
            29,
            &[
                "net.ipv4.tcp_keepalive_time",
                "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes",
            ],
        ),
        (32, &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]),
        (
            37,
            &[
                "net.ipv4.tcp_slow_start_after_idle",
                "net.ipv4.tcp_notsent_lowat",
            ],
        ),
    ];
    for (minor, names) in later {
        if version.at_least(*minor) {
            allowed.extend_from_slice(names);
        }
    }
    allowed
}

fn sysctls(spec: &Value, version: Version) -> Option<Violation> {
    let allowed = allowed_sysctls(version);
    let bad: Vec<&str> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !allowed.contains(n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn windows_host_process(spec: &Value) -> Option<Violation> {
    let pod_bad = spec["securityContext"]["windowsOptions"]["hostProcess"] == true;
    let bad = bad_containers(spec, |c| {
        c["securityContext"]["windowsOptions"]["hostProcess"] == true
    });
    if !pod_bad && bad.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters(pod_bad, &bad)
        ),
    )
}

fn allow_privilege_escalation(spec: &Value, version: Version) -> Option<Violation> {
    if version.at_least(25) && windows(spec) {
        return None;
    }
    let bad = bad_containers(spec, |c| {
        c["securityContext"]["allowPrivilegeEscalation"] != false
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_named(&bad)
        ),
    )
}

fn capabilities_restricted(spec: &Value, version: Version) -> Option<Violation> {
    if version.at_least(25) && windows(spec) {
        return None;
    }
    let mut forbidden = BTreeSet::new();
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    for c in containers(spec) {
        let caps = &c["securityContext"]["capabilities"];
        let dropped_all = caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !dropped_all {
            missing_drop.push(name(c));
        }
        let extra: Vec<&str> = added(c).filter(|a| *a != "NET_BIND_SERVICE").collect();
        if !extra.is_empty() {
            adding.push(name(c));
            forbidden.extend(extra.iter().map(|s| s.to_string()));
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_named(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_named(&adding),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

const ALLOWED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

const KNOWN_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn restricted_volumes(spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut kinds = BTreeSet::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let Some(source) = v.as_object() else {
            continue;
        };
        if ALLOWED_VOLUME_SOURCES
            .iter()
            .any(|s| source.get(*s).is_some_and(|x| !x.is_null()))
        {
            continue;
        }
        bad.push(name(v));
        let kind = KNOWN_VOLUME_SOURCES
            .iter()
            .find(|s| source.get(**s).is_some_and(|x| !x.is_null()))
            .copied()
            .unwrap_or("unknown");
        kinds.insert(kind);
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            plural("volume", "volumes", bad.len()),
            join_quote(&bad),
            plural("uses", "use", bad.len()),
            plural(
                "restricted volume type",
                "restricted volume types",
                kinds.len()
            ),
            join_quote(&kinds)
        ),
    )
}

fn run_as_non_root(spec: &Value, version: Version) -> Option<Violation> {
    if version.at_least(35) && user_namespaced(spec) {
        return None;
    }
    let pod = &spec["securityContext"]["runAsNonRoot"];
    let pod_bad = *pod == false;
    let pod_ok = *pod == true;
    let explicit = bad_containers(spec, |c| c["securityContext"]["runAsNonRoot"] == false);
    if pod_bad || !explicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters(pod_bad, &explicit)
            ),
        );
    }
    let implicit = bad_containers(spec, |c| {
        !c["securityContext"]["runAsNonRoot"].is_boolean() && !pod_ok
    });
    if implicit.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_named(&implicit)
        ),
    )
}

fn run_as_user(spec: &Value, version: Version) -> Option<Violation> {
    if version.at_least(35) && user_namespaced(spec) {
        return None;
    }
    let pod_bad = spec["securityContext"]["runAsUser"] == 0;
    let bad = bad_containers(spec, |c| c["securityContext"]["runAsUser"] == 0);
    if !pod_bad && bad.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters(pod_bad, &bad)),
    )
}

/// Every violation of a pod against a level at a version, in upstream's
/// order: baseline checks by ID, then restricted ones by ID, a restricted
/// check replacing the baseline one it overrides.
pub fn evaluate(level: Level, version: Version, meta: &Value, spec: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let restricted = level == Level::Restricted;
    let v = version;
    let mut found = Vec::new();
    let mut run = |applies: bool, check: &dyn Fn() -> Option<Violation>| {
        if applies {
            found.extend(check());
        }
    };
    // Baseline checks by ID: appArmorProfile, capabilities_baseline,
    // hostNamespaces, hostPathVolumes, hostPorts, hostProbesAndHostLifecycle,
    // privileged, procMount, seLinuxOptions, seccompProfile_baseline,
    // sysctls, windowsHostProcess.
    run(true, &|| app_armor(meta, spec));
    run(!(restricted && v.at_least(22)), &|| {
        capabilities_baseline(spec)
    });
    run(true, &|| host_namespaces(spec));
    run(!restricted, &|| host_path_volumes(spec));
    run(true, &|| host_ports(spec));
    run(v.at_least(34), &|| host_probes(spec));
    run(true, &|| privileged(spec));
    run(!(restricted && v.at_least(35)), &|| {
        if v.at_least(35) && user_namespaced(spec) {
            None
        } else {
            proc_mount(spec)
        }
    });
    run(true, &|| se_linux(spec, v));
    run(!restricted && v.at_least(19), &|| seccomp_baseline(spec));
    run(true, &|| sysctls(spec, v));
    run(true, &|| windows_host_process(spec));
    // Restricted checks by ID: allowPrivilegeEscalation,
    // capabilities_restricted, procMount_restricted, restrictedVolumes,
    // runAsNonRoot, runAsUser, seccompProfile_restricted.
    run(restricted && v.at_least(8), &|| {
        allow_privilege_escalation(spec, v)
    });
    run(restricted && v.at_least(22), &|| {
        capabilities_restricted(spec, v)
    });
    run(restricted && v.at_least(35), &|| proc_mount(spec));
    run(restricted, &|| restricted_volumes(spec));
    run(restricted, &|| run_as_non_root(spec, v));
    run(restricted && v.at_least(23), &|| run_as_user(spec, v));
    run(restricted && v.at_least(19), &|| {
        seccomp_restricted(spec, v)
    });
    found
}

/// `reason (detail), reason`, as upstream's aggregate detail.
pub fn detail(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `reason, reason`, as upstream names a pod's violations in namespace warnings.
pub fn reasons(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.reason.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(level: Level, spec: Value) -> String {
        detail(&evaluate(level, Version::LATEST, &json!({}), &spec))
    }

    /// A pod restricted allows: non-root, no escalation, all capabilities
    /// dropped, RuntimeDefault seccomp.
    fn restricted_pod() -> Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "c"}}],
        })
    }

    /// `spec` with the value at a dotted path (`containers.0.name`) replaced.
    fn with(mut spec: Value, path: &str, value: Value) -> Value {
        let mut at = &mut spec;
        for p in path.split('.') {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[p],
            };
        }
        *at = value;
        spec
    }

    #[test]
    fn baseline_checks_name_what_they_forbid() {
        let base = json!({"containers": [{"name": "app"}]});
        let cases = [
            (
                "hostNetwork",
                json!(true),
                "host namespaces (hostNetwork=true)",
            ),
            ("hostPID", json!(true), "host namespaces (hostPID=true)"),
            (
                "containers.0.securityContext.privileged",
                json!(true),
                "privileged (container \"app\" must not set securityContext.privileged=true)",
            ),
            (
                "containers.0.securityContext.capabilities.add",
                json!(["NET_ADMIN", "CHOWN", "SYS_ADMIN"]),
                "non-default capabilities (container \"app\" must not include \"NET_ADMIN\", \"SYS_ADMIN\" in securityContext.capabilities.add)",
            ),
            (
                "volumes",
                json!([{"name": "root", "hostPath": {"path": "/"}}]),
                "hostPath volumes (volume \"root\")",
            ),
            (
                "containers.0.ports",
                json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 9, "hostPort": 443}]),
                "hostPort (container \"app\" uses hostPorts 443, 8080)",
            ),
            (
                "securityContext.appArmorProfile",
                json!({"type": "Unconfined"}),
                "forbidden AppArmor profile (pod must not set AppArmor profile type to \"Unconfined\")",
            ),
            (
                "containers.0.securityContext.seLinuxOptions",
                json!({"type": "spc_t", "user": "root"}),
                "seLinuxOptions (container \"app\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set)",
            ),
            (
                "containers.0.securityContext.procMount",
                json!("Unmasked"),
                "procMount (container \"app\" must not set securityContext.procMount to \"Unmasked\")",
            ),
            (
                "securityContext.seccompProfile",
                json!({"type": "Unconfined"}),
                "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")",
            ),
            (
                "securityContext.sysctls",
                json!([{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
                "forbidden sysctls (kernel.msgmax)",
            ),
            (
                "containers.0.livenessProbe",
                json!({"httpGet": {"host": "10.0.0.1", "port": 80}}),
                "probe or lifecycle host (container \"app\" uses probe or lifecycle host \"10.0.0.1\")",
            ),
        ];
        for (path, value, want) in cases {
            assert_eq!(
                check(Level::Baseline, with(base.clone(), path, value)),
                want,
                "{path}"
            );
        }
        assert_eq!(check(Level::Baseline, base.clone()), "");
        assert_eq!(
            check(Level::Privileged, with(base, "hostNetwork", json!(true))),
            ""
        );
    }

    #[test]
    fn restricted_checks_add_to_baseline() {
        assert_eq!(check(Level::Restricted, restricted_pod()), "");
        let cases = [
            (
                "containers.0.securityContext.allowPrivilegeEscalation",
                json!(true),
                "allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false)",
            ),
            (
                "containers.0.securityContext.capabilities",
                json!({"add": ["NET_RAW"]}),
                "unrestricted capabilities (container \"app\" must set securityContext.capabilities.drop=[\"ALL\"]; container \"app\" must not include \"NET_RAW\" in securityContext.capabilities.add)",
            ),
            (
                "volumes.0",
                json!({"name": "host", "hostPath": {"path": "/"}}),
                "restricted volume types (volume \"host\" uses restricted volume type \"hostPath\")",
            ),
            (
                "securityContext.runAsNonRoot",
                json!(false),
                "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)",
            ),
            (
                "securityContext.runAsNonRoot",
                Value::Null,
                "runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true)",
            ),
            (
                "containers.0.securityContext.runAsUser",
                json!(0),
                "runAsUser=0 (container \"app\" must not set runAsUser=0)",
            ),
            (
                "securityContext.seccompProfile",
                Value::Null,
                "seccompProfile (pod or container \"app\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            ),
        ];
        for (path, value, want) in cases {
            assert_eq!(
                check(Level::Restricted, with(restricted_pod(), path, value)),
                want,
                "{path}"
            );
        }
    }

    #[test]
    fn a_plain_pod_violates_restricted_in_upstreams_order() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "curl-container"}]});
        let v = evaluate(Level::Restricted, Version(29), &json!({}), &spec);
        assert_eq!(
            reasons(&v),
            "host namespaces, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
        );
    }

    #[test]
    fn versions_parse_as_upstream() {
        assert_eq!(Version::parse("v1.29"), Some(Version(29)));
        assert_eq!(Version::parse("latest"), Some(Version::LATEST));
        assert_eq!(Version::parse("1.29"), None);
        assert_eq!(Version(29).to_string(), "v1.29");
        assert!(
            sysctls(
                &json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_rmem"}]}}),
                Version(29)
            )
            .is_some()
        );
        assert!(
            sysctls(
                &json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_rmem"}]}}),
                Version(32)
            )
            .is_none()
        );
    }
}
