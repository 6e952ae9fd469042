//! The audit log, as upstream's `--audit-policy-file` and
//! `--audit-log-path`: an audit.k8s.io/v1 `Policy` picks each request's
//! level (None, Metadata, Request, RequestResponse) by its first matching
//! rule, and every stage not omitted (RequestReceived, ResponseStarted for
//! watches, ResponseComplete, Panic) is written as one audit.k8s.io/v1
//! `Event` JSON line, to a file rotated as upstream's lumberjack rotates it
//! (`--audit-log-maxsize` MB, `-maxbackup` files, `-maxage` days) or to
//! standard output for `-`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::Identity;
use crate::request::ResourceRequest;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit policy {path}: {reason}")]
    Policy { path: PathBuf, reason: String },
    #[error("audit log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How much of a request is recorded, in upstream's order.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
}

/// What a request is, for matching rules and filling the event.
pub struct RequestAttributes<'a> {
    /// The authenticated user: the policy judges who asked, not whom they
    /// impersonate, as upstream's audit filter runs before impersonation.
    pub user: &'a Identity,
    pub verb: &'a str,
    /// A resource request, or `None` for a path (`path`).
    pub resource: Option<&'a ResourceRequest>,
    pub path: &'a str,
}

fn matches_path(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => p == path,
    })
}

impl Rule {
    fn matches(&self, a: &RequestAttributes<'_>) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !any(&self.users, &a.user.user) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !a.user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !any(&self.verbs, a.verb) {
            return false;
        }
        if !self.non_resource_urls.is_empty() {
            return a.resource.is_none() && matches_path(&self.non_resource_urls, a.path);
        }
        if self.resources.is_empty() && self.namespaces.is_empty() {
            return true;
        }
        let Some(rr) = a.resource else {
            return false;
        };
        // "" in namespaces stands for cluster-scoped requests.
        if !any(&self.namespaces, rr.namespace.as_deref().unwrap_or("")) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let full = match &rr.subresource {
            Some(sub) => format!("{}/{sub}", rr.resource),
            None => rr.resource.clone(),
        };
        self.resources.iter().any(|gr| {
            if gr.group != rr.group {
                return false;
            }
            let resource = gr.resources.is_empty()
                || gr.resources.iter().any(|r| {
                    *r == full
                        || *r == "*"
                        || (rr.subresource.is_some() && *r == format!("{}/*", rr.resource))
                        || rr
                            .subresource
                            .as_ref()
                            .is_some_and(|sub| *r == format!("*/{sub}"))
                });
            let name = gr.resource_names.is_empty()
                || rr
                    .name
                    .as_ref()
                    .is_some_and(|n| gr.resource_names.contains(n));
            resource && name
        })
    }
}

impl Policy {
    pub fn parse(path: &Path, text: &str) -> Result<Self, AuditError> {
        let invalid = |reason: String| AuditError::Policy {
            path: path.to_owned(),
            reason,
        };
        let policy: Policy = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if policy.kind != "Policy" || !policy.api_version.starts_with("audit.k8s.io/") {
            return Err(invalid(format!(
                "want apiVersion audit.k8s.io/v1 and kind Policy, not {:?} {:?}",
                policy.api_version, policy.kind
            )));
        }
        Ok(policy)
    }

    /// The level of the first matching rule (None when none matches) and
    /// the stages not to record.
    pub fn evaluate(&self, a: &RequestAttributes<'_>) -> (Level, Vec<Stage>) {
        match self.rules.iter().find(|r| r.matches(a)) {
            Some(rule) => {
                let mut omit = self.omit_stages.clone();
                omit.extend(&rule.omit_stages);
                (rule.level, omit)
            }
            None => (Level::None, Vec::new()),
        }
    }
}

/// Where events go: upstream's `--audit-log-*` flags.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A file, or `-` for standard output.
    pub path: PathBuf,
    /// Megabytes before the file is rotated; 0 never rotates.
    pub max_size_mb: u64,
    /// Rotated files kept; 0 keeps them all (unless too old).
    pub max_backups: usize,
    /// Days a rotated file is kept; 0 keeps them whatever their age.
    pub max_age_days: u64,
}

struct RotatingFile {
    config: LogConfig,
    file: std::fs::File,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `audit-2026-12-02T06-51-13.123.log` beside `audit.log`, lumberjack's name.
fn backup_name(path: &Path, now: time::OffsetDateTime) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("audit");
    let ext = path
        .extension()
        .and_then(|s| s.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let stamp = format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}.{:03}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    path.with_file_name(format!("{stem}-{stamp}{ext}"))
}

impl RotatingFile {
    fn open(config: LogConfig) -> std::io::Result<Self> {
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        Ok(Self { config, file, size })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let limit = self.config.max_size_mb * 1024 * 1024;
        if limit > 0 && self.size > 0 && self.size + line.len() as u64 > limit {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.config.path;
        // Two rotations within a millisecond would share a name.
        let mut now = time::OffsetDateTime::now_utc();
        while backup_name(path, now).exists() {
            now += time::Duration::milliseconds(1);
        }
        std::fs::rename(path, backup_name(path, now))?;
        self.file = open_append(path)?;
        self.size = 0;
        self.prune()
    }

    /// Removes rotated files past `max_backups` (oldest first) or `max_age_days`.
    fn prune(&self) -> std::io::Result<()> {
        let path = &self.config.path;
        let (Some(dir), Some(stem)) = (
            path.parent(),
            path.file_stem()
                .and_then(|s| s.to_str())
                .map(|s| format!("{s}-")),
        ) else {
            return Ok(());
        };
        let current = path.file_name();
        let mut backups: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| {
                Some(e.file_name().as_os_str()) != current
                    && e.file_name().to_string_lossy().starts_with(&stem)
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        // Newest first: the timestamped names sort as their times do.
        backups.sort_by(|a, b| b.1.cmp(&a.1));
        let max_age = std::time::Duration::from_secs(self.config.max_age_days * 86400);
        for (i, (modified, backup)) in backups.iter().enumerate() {
            let too_many = self.config.max_backups > 0 && i >= self.config.max_backups;
            let too_old =
                self.config.max_age_days > 0 && modified.elapsed().is_ok_and(|age| age > max_age);
            if too_many || too_old {
                std::fs::remove_file(backup)?;
            }
        }
        Ok(())
    }
}

enum Sink {
    Stdout,
    File(Mutex<RotatingFile>),
}

/// The audit backend of a server: its policy and where events go.
pub struct Audit {
    policy: Policy,
    sink: Sink,
}

impl Audit {
    pub fn open(policy_file: &Path, log: LogConfig) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(policy_file).map_err(|e| AuditError::Policy {
            path: policy_file.to_owned(),
            reason: e.to_string(),
        })?;
        let policy = Policy::parse(policy_file, &text)?;
        let sink = if log.path == Path::new("-") {
            Sink::Stdout
        } else {
            let path = log.path.clone();
            Sink::File(Mutex::new(
                RotatingFile::open(log).map_err(|source| AuditError::Log { path, source })?,
            ))
        };
        Ok(Self { policy, sink })
    }

    fn write(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        let result = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(file) => match file.lock() {
                Ok(mut file) => file.write_line(&line),
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the audit log");
        }
    }

    /// Starts the record of one request: `None` when the policy says None.
    pub fn begin(
        self: &std::sync::Arc<Self>,
        attrs: &RequestAttributes<'_>,
        impersonated: &Identity,
        request_uri: &str,
        source_ip: IpAddr,
        user_agent: Option<&str>,
    ) -> Option<Record> {
        let (level, omit) = self.policy.evaluate(attrs);
        if level == Level::None {
            return None;
        }
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.name(),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "requestURI": request_uri,
            "verb": attrs.verb,
            "user": attrs.user.user_info(),
            "sourceIPs": [source_ip.to_string()],
            "requestReceivedTimestamp": micro_time(time::OffsetDateTime::now_utc()),
        });
        if impersonated != attrs.user {
            event["impersonatedUser"] = impersonated.user_info();
        }
        if let Some(agent) = user_agent {
            event["userAgent"] = json!(agent);
        }
        if let Some(rr) = attrs.resource {
            let mut object = json!({"resource": rr.resource, "apiVersion": rr.version});
            if !rr.group.is_empty() {
                object["apiGroup"] = json!(rr.group);
            }
            for (field, value) in [
                ("namespace", &rr.namespace),
                ("name", &rr.name),
                ("subresource", &rr.subresource),
            ] {
                if let Some(v) = value {
                    object[field] = json!(v);
                }
            }
            event["objectRef"] = object;
        }
        Some(Record {
            audit: self.clone(),
            level,
            omit,
            event,
        })
    }
}

/// Upstream's MicroTime: RFC 3339 with microseconds, in UTC.
fn micro_time(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// What the handling of one request adds to its record: authorization's
/// decision and the decoded request body.
#[derive(Default)]
pub struct Recorded {
    annotations: BTreeMap<String, String>,
    request_object: Option<Value>,
    /// The name a create's body gives, for `objectRef.name`, as upstream.
    request_name: Option<String>,
}

tokio::task_local! {
    static RECORDING: RefCell<(Level, Recorded)>;
}

/// Adds an annotation to the audit event of the request being handled.
pub fn annotate(key: &str, value: impl Into<String>) {
    let _ = RECORDING.try_with(|r| {
        r.borrow_mut()
            .1
            .annotations
            .insert(key.to_owned(), value.into());
    });
}

/// Records the request's body (JSON): its name at every level, the
/// object itself when the level keeps it.
pub fn request_object(body: &[u8]) {
    let _ = RECORDING.try_with(|r| {
        let mut r = r.borrow_mut();
        let Ok(object) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        r.1.request_name = object["metadata"]["name"].as_str().map(str::to_owned);
        if r.0 >= Level::Request {
            r.1.request_object = Some(object);
        }
    });
}

/// The record of one request in flight.
pub struct Record {
    audit: std::sync::Arc<Audit>,
    level: Level,
    omit: Vec<Stage>,
    event: Value,
}

impl Record {
    pub fn level(&self) -> Level {
        self.level
    }

    /// Runs the request's handling while it can annotate this record.
    pub async fn run<F: Future>(&self, handling: F) -> (F::Output, Recorded) {
        RECORDING
            .scope(RefCell::new((self.level, Recorded::default())), async {
                let out = handling.await;
                (
                    out,
                    RECORDING.with(|r| std::mem::take(&mut r.borrow_mut().1)),
                )
            })
            .await
    }

    /// Writes the event for `stage` unless the policy omits it.
    pub fn emit(
        &self,
        stage: Stage,
        recorded: Option<&Recorded>,
        status: Option<&Value>,
        response: Option<&Value>,
    ) {
        if self.omit.contains(&stage) {
            return;
        }
        let mut event = self.event.clone();
        event["stage"] = json!(stage.name());
        event["stageTimestamp"] = json!(micro_time(time::OffsetDateTime::now_utc()));
        if let Some(status) = status {
            event["responseStatus"] = status.clone();
        }
        if let Some(recorded) = recorded {
            if !recorded.annotations.is_empty() {
                event["annotations"] = json!(recorded.annotations);
            }
            if let Some(object) = &recorded.request_object {
                event["requestObject"] = object.clone();
            }
            if let (Some(name), Some(object)) = (&recorded.request_name, event.get_mut("objectRef"))
                && object.get("name").is_none()
            {
                object["name"] = json!(name);
            }
        }
        if let (Some(object), Level::RequestResponse) = (response, self.level) {
            event["responseObject"] = object.clone();
        }
        self.audit.write(&event);
    }
}

/// The `responseStatus` of an answer: its code, and for a failure the
/// Status's status, message and reason, as upstream fills it.
pub fn response_status(code: u16, body: Option<&Value>) -> Value {
    let mut status = json!({"metadata": {}, "code": code});
    if let Some(body) = body.filter(|b| b["kind"] == "Status") {
        for field in ["status", "message", "reason"] {
            if let Some(v) = body
                .get(field)
                .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            {
                status[field] = v.clone();
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(Path::new("p.yaml"), text).unwrap()
    }

    fn rr(
        verb: crate::request::Verb,
        ns: Option<&str>,
        resource: &str,
        name: Option<&str>,
    ) -> ResourceRequest {
        ResourceRequest {
            verb,
            group: String::new(),
            version: "v1".into(),
            namespace: ns.map(str::to_owned),
            resource: resource.into(),
            name: name.map(str::to_owned),
            subresource: None,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let p = policy(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-proxy"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["secrets"]
        resourceNames: ["special"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps"]
  - level: Request
    verbs: ["create"]
    namespaces: ["dev"]
    omitStages: [ResponseComplete]
  - level: Metadata
    userGroups: ["system:authenticated"]
"#,
        );
        let jane = Identity {
            user: "jane".into(),
            groups: vec!["system:authenticated".into()],
            ..Identity::default()
        };
        let proxy = Identity {
            user: "system:kube-proxy".into(),
            groups: vec![],
            ..Identity::default()
        };
        use crate::request::Verb;
        let at = |user, verb, resource: Option<&ResourceRequest>, path| {
            p.evaluate(&RequestAttributes {
                user,
                verb,
                resource,
                path,
            })
        };
        let special = rr(Verb::Get, Some("a"), "secrets", Some("special"));
        let other = rr(Verb::Get, Some("a"), "secrets", Some("other"));
        let pods = rr(Verb::Create, Some("dev"), "pods", None);
        let cluster = rr(Verb::List, None, "nodes", None);
        assert_eq!(at(&proxy, "get", Some(&special), "/x").0, Level::None);
        assert_eq!(at(&jane, "get", None, "/healthz/ready").0, Level::None);
        assert_eq!(
            at(&jane, "get", Some(&special), "/x").0,
            Level::RequestResponse
        );
        assert_eq!(at(&jane, "get", Some(&other), "/x").0, Level::Metadata);
        let (level, omit) = at(&jane, "create", Some(&pods), "/x");
        assert_eq!(level, Level::Request);
        assert_eq!(omit, [Stage::RequestReceived, Stage::ResponseComplete]);
        assert_eq!(at(&jane, "list", Some(&cluster), "/x").0, Level::Metadata);
        let nobody = Identity {
            user: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Identity::default()
        };
        assert_eq!(at(&nobody, "list", Some(&cluster), "/x").0, Level::None);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::parse(Path::new("p"), "apiVersion: v1\nkind: ConfigMap\n").is_err());
        assert!(
            Policy::parse(
                Path::new("p"),
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n"
            )
            .is_err()
        );
    }

    #[test]
    fn files_rotate_past_their_size_and_keep_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut file = RotatingFile::open(LogConfig {
            path: path.clone(),
            max_size_mb: 1,
            max_backups: 2,
            max_age_days: 0,
        })
        .unwrap();
        let line = vec![b'x'; 400 * 1024];
        for _ in 0..12 {
            file.write_line(&line).unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n == "audit.log" || (n.starts_with("audit-") && n.ends_with(".log"))),
            "{names:?}"
        );
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024 * 1024);
    }
}
