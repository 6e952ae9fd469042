//! One worker per pod bound to the node: it makes the pod's sandbox and
//! volumes, runs init containers in order and then the app containers,
//! restarts them per restartPolicy with upstream's back-off, reports status,
//! and on deletion stops everything within the grace period and cleans up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, EnvVar, Pod, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::attach::{self, ContainerIo};
use crate::console::{ConsoleSocket, Terminal};
use crate::container;
use crate::image::{self, Reference};
use crate::logs::{self, Pipes};
use crate::runtime::{ExitWatch, Exited, Status as RuntimeStatus, Stdio};
use crate::sandbox::{self, HostShared, Sandbox};
use crate::spec::{ContainerConfig, oci_spec};
use crate::startup::Steps;
use crate::volumes::Source;
use crate::{Running, Shared, portforward, probe, prober, status, volumes};
use kubox_client::events::{Type, pod_reference};

const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before ending restarts without delay again.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a worker with nothing to do looks again (ConfigMap and Secret volumes refresh).
const RESYNC: Duration = Duration::from_secs(60);
/// The sandbox file written last: once it exists, the sandbox is complete.
const LAST_ETC_FILE: &str = "resolv.conf";
/// How long a container start waits for the agent's first list of the
/// `kubernetes` Service before going without its variables.
const API_SERVICE_WAIT: Duration = Duration::from_secs(5);

/// What the agent keeps on disk about each container it started, so a
/// restarted agent can adopt it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub init: bool,
    pub attempt: i32,
    pub image: String,
    pub image_id: String,
    pub pid: u32,
    pub started_at: Timestamp,
    pub log_path: PathBuf,
    pub finished_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

impl Record {
    fn dir(&self, shared: &Shared) -> PathBuf {
        shared.dirs.containers.join(&self.id)
    }

    fn save(&self, shared: &Shared) -> std::io::Result<()> {
        let dir = self.dir(shared);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("record.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("records serialise"))?;
        std::fs::rename(tmp, dir.join("record.json"))
    }

    pub fn load_all(shared: &Shared) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(&shared.dirs.containers) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }
}

/// The state of one container of the pod, as the worker tracks it.
#[derive(Default)]
struct Slot {
    current: Option<Record>,
    /// The previous run, for lastState and `kubectl logs --previous`.
    last: Option<Record>,
    restart_count: i32,
    /// Why it is not running, when it is not: (reason, message).
    waiting: Option<(String, String)>,
    backoff: Duration,
    not_before: Option<Instant>,
    /// The startup probe passed (or there is none) for the current run.
    started: bool,
    /// The readiness probe passed for the current run.
    ready: bool,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl Slot {
    /// Starts the next back-off period and returns when it ends: the first
    /// retry is at once, then 10 s doubling up to 5 minutes.
    fn back_off(&mut self) -> Instant {
        let at = Instant::now() + self.backoff;
        self.not_before = Some(at);
        self.backoff = if self.backoff.is_zero() {
            BACKOFF_INITIAL
        } else {
            (self.backoff * 2).min(BACKOFF_MAX)
        };
        at
    }
}

pub struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    pod_rx: watch::Receiver<Option<Pod>>,
    exit_tx: mpsc::UnboundedSender<(String, Exited)>,
    exit_rx: mpsc::UnboundedReceiver<(String, Exited)>,
    verdict_tx: mpsc::UnboundedSender<prober::Verdict>,
    verdict_rx: mpsc::UnboundedReceiver<prober::Verdict>,
    slots: BTreeMap<String, Slot>,
    volumes: HashMap<String, PathBuf>,
    /// When the volumes were last made or refreshed. Their ConfigMaps,
    /// Secrets and tokens are looked up again `RESYNC` later, not at every
    /// wake-up: each status the worker writes comes back as a pod update.
    volumes_refreshed: Option<Instant>,
    sandbox_ready: bool,
    /// The pod's address on the pod network (not for hostNetwork pods).
    pod_ip: Option<String>,
    pod_error: Option<(String, String)>,
    reported: Option<PodStatus>,
    start_time: Time,
    /// The steps of the pod's start since this agent first saw it, until
    /// it reports it running (also `kubelet_pod_start_duration_seconds`);
    /// none for a pod already running when its worker began.
    starting: Option<Steps>,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        pod: Pod,
        pod_rx: watch::Receiver<Option<Pod>>,
        adopted: Vec<Record>,
    ) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(now);
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let mut worker = Self {
            shared,
            pod,
            uid,
            pod_rx,
            exit_tx,
            exit_rx,
            verdict_tx,
            verdict_rx,
            slots: BTreeMap::new(),
            volumes: HashMap::new(),
            volumes_refreshed: None,
            sandbox_ready: false,
            pod_ip: None,
            pod_error: None,
            reported: None,
            start_time,
            starting: (!running).then(Steps::new),
        };
        worker.adopt(adopted);
        worker
    }

    fn event(&self, container: Option<&str>, type_: Type, reason: &str, message: String) {
        let field_path = container.map(|c| {
            let kind = if self.containers(true).iter().any(|i| i.name == c) {
                "initContainers"
            } else {
                "containers"
            };
            format!("spec.{kind}{{{c}}}")
        });
        self.shared
            .events
            .record(pod_reference(&self.pod, field_path), type_, reason, message);
    }

    /// Remembers why the pod cannot go on, telling it once per new reason.
    fn set_pod_error(&mut self, error: Option<(String, String)>) {
        if let Some((reason, message)) = &error
            && self.pod_error.as_ref() != error.as_ref()
        {
            self.event(None, Type::Warning, reason, message.clone());
        }
        self.pod_error = error;
    }

    /// Counts the time since `since` towards a step of the pod's start, while it starts.
    fn step(&mut self, step: &'static str, since: std::time::Instant) {
        if let Some(steps) = self.starting.as_mut() {
            steps.record(step, since.elapsed());
        }
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared.dirs.pods.join(&self.uid)
    }

    fn sandbox(&self) -> Sandbox {
        let spec = self.pod.spec.as_ref();
        Sandbox::new(
            &self.pod_dir(),
            HostShared {
                network: spec.and_then(|s| s.host_network).unwrap_or(false),
                ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
            },
        )
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn namespace(&self) -> String {
        self.pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn containers(&self, init: bool) -> Vec<Container> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        if init {
            spec.init_containers.unwrap_or_default()
        } else {
            spec.containers
        }
    }

    /// Takes over containers a previous agent started: running ones are
    /// watched again, ended ones become the last state.
    fn adopt(&mut self, records: Vec<Record>) {
        let mut records = records;
        records.sort_by_key(|r| r.attempt);
        for r in records {
            let slot = self.slots.entry(r.name.clone()).or_default();
            slot.restart_count = slot.restart_count.max(r.attempt);
            if let Some(previous) = slot.current.replace(r) {
                slot.last = Some(previous);
            }
        }
        self.pod_ip = self
            .shared
            .network
            .pod_ip(&self.uid)
            .map(|ip| ip.to_string());
        // A sandbox an agent was killed in the middle of making (its pod
        // without an address or its /etc files) is finished again.
        self.sandbox_ready = self.sandbox().exists()
            && (self.host_network() || self.pod_ip.is_some())
            && self.pod_dir().join(LAST_ETC_FILE).exists();
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    /// The pod's hostname: `spec.hostname`, else its name.
    fn hostname(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.name())
    }

    /// Makes the sandbox unless it is made already.
    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if !self.sandbox_ready {
            self.create_sandbox().await?;
            self.sandbox_ready = true;
        }
        Ok(())
    }

    /// Makes the namespaces, puts the pod on the pod network, and writes
    /// its /etc files.
    async fn create_sandbox(&mut self) -> Result<(), String> {
        let sandbox = self.sandbox();
        let began = std::time::Instant::now();
        // Its namespaces are made on a thread of their own, joined here: off the runtime's threads.
        let (making, hostname) = (sandbox.clone(), self.hostname());
        tokio::task::spawn_blocking(move || making.create(&hostname))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.step("namespaces", began);
        if let Some(netns) = sandbox.path(sandbox::Kind::Network) {
            let began = std::time::Instant::now();
            let ip = self
                .shared
                .network
                .attach(&self.uid, &netns)
                .await
                .map_err(|e| format!("setting up the pod network: {e}"))?;
            self.pod_ip = Some(ip.to_string());
            self.step("network", began);
        }
        let began = std::time::Instant::now();
        self.write_etc_files().map_err(|e| e.to_string())?;
        self.step("etc_files", began);
        Ok(())
    }

    pub async fn run(mut self) {
        if let Some(steps) = self.starting.as_mut() {
            steps.record("queued", steps.elapsed());
        }
        // Containers adopted while running get their exit watched again.
        let adopted: Vec<Record> = self
            .slots
            .values()
            .filter_map(|s| s.current.clone())
            .collect();
        for r in adopted {
            if r.exit_code.is_some() {
                continue;
            }
            match self.shared.runtime.state(&r.id).await {
                Ok(Some(state)) if state.status == RuntimeStatus::Running => {
                    let once = self
                        .containers(false)
                        .iter()
                        .find(|c| c.name == r.name)
                        .is_some_and(|c| c.stdin_once.unwrap_or(false));
                    let io = ContainerIo::new(once);
                    let dir = r.dir(&self.shared);
                    if let Err(e) = Pipes::in_dir(&dir).copy_to(
                        &r.log_path,
                        &self.shared.active_logs,
                        io.clone(),
                    ) {
                        tracing::warn!("reattaching logs of {}: {e}", r.id);
                    }
                    if dir.join("stdin").exists() {
                        match attach::reopen_stdin(&dir.join("stdin")) {
                            Ok(w) => io.set_stdin_pipe(w).await,
                            Err(e) => tracing::warn!("reopening the stdin of {}: {e}", r.id),
                        }
                    }
                    self.watch_exit(&r.name, r.pid);
                    self.set_running(&r.name, Some((&r, io)));
                    self.start_probing(&r.name, &r.id);
                }
                _ => {
                    let _ = self.exit_tx.send((r.name.clone(), Exited::UNKNOWN));
                }
            }
        }
        loop {
            let removed = self.pod_rx.borrow().is_none();
            if let Some(pod) = self.pod_rx.borrow_and_update().clone() {
                self.pod = pod;
            }
            if removed || self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(removed).await;
                return;
            }
            let wake = self.sync().await;
            self.report().await;
            let resync = self
                .volumes_refreshed
                .map(|at| at + RESYNC)
                .filter(|at| *at > Instant::now())
                .unwrap_or_else(|| Instant::now() + RESYNC);
            let sleep = tokio::time::sleep_until(wake.map_or(resync, |w| w.min(resync)));
            tokio::select! {
                changed = self.pod_rx.changed() => {
                    if changed.is_err() {
                        self.terminate(true).await;
                        return;
                    }
                }
                Some((name, exited)) = self.exit_rx.recv() => self.on_exit(&name, exited).await,
                Some(verdict) = self.verdict_rx.recv() => self.on_verdict(verdict).await,
                _ = sleep => {}
            }
        }
    }

    /// Starts the probes of a container's run, if it has any; until the
    /// startup probe passes it is not started, until readiness passes not ready.
    fn start_probing(&mut self, name: &str, id: &str) {
        let Some(c) = self.containers(false).into_iter().find(|c| c.name == name) else {
            return;
        };
        let slot = self.slots.entry(name.to_owned()).or_default();
        if let Some(old) = slot.prober.take() {
            old.abort();
        }
        slot.started = c.startup_probe.is_none();
        slot.ready = c.readiness_probe.is_none();
        if !prober::Run::needed(&c) {
            return;
        }
        let run = prober::Run {
            shared: self.shared.clone(),
            pod: self.pod.clone(),
            container: c,
            container_id: id.to_owned(),
            netns: self.sandbox().path(sandbox::Kind::Network),
            verdicts: self.verdict_tx.clone(),
        };
        let handle = tokio::spawn(run.probe());
        self.slots.entry(name.to_owned()).or_default().prober = Some(handle);
    }

    async fn on_verdict(&mut self, v: prober::Verdict) {
        let grace = self.grace_period();
        let Some(slot) = self.slots.get_mut(&v.container) else {
            return;
        };
        if slot
            .current
            .as_ref()
            .is_none_or(|r| r.id != v.container_id || r.exit_code.is_some())
        {
            return;
        }
        match (v.kind, v.healthy) {
            (prober::Kind::Startup, true) => slot.started = true,
            (prober::Kind::Readiness, ready) => slot.ready = ready,
            (kind, _) => {
                let which = if kind == prober::Kind::Startup {
                    "startup"
                } else {
                    "liveness"
                };
                let message = format!(
                    "Container {} failed {which} probe, will be restarted",
                    v.container
                );
                self.event(Some(&v.container), Type::Normal, "Killing", message);
                self.stop_container(&v.container_id, grace);
            }
        }
    }

    /// SIGTERM now and SIGKILL once the grace period is over, in the background.
    fn stop_container(&self, id: &str, grace: u64) {
        let (shared, id) = (self.shared.clone(), id.to_owned());
        tokio::spawn(async move {
            let _ = shared.runtime.kill(&id, libc::SIGTERM).await;
            tokio::time::sleep(Duration::from_secs(grace)).await;
            let _ = shared.runtime.kill(&id, libc::SIGKILL).await;
        });
    }

    fn grace_period(&self) -> u64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64
    }

    /// Runs a lifecycle hook against a container's run within `limit`.
    async fn run_hook(
        &self,
        id: &str,
        c: &Container,
        handler: &k8s_openapi::api::core::v1::LifecycleHandler,
        limit: Duration,
    ) -> Result<(), String> {
        let action = probe::Action::from_handler(handler, c)?
            .ok_or_else(|| "the hook names no action".to_owned())?;
        let target = probe::Target {
            container_id: id,
            netns: self.sandbox().path(sandbox::Kind::Network),
            runtime: self.shared.runtime.as_ref(),
        };
        probe::run(&action, &target, limit).await
    }

    fn watch_exit(&self, name: &str, pid: u32) {
        let tx = self.exit_tx.clone();
        let name = name.to_owned();
        match ExitWatch::new(pid) {
            Ok(watch) => {
                tokio::spawn(async move {
                    let exited = watch.wait().await;
                    let _ = tx.send((name, exited));
                });
            }
            // Already gone.
            Err(_) => {
                let _ = tx.send((name, Exited::UNKNOWN));
            }
        }
    }

    fn qos_class(&self) -> String {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| "BestEffort".into())
    }

    /// The pod's cgroup, under its QoS class's as kubelet places it.
    fn cgroup_parent(&self) -> String {
        match self.qos_class().as_str() {
            "Guaranteed" => format!("/kubepods/pod{}", self.uid),
            "Burstable" => format!("/kubepods/burstable/pod{}", self.uid),
            _ => format!("/kubepods/besteffort/pod{}", self.uid),
        }
    }

    /// Tells the agent's endpoint which container runs under a name (or none).
    fn set_running(&self, name: &str, run: Option<(&Record, Arc<ContainerIo>)>) {
        let key = (self.namespace(), self.name(), name.to_owned());
        let mut running = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match run {
            Some((r, io)) => running.insert(
                key,
                Running {
                    id: r.id.clone(),
                    io,
                    pod_cgroup: self.cgroup_parent(),
                    started_at: r.started_at,
                    image: r.image.clone(),
                },
            ),
            None => running.remove(&key),
        };
    }

    /// Tells the agent's endpoint where the pod's network is (or that it is gone).
    fn set_sandbox(&self, ready: bool) {
        let key = (self.namespace(), self.name());
        let mut sandboxes = self
            .shared
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ready {
            sandboxes.insert(
                key,
                portforward::Target {
                    sandbox: self.uid.clone(),
                    netns: self.sandbox().path(sandbox::Kind::Network),
                },
            );
        } else {
            sandboxes.remove(&key);
        }
    }

    async fn on_exit(&mut self, name: &str, exited: Exited) {
        self.set_running(name, None);
        let shared = self.shared.clone();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if let Some(prober) = slot.prober.take() {
            prober.abort();
        }
        let Some(record) = slot.current.as_mut() else {
            return;
        };
        if record.exit_code.is_some() {
            return;
        }
        let oom = oom_killed(&record.id, &shared);
        record.exit_code = Some(exited.code);
        record.finished_at = Some(Timestamp::now());
        record.reason = Some(
            if oom {
                "OOMKilled"
            } else if !exited.known {
                "ContainerStatusUnknown"
            } else if exited.code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_owned(),
        );
        let _ = record.save(&shared);
        let record = record.clone();
        release_container(&shared, &record).await;
        // Back-off: restarts after a short run wait longer each time.
        let ran = record
            .finished_at
            .and_then(|f| f.duration_since(record.started_at).try_into().ok())
            .unwrap_or(Duration::ZERO);
        if ran >= BACKOFF_RESET {
            slot.backoff = Duration::ZERO;
        }
        slot.back_off();
    }

    /// Moves the pod towards what its spec asks; returns when to look again.
    async fn sync(&mut self) -> Option<Instant> {
        let phase = self.pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        // The volumes' API calls (a token, the CA's ConfigMap) go out while
        // the sandbox is made: neither needs the other.
        let fresh = self
            .volumes_refreshed
            .is_some_and(|at| at.elapsed() < RESYNC);
        let (client, pod, pod_dir) = (self.shared.client.clone(), self.pod.clone(), self.pod_dir());
        let volumes = async move {
            if fresh {
                return None;
            }
            let began = std::time::Instant::now();
            let prepared = volumes::prepare(&client, &pod, &pod_dir).await;
            Some((prepared, began.elapsed()))
        };
        let (made, prepared) = tokio::join!(self.ensure_sandbox(), volumes);
        if let Err(e) = made {
            self.set_pod_error(Some((
                "FailedCreatePodSandBox".into(),
                format!("Failed to create pod sandbox: {e}"),
            )));
            return Some(Instant::now() + BACKOFF_INITIAL);
        }
        self.set_sandbox(true);
        if let Some((_, took)) = &prepared
            && let Some(steps) = self.starting.as_mut()
        {
            steps.record("volumes", *took);
        }
        match prepared.map(|(p, _)| p) {
            None => {}
            Some(Ok(v)) => {
                self.volumes = v;
                self.volumes_refreshed = Some(Instant::now());
                self.set_pod_error(None);
            }
            Some(Err(e)) => {
                tracing::info!(pod = %self.name(), "{e}");
                self.set_pod_error(Some(("FailedMount".into(), e.to_string())));
                for c in self.containers(true).iter().chain(&self.containers(false)) {
                    let slot = self.slots.entry(c.name.clone()).or_default();
                    if slot.current.is_none() {
                        slot.waiting = Some(("ContainerCreating".into(), String::new()));
                    }
                }
                return Some(Instant::now() + BACKOFF_INITIAL);
            }
        }
        let policy = self.restart_policy();
        for c in self.containers(true) {
            let slot = self.slots.entry(c.name.clone()).or_default();
            match slot.current.as_ref().map(|r| r.exit_code) {
                Some(Some(0)) => continue,
                Some(None) => return None,
                Some(Some(_)) if policy == "Never" => return None,
                _ => return self.start_when_due(&c, true).await,
            }
        }
        let mut wake: Option<Instant> = None;
        for c in self.containers(false) {
            let slot = self.slots.entry(c.name.clone()).or_default();
            let due = match slot.current.as_ref().map(|r| r.exit_code) {
                None => true,
                Some(None) => false,
                Some(Some(code)) => policy == "Always" || (policy == "OnFailure" && code != 0),
            };
            if due && let Some(at) = self.start_when_due(&c, false).await {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        wake
    }

    async fn start_when_due(&mut self, c: &Container, init: bool) -> Option<Instant> {
        let pod_ref = format!("{}_{}({})", self.name(), self.namespace(), self.uid);
        let slot = self.slots.entry(c.name.clone()).or_default();
        if let Some(at) = slot.not_before
            && at > Instant::now()
        {
            let delay = duration_text((slot.backoff.as_secs() / 2).max(BACKOFF_INITIAL.as_secs()));
            let (reason, message, event) = match slot.waiting.as_ref().map(|w| w.0.as_str()) {
                Some("ErrImagePull" | "ImagePullBackOff") => (
                    "ImagePullBackOff",
                    format!(
                        "Back-off pulling image \"{}\"",
                        c.image.as_deref().unwrap_or_default()
                    ),
                    "Back-off pulling image",
                ),
                None | Some("CrashLoopBackOff") => (
                    "CrashLoopBackOff",
                    format!(
                        "back-off {delay} restarting failed container={} pod={pod_ref}",
                        c.name
                    ),
                    "Back-off restarting failed container",
                ),
                // Other failures keep saying what went wrong while they wait.
                Some(_) => return Some(at),
            };
            let first = slot.waiting.as_ref().map(|w| w.0.as_str()) != Some(reason);
            slot.waiting = Some((reason.to_owned(), message.clone()));
            if first {
                let event_message = format!(
                    "{event} {}",
                    if reason == "ImagePullBackOff" {
                        c.image.clone().unwrap_or_default()
                    } else {
                        String::new()
                    }
                );
                self.event(
                    Some(&c.name),
                    Type::Warning,
                    "BackOff",
                    event_message.trim_end().to_owned(),
                );
            }
            return Some(at);
        }
        match self.start(c, init).await {
            Ok(()) => None,
            Err((reason, message)) => {
                tracing::info!(pod = %pod_ref, container = %c.name, "{reason}: {message}");
                let slot = self.slots.entry(c.name.clone()).or_default();
                let at = slot.back_off();
                let again = slot
                    .waiting
                    .as_ref()
                    .is_some_and(|w| w.0 == reason && w.1 == message);
                slot.waiting = Some((reason.clone(), message.clone()));
                if !again {
                    // As upstream: image pull errors were told when pulling.
                    let told = if reason == "ErrImagePull" {
                        reason.clone()
                    } else {
                        message
                    };
                    self.event(
                        Some(&c.name),
                        Type::Warning,
                        "Failed",
                        format!("Error: {told}"),
                    );
                }
                Some(at)
            }
        }
    }

    /// Writes the pod's hosts, hostname and resolv.conf, the last step of
    /// making its sandbox; `LAST_ETC_FILE` is written last.
    fn write_etc_files(&self) -> std::io::Result<()> {
        let dir = self.pod_dir();
        std::fs::create_dir_all(&dir)?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let hostname = self.hostname();
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        if host_network {
            hosts = std::fs::read_to_string("/etc/hosts").unwrap_or(hosts);
        } else if let Some(ip) = &self.pod_ip {
            // As kubelet: the pod's own name, fully qualified under its subdomain.
            let names = match &spec.subdomain {
                Some(sub) => format!(
                    "{hostname}.{sub}.{}.svc.{}\t{hostname}",
                    self.namespace(),
                    self.shared.dns.domain.trim_end_matches('.'),
                ),
                None => hostname.clone(),
            };
            hosts.push_str(&format!("{ip}\t{names}\n"));
        }
        for alias in spec.host_aliases.clone().unwrap_or_default() {
            hosts.push_str(&format!(
                "\n# Entries added by HostAliases.\n{}\t{}\n",
                alias.ip,
                alias.hostnames.unwrap_or_default().join("\t")
            ));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        let dns = &self.shared.dns;
        let node = crate::dns::host(&dns.host_resolv_conf);
        let resolv = crate::dns::resolv_conf(dns, &node, &self.namespace(), &spec);
        // Renamed into place, as its presence says the sandbox is complete.
        let tmp = dir.join(format!("{LAST_ETC_FILE}.tmp"));
        std::fs::write(&tmp, resolv.render())?;
        std::fs::rename(tmp, dir.join(LAST_ETC_FILE))
    }

    /// The image a container runs, pulled as its imagePullPolicy asks.
    async fn ensure_image(
        &self,
        c: &Container,
        reference: &Reference,
    ) -> Result<image::ImageRecord, (String, String)> {
        let shown = c.image.clone().unwrap_or_default();
        let present = self.shared.images.resolve(reference);
        let latest = reference.digest.is_none() && reference.tag.as_deref() == Some("latest");
        let policy = c.image_pull_policy.as_deref().unwrap_or(if latest {
            "Always"
        } else {
            "IfNotPresent"
        });
        match (policy, present.clone()) {
            ("Never", None) => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{shown}\" is not present with pull policy of Never"),
                ));
            }
            ("Never" | "IfNotPresent", Some(found)) => {
                let message = format!("Container image \"{shown}\" already present on machine");
                self.event(Some(&c.name), Type::Normal, "Pulled", message);
                return Ok(found);
            }
            _ => {}
        }
        self.event(
            Some(&c.name),
            Type::Normal,
            "Pulling",
            format!("Pulling image \"{shown}\""),
        );
        let mut docker_configs = Vec::new();
        let ns = self.namespace();
        for secret in self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
        {
            if let Ok(Some(data)) =
                volumes::key_values(&self.shared.client, &ns, Source::Secret, &secret.name).await
                && let Some(config) = data.get(".dockerconfigjson")
            {
                docker_configs.push(config.clone());
            }
        }
        let auth = image::auth_for(&reference.registry, &docker_configs);
        let started = std::time::Instant::now();
        match image::pull(
            &self.shared.images,
            reference,
            &auth,
            &self.shared.insecure_registries,
        )
        .await
        {
            Ok(pulled) => {
                let message = format!(
                    "Successfully pulled image \"{shown}\" in {:.3}s. Image size: {} bytes.",
                    started.elapsed().as_secs_f64(),
                    pulled.size
                );
                self.event(Some(&c.name), Type::Normal, "Pulled", message);
                Ok(pulled)
            }
            // Off the network, an image already on the node (imported for an
            // air-gapped node) still runs, with a warning.
            Err(image::PullError::Unreachable(e)) if present.is_some() => {
                let message = format!(
                    "Failed to pull image \"{shown}\": {e}; running the copy present on the node"
                );
                self.event(Some(&c.name), Type::Warning, "Failed", message);
                Ok(present.expect("checked above"))
            }
            Err(e) => {
                self.event(
                    Some(&c.name),
                    Type::Warning,
                    "Failed",
                    format!("Failed to pull image \"{shown}\": {e}"),
                );
                Err((
                    "ErrImagePull".into(),
                    format!("failed to pull and unpack image \"{reference}\": {e}"),
                ))
            }
        }
    }

    /// Starts one container; on failure, the waiting reason and message.
    async fn start(&mut self, c: &Container, init: bool) -> Result<(), (String, String)> {
        let shared = self.shared.clone();
        let reference = Reference::parse(c.image.as_deref().unwrap_or_default())
            .map_err(|e| ("InvalidImageName".to_owned(), e.to_string()))?;
        let began = std::time::Instant::now();
        let image = self.ensure_image(c, &reference).await?;
        let config_err = |e: String| ("CreateContainerConfigError".to_owned(), e);
        let image_config = shared
            .images
            .config(&image)
            .map_err(|e| config_err(e.to_string()))?;
        let layers = shared
            .images
            .layer_dirs(&image)
            .map_err(|e| config_err(e.to_string()))?;
        self.step("image", began);

        let began = std::time::Instant::now();
        let mut env = self.env(c, &image_config).await.map_err(config_err)?;
        self.step("env", began);
        if c.tty.unwrap_or(false) {
            // As containerd gives a container with a terminal.
            env = container::merge_env(env.into_iter().chain([("TERM".into(), "xterm".into())]));
        }
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        let args = container::command_line(c, &image_config, &env_map);
        if args.is_empty() {
            return Err(config_err("no command specified".into()));
        }

        let slot = self.slots.entry(c.name.clone()).or_default();
        let attempt = match &slot.current {
            Some(_) => slot.restart_count + 1,
            None => 0,
        };
        let id =
            uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
        let dir = shared.dirs.containers.join(&id);
        let rootfs = dir.join("rootfs");
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ("CreateContainerError".to_owned(), format!("{what}: {e}"))
        };
        let began = std::time::Instant::now();
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| fail("creating the container directory", &e))?;
        mount_rootfs(&dir, &layers).map_err(|e| fail("mounting the root filesystem", &e))?;
        let lookup =
            |file: &str| std::fs::read_to_string(rootfs.join(file.trim_start_matches('/'))).ok();
        let (image_uid, image_gid) =
            container::image_user(&image_config, lookup).map_err(config_err)?;
        self.step("rootfs", began);

        let sc = c.security_context.clone().unwrap_or_default();
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let uid = sc
            .run_as_user
            .or(pod_sc.run_as_user)
            .map(|u| u as u32)
            .unwrap_or(image_uid);
        let gid = sc
            .run_as_group
            .or(pod_sc.run_as_group)
            .map(|g| g as u32)
            .or(image_gid)
            .unwrap_or(0);
        if sc
            .run_as_non_root
            .or(pod_sc.run_as_non_root)
            .unwrap_or(false)
            && uid == 0
        {
            unmount_rootfs(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(config_err(
                "container has runAsNonRoot and image will run as root".into(),
            ));
        }

        let mut binds: Vec<(PathBuf, String, bool)> = Vec::new();
        let pod_dir = self.pod_dir();
        binds.push((pod_dir.join("hosts"), "/etc/hosts".into(), false));
        binds.push((pod_dir.join("hostname"), "/etc/hostname".into(), false));
        binds.push((
            pod_dir.join("resolv.conf"),
            "/etc/resolv.conf".into(),
            false,
        ));
        let termination_log = dir.join("termination-log");
        std::fs::write(&termination_log, b"")
            .map_err(|e| fail("creating the termination log", &e))?;
        let term_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        binds.push((termination_log, term_path, false));
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = self.volumes.get(&m.name) else {
                return Err(config_err(format!(
                    "cannot find volume \"{}\" to mount into container \"{}\"",
                    m.name, c.name
                )));
            };
            let source = match &m.sub_path {
                Some(sub) if !sub.is_empty() => {
                    let p = host.join(sub);
                    let _ = std::fs::create_dir_all(&p);
                    p
                }
                _ => host.clone(),
            };
            binds.push((source, m.mount_path.clone(), m.read_only.unwrap_or(false)));
        }

        let resources = c.resources.clone().unwrap_or_default();
        let quantity =
            |map: &Option<
                BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >,
             key: &str| { map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone()) };
        let memory_limit = quantity(&resources.limits, "memory")
            .and_then(|q| kubox_client::quantity::parse(&q))
            .map(|v| v as i64);
        let cpu_limit =
            quantity(&resources.limits, "cpu").and_then(|q| kubox_client::quantity::parse(&q));
        let cpu_request = quantity(&resources.requests, "cpu")
            .and_then(|q| kubox_client::quantity::parse(&q))
            .or(cpu_limit);
        let qos = self.qos_class();
        let cgroup_parent = self.cgroup_parent();
        let config = ContainerConfig {
            terminal: c.tty.unwrap_or(false),
            args,
            env,
            cwd: c
                .working_dir
                .clone()
                .unwrap_or_else(|| container::image_working_dir(&image_config)),
            uid,
            gid,
            rootfs: rootfs.clone(),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            binds,
            cgroups_path: format!("{cgroup_parent}/{id}"),
            memory_limit,
            // Upstream's milliCPUToShares: 1024 shares per CPU, at least 2.
            cpu_shares: Some(
                cpu_request
                    .map(|c| ((c * 1024.0) as u64).max(2))
                    .unwrap_or(2),
            ),
            cpu_quota: cpu_limit.map(|c| ((c * 100_000.0) as i64).max(1000)),
            privileged: sc.privileged.unwrap_or(false),
            add_capabilities: sc
                .capabilities
                .as_ref()
                .and_then(|c| c.add.clone())
                .unwrap_or_default(),
            drop_capabilities: sc
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.clone())
                .unwrap_or_default(),
            allow_privilege_escalation: sc.allow_privilege_escalation.unwrap_or(true),
            oom_score_adj: match qos.as_str() {
                // Upstream gives Guaranteed pods -997; a negative score needs
                // CAP_SYS_RESOURCE, which is not always there, so they keep 0.
                "Guaranteed" => None,
                "BestEffort" => Some(1000),
                _ => Some(burstable_oom_score(memory_limit)),
            },
        };
        let began = std::time::Instant::now();
        let spec = oci_spec(&config, &self.sandbox());
        let fail_cleanup = |what: &str, e: &dyn std::fmt::Display| {
            unmount_rootfs(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            fail(what, e)
        };
        if let Err(e) = spec.save(dir.join("config.json")) {
            return Err(fail_cleanup("writing config.json", &e));
        }
        let pipes = Pipes::in_dir(&dir);
        let (stdout, stderr) = match pipes.create().and_then(|_| pipes.writers()) {
            Ok(w) => w,
            Err(e) => return Err(fail_cleanup("creating the log pipes", &e)),
        };
        let log_path = shared
            .dirs
            .logs
            .join(format!("{}_{}_{}", self.namespace(), self.name(), self.uid))
            .join(&c.name)
            .join(format!("{attempt}.log"));
        let tty = c.tty.unwrap_or(false);
        let io = ContainerIo::new(c.stdin_once.unwrap_or(false));
        let mut stdin = None;
        if c.stdin.unwrap_or(false) && !tty {
            match attach::stdin_pipe(&dir.join("stdin"), c.stdin_once.unwrap_or(false)) {
                Ok((theirs, ours)) => {
                    stdin = Some(theirs);
                    io.set_stdin_pipe(ours).await;
                }
                Err(e) => return Err(fail_cleanup("creating the stdin pipe", &e)),
            }
        }
        // A terminal's master end comes over a socket; its path must be short.
        let console = if tty {
            let path = std::env::temp_dir().join(format!("kubox-tty-{}.sock", &id[..16]));
            match ConsoleSocket::bind(&path) {
                Ok(socket) => Some(socket),
                Err(e) => return Err(fail_cleanup("creating the console socket", &e)),
            }
        } else {
            if let Err(e) = pipes.copy_to(&log_path, &shared.active_logs, io.clone()) {
                return Err(fail_cleanup("opening the log file", &e));
            }
            None
        };
        let stdio = Stdio {
            stdin,
            stdout,
            stderr,
            console_socket: console.as_ref().map(|s| s.path().to_owned()),
        };
        self.step("bundle", began);
        let began = std::time::Instant::now();
        let pid = match shared.runtime.create(&id, &dir, stdio).await {
            Ok(pid) => pid,
            Err(e) => {
                let _ = shared.runtime.delete(&id).await;
                return Err(fail_cleanup("creating the container", &e));
            }
        };
        self.step("create", began);
        if let Some(socket) = console {
            let received = tokio::time::timeout(Duration::from_secs(10), socket.receive())
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the runtime sent no terminal")));
            let terminal = match received.and_then(Terminal::new) {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    let _ = shared.runtime.delete(&id).await;
                    return Err(fail_cleanup("taking the terminal", &e));
                }
            };
            io.set_terminal(terminal.clone()).await;
            if let Err(e) =
                logs::copy_terminal(terminal, &log_path, &shared.active_logs, io.clone())
            {
                let _ = shared.runtime.delete(&id).await;
                return Err(fail_cleanup("opening the log file", &e));
            }
        }
        let record = Record {
            id: id.clone(),
            pod_uid: self.uid.clone(),
            name: c.name.clone(),
            init,
            attempt,
            image: reference.to_string(),
            image_id: image
                .repo_digests
                .iter()
                .find(|d| d.starts_with(&format!("{}@", reference.name())))
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            pid,
            started_at: Timestamp::now(),
            log_path,
            finished_at: None,
            exit_code: None,
            reason: None,
        };
        if let Err(e) = record.save(&shared) {
            let _ = shared.runtime.delete(&id).await;
            return Err(fail_cleanup("saving the container record", &e));
        }
        self.watch_exit(&c.name, pid);
        let began = std::time::Instant::now();
        if let Err(e) = shared.runtime.start(&id).await {
            let _ = shared.runtime.delete(&id).await;
            return Err(fail_cleanup("starting the container", &e));
        }
        self.step("start", began);
        let slot = self.slots.entry(c.name.clone()).or_default();
        if let Some(previous) = slot.current.replace(record) {
            if let Some(older) = slot.last.replace(previous) {
                remove_container_files(&shared, &older);
            }
            slot.restart_count = attempt;
        }
        slot.waiting = None;
        let started = slot
            .current
            .clone()
            .expect("the container was just recorded");
        self.set_running(&c.name, Some((&started, io)));
        if !init {
            self.start_probing(&c.name, &id);
        }
        self.event(
            Some(&c.name),
            Type::Normal,
            "Created",
            format!("Created container: {}", c.name),
        );
        self.event(
            Some(&c.name),
            Type::Normal,
            "Started",
            format!("Started container {}", c.name),
        );
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let limit = Duration::from_secs(self.grace_period().max(1));
            if let Err(e) = self.run_hook(&id, c, hook, limit).await {
                let message = format!("PostStartHook failed: {e}");
                self.event(Some(&c.name), Type::Warning, "FailedPostStartHook", message);
                self.stop_container(&id, self.grace_period());
            }
        }
        Ok(())
    }

    /// The variables of the `kubernetes` Service, which the kubelet gives
    /// every container whatever its `enableServiceLinks`, so in-cluster
    /// clients find the API server.
    async fn api_server_env(&self) -> Vec<(String, String)> {
        let store = &self.shared.api_service;
        // Only an agent that has not listed Services yet waits, and not for long.
        let listed = tokio::time::timeout(API_SERVICE_WAIT, store.wait_until_ready()).await;
        if !matches!(listed, Ok(Ok(()))) {
            return Vec::new();
        }
        let Some(service) = store.get(&ObjectRef::new("kubernetes").within("default")) else {
            return Vec::new();
        };
        let spec = service.spec.clone().unwrap_or_default();
        let (Some(ip), Some(port)) = (
            spec.cluster_ip.filter(|ip| ip != "None"),
            spec.ports.and_then(|p| p.into_iter().next()),
        ) else {
            return Vec::new();
        };
        let number = port.port.to_string();
        let proto = port.protocol.unwrap_or_else(|| "TCP".into());
        let url = format!("{}://{ip}:{number}", proto.to_lowercase());
        let prefix = format!("KUBERNETES_PORT_{number}_{proto}");
        let mut vars = vec![
            ("KUBERNETES_SERVICE_HOST".to_owned(), ip.clone()),
            ("KUBERNETES_SERVICE_PORT".to_owned(), number.clone()),
            ("KUBERNETES_PORT".to_owned(), url.clone()),
            (prefix.clone(), url),
            (format!("{prefix}_PROTO"), proto.to_lowercase()),
            (format!("{prefix}_PORT"), number.clone()),
            (format!("{prefix}_ADDR"), ip),
        ];
        if let Some(name) = port.name.filter(|n| !n.is_empty()) {
            let name = name.to_uppercase().replace('-', "_");
            vars.push((format!("KUBERNETES_SERVICE_PORT_{name}"), number));
        }
        vars
    }

    /// The container's environment: the image's, then `envFrom`, then `env`,
    /// with `$(VAR)` expanded against what came before.
    async fn env(
        &self,
        c: &Container,
        image: &oci_spec::image::ImageConfiguration,
    ) -> Result<Vec<(String, String)>, String> {
        let mut pairs = container::image_env(image);
        pairs.push(("HOSTNAME".into(), self.hostname()));
        pairs.extend(self.api_server_env().await);
        let ns = self.namespace();
        let client = &self.shared.client;
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let refs = [
                from.config_map_ref
                    .as_ref()
                    .map(|r| (Source::ConfigMap, &r.name, r.optional)),
                from.secret_ref
                    .as_ref()
                    .map(|r| (Source::Secret, &r.name, r.optional)),
            ];
            for (source, name, optional) in refs.into_iter().flatten() {
                match volumes::key_values(client, &ns, source, name).await {
                    Ok(Some(data)) => pairs.extend(data.into_iter().map(|(k, v)| {
                        (
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })),
                    Ok(None) if optional.unwrap_or(false) => {}
                    Ok(None) => return Err(source.not_found(name)),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        for var in c.env.iter().flatten() {
            let known: HashMap<String, String> =
                container::merge_env(pairs.clone()).into_iter().collect();
            if let Some(value) = self.env_value(var, c, &known).await? {
                pairs.push((var.name.clone(), value));
            }
        }
        Ok(container::merge_env(pairs))
    }

    async fn env_value(
        &self,
        var: &EnvVar,
        c: &Container,
        known: &HashMap<String, String>,
    ) -> Result<Option<String>, String> {
        let Some(from) = &var.value_from else {
            return Ok(Some(container::expand(
                var.value.as_deref().unwrap_or_default(),
                known,
            )));
        };
        let ns = self.namespace();
        let client = &self.shared.client;
        if let Some(f) = &from.field_ref {
            let spec = self.pod.spec.clone().unwrap_or_default();
            let status = self.pod.status.clone().unwrap_or_default();
            let path = f.field_path.as_str();
            let value = match path {
                "spec.nodeName" => spec.node_name.clone(),
                "spec.serviceAccountName" => spec.service_account_name.clone(),
                "status.hostIP" => Some(self.shared.node_ip.clone()),
                "status.hostIPs" => Some(self.shared.node_ip.clone()),
                "status.podIP" | "status.podIPs" => status.pod_ip.clone().or_else(|| self.pod_ip()),
                _ => crate::projected::metadata_field(&self.pod, f),
            };
            return Ok(value);
        }
        let key_ref = match (&from.config_map_key_ref, &from.secret_key_ref) {
            (Some(r), _) => Some((Source::ConfigMap, &r.name, &r.key, r.optional)),
            (None, Some(r)) => Some((Source::Secret, &r.name, &r.key, r.optional)),
            (None, None) => None,
        };
        if let Some((source, name, key, optional)) = key_ref {
            let optional = optional.unwrap_or(false);
            return match volumes::key_values(client, &ns, source, name).await {
                Ok(Some(data)) => match data.get(key) {
                    Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                    None if optional => Ok(None),
                    None => Err(format!(
                        "couldn't find key {key} in {} {ns}/{name}",
                        source.kind()
                    )),
                },
                Ok(None) if optional => Ok(None),
                Ok(None) => Err(source.not_found(name)),
                Err(e) => Err(e.to_string()),
            };
        }
        if let Some(r) = &from.resource_field_ref {
            let target = r.container_name.as_deref().unwrap_or(&c.name);
            let resources = self
                .containers(false)
                .into_iter()
                .chain(self.containers(true))
                .find(|c| c.name == target)
                .and_then(|c| c.resources)
                .unwrap_or_default();
            let (section, key) = r
                .resource
                .split_once('.')
                .unwrap_or(("limits", &r.resource));
            let map = if section == "requests" {
                resources.requests
            } else {
                resources.limits
            };
            let value =
                map.and_then(|m| m.get(key).and_then(|q| kubox_client::quantity::parse(&q.0)));
            let divisor = r
                .divisor
                .as_ref()
                .and_then(|d| kubox_client::quantity::parse(&d.0))
                .unwrap_or(1.0);
            let value = match (value, key) {
                (Some(v), _) => v,
                (None, "cpu") => num_cpus(),
                (None, _) => self.shared.memory_capacity as f64,
            };
            return Ok(Some(format!("{}", (value / divisor).ceil() as i64)));
        }
        Ok(None)
    }

    fn pod_ip(&self) -> Option<String> {
        if self.host_network() {
            Some(self.shared.node_ip.clone())
        } else {
            self.pod_ip.clone()
        }
    }

    fn container_statuses(&self, init: bool) -> Vec<ContainerStatus> {
        self.containers(init)
            .iter()
            .map(|c| {
                let slot = self.slots.get(&c.name);
                let current = slot.and_then(|s| s.current.as_ref());
                let runtime = self.shared.runtime.name();
                let terminated = |r: &Record| ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: r.exit_code.unwrap_or(0),
                        reason: r.reason.clone(),
                        started_at: Some(Time(r.started_at)),
                        finished_at: r.finished_at.map(Time),
                        container_id: Some(format!("{runtime}://{}", r.id)),
                        message: termination_message(&self.shared, r),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let waiting = slot.and_then(|s| s.waiting.clone());
                let (state, last) = match (current, waiting) {
                    (_, Some((reason, message))) => (
                        ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some(reason),
                                message: (!message.is_empty()).then_some(message),
                            }),
                            ..Default::default()
                        },
                        current.filter(|r| r.exit_code.is_some()).map(terminated),
                    ),
                    (Some(r), None) if r.exit_code.is_none() => (
                        ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: Some(Time(r.started_at)),
                            }),
                            ..Default::default()
                        },
                        slot.and_then(|s| s.last.as_ref()).map(terminated),
                    ),
                    (Some(r), None) => (
                        terminated(r),
                        slot.and_then(|s| s.last.as_ref()).map(terminated),
                    ),
                    (None, None) => (
                        ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some("ContainerCreating".into()),
                                message: None,
                            }),
                            ..Default::default()
                        },
                        None,
                    ),
                };
                let running = state.running.is_some();
                let started = running && slot.is_some_and(|s| s.started || s.prober.is_none());
                let ready = started && !init && slot.is_some_and(|s| s.ready || s.prober.is_none());
                ContainerStatus {
                    name: c.name.clone(),
                    image: current
                        .map(|r| r.image.clone())
                        .or_else(|| {
                            c.image
                                .as_ref()
                                .and_then(|i| Reference::parse(i).ok())
                                .map(|r| r.to_string())
                        })
                        .unwrap_or_default(),
                    image_id: current.map(|r| r.image_id.clone()).unwrap_or_default(),
                    container_id: current.map(|r| format!("{runtime}://{}", r.id)),
                    ready,
                    started: Some(started),
                    restart_count: slot.map(|s| s.restart_count).unwrap_or(0),
                    state: Some(state),
                    last_state: Some(last.unwrap_or_default()),
                    ..Default::default()
                }
            })
            .collect()
    }

    fn status(&self) -> PodStatus {
        let previous = self.pod.status.clone().unwrap_or_default();
        let init = self.container_statuses(true);
        let apps = self.container_statuses(false);
        let policy = self.restart_policy();
        let init_done = init.iter().all(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        });
        let init_failed = policy == "Never"
            && init.iter().any(|s| {
                s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0)
            });
        let phase = status::phase(&apps, &policy, init_done, init_failed);
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let all_ready = !apps.is_empty() && apps.iter().all(|s| s.ready);
        let now = now();
        let prev = previous.conditions.as_deref();
        let not_ready = (!all_ready).then_some(if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        });
        let conditions = vec![
            status::condition(
                prev,
                "PodReadyToStartContainers",
                self.sandbox_ready && !terminal,
                None,
                &now,
            ),
            status::condition(
                prev,
                "Initialized",
                init_done,
                (!init_done).then_some("ContainersNotInitialized"),
                &now,
            ),
            status::condition(prev, "Ready", all_ready, not_ready, &now),
            status::condition(prev, "ContainersReady", all_ready, not_ready, &now),
            status::condition(prev, "PodScheduled", true, None, &now),
        ];
        let pod_ip = self.pod_ip();
        PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(self.shared.node_ip.clone()),
            host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
                ip: self.shared.node_ip.clone(),
            }]),
            pod_ip: pod_ip.clone(),
            pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            init_container_statuses: (!init.is_empty()).then_some(init),
            container_statuses: Some(apps),
            qos_class: previous.qos_class,
            ..Default::default()
        }
    }

    async fn report(&mut self) {
        let status = self.status();
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let patch = serde_json::json!({"status": status});
        let began = std::time::Instant::now();
        match api
            .patch_status(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                self.step("status", began);
                if status.phase.as_deref() == Some("Running")
                    && let Some(steps) = self.starting.take()
                {
                    self.shared.metrics.pod_started(steps.elapsed());
                    steps.log(&self.name());
                }
                self.pod.status = pod.status;
                self.reported = Some(status);
            }
            Err(e) => tracing::warn!(pod = %self.name(), "reporting status: {e}"),
        }
    }

    /// Stops every container within the grace period, releases the pod's
    /// resources and, unless the pod is already gone, finishes its deletion.
    async fn terminate(&mut self, removed: bool) {
        let grace = self.grace_period();
        let deadline = Instant::now() + Duration::from_secs(grace);
        let running: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.current.as_ref().is_some_and(|r| r.exit_code.is_none()))
            .map(|(n, _)| n.clone())
            .collect();
        // preStop hooks first, all at once, within the grace period.
        let this = &*self;
        let hooks = running.iter().filter_map(|name| {
            let c = this
                .containers(false)
                .into_iter()
                .find(|c| c.name == *name)?;
            let hook = c.lifecycle.as_ref()?.pre_stop.clone()?;
            let id = this.slots[name].current.as_ref()?.id.clone();
            Some(async move {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = this.run_hook(&id, &c, &hook, left).await {
                    this.event(
                        Some(&c.name),
                        Type::Warning,
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {e}"),
                    );
                }
            })
        });
        let hooks: Vec<_> = hooks.collect();
        futures::future::join_all(hooks).await;
        for name in &running {
            self.event(
                Some(name),
                Type::Normal,
                "Killing",
                format!("Stopping container {name}"),
            );
            let id = self.slots[name]
                .current
                .as_ref()
                .map(|r| r.id.clone())
                .unwrap_or_default();
            let signal = if grace == 0 {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            let _ = self.shared.runtime.kill(&id, signal).await;
        }
        let mut left: Vec<String> = running;
        let mut killed = false;
        while !left.is_empty() {
            tokio::select! {
                Some((name, exited)) = self.exit_rx.recv() => {
                    left.retain(|n| *n != name);
                    self.on_exit(&name, exited).await;
                }
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    killed = true;
                    for name in &left {
                        let id = self.slots[name].current.as_ref().map(|r| r.id.clone()).unwrap_or_default();
                        let _ = self.shared.runtime.kill(&id, libc::SIGKILL).await;
                    }
                }
                else => break,
            }
        }
        if !removed {
            self.report().await;
        }
        for slot in self.slots.values() {
            for r in slot.current.iter().chain(&slot.last) {
                release_container(&self.shared, r).await;
                remove_container_files(&self.shared, r);
            }
        }
        self.set_sandbox(false);
        if let Err(e) = self.shared.network.detach(&self.uid).await {
            tracing::warn!(pod = %self.name(), "taking the pod off the pod network: {e}");
        }
        if let Err(e) = self.sandbox().destroy() {
            tracing::warn!(pod = %self.name(), "releasing the sandbox: {e}");
        }
        for tmpfs in self
            .volumes
            .values()
            .filter(|p| p.starts_with(self.pod_dir()))
        {
            let _ = rustix::mount::unmount(tmpfs, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(self.pod_dir());
        remove_pod_cgroups(&self.uid);
        if removed {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name(), &params).await {
            // Deleted already (with grace period 0): nothing left to finish.
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(pod = %self.name(), "finishing deletion: {e}"),
        }
    }
}

fn duration_text(secs: u64) -> String {
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m0s", secs / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn termination_message(shared: &Shared, r: &Record) -> Option<String> {
    let text = std::fs::read_to_string(r.dir(shared).join("termination-log")).ok()?;
    let text: String = text.chars().take(4096).collect();
    (!text.is_empty()).then_some(text)
}

fn num_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// Upstream's Burstable score: 1000 - 1000 * request / capacity, within [2, 999].
fn burstable_oom_score(memory: Option<i64>) -> i32 {
    let capacity = crate::node::memory_capacity().max(1) as i64;
    let request = memory.unwrap_or(0);
    (1000 - 1000 * request / capacity).clamp(2, 999) as i32
}

fn mount_rootfs(dir: &Path, layers: &[PathBuf]) -> std::io::Result<()> {
    let (upper, work, empty) = (dir.join("upper"), dir.join("work"), dir.join("empty"));
    for d in [&upper, &work, &empty] {
        std::fs::create_dir_all(d)?;
    }
    let mut lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    if lower.is_empty() {
        lower.push(empty.display().to_string());
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        dir.join("rootfs"),
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )?;
    Ok(())
}

fn unmount_rootfs(dir: &Path) {
    let _ = rustix::mount::unmount(dir.join("rootfs"), rustix::mount::UnmountFlags::DETACH);
}

/// Whether the kernel's OOM killer ended a container (cgroup v1 memory controller).
fn oom_killed(id: &str, shared: &Shared) -> bool {
    let Some(record) = std::fs::read(shared.dirs.containers.join(id).join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return false;
    };
    let Some(path) = record["linux"]["cgroupsPath"].as_str() else {
        return false;
    };
    for file in [
        format!("/sys/fs/cgroup/memory{path}/memory.oom_control"),
        format!("/sys/fs/cgroup{path}/memory.events"),
    ] {
        if let Ok(text) = std::fs::read_to_string(file)
            && text
                .lines()
                .any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"))
        {
            return true;
        }
    }
    false
}

/// Gives the runtime's resources for an ended container back: its runtime
/// state and cgroup, and its root filesystem mount. Logs stay.
async fn release_container(shared: &Shared, r: &Record) {
    if let Err(e) = shared.runtime.delete(&r.id).await {
        tracing::warn!("deleting container {}: {e}", r.id);
    }
    unmount_rootfs(&r.dir(shared));
}

fn remove_container_files(shared: &Shared, r: &Record) {
    let dir = r.dir(shared);
    unmount_rootfs(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops and forgets the containers of a pod that no longer exists.
pub async fn remove_orphans(shared: &Shared, uid: &str, records: Vec<Record>) {
    for r in &records {
        tracing::info!("removing container {} of deleted pod {uid}", r.id);
        release_container(shared, r).await;
        remove_container_files(shared, r);
    }
    if let Err(e) = shared.network.detach(uid).await {
        tracing::warn!("taking deleted pod {uid} off the pod network: {e}");
    }
    let pod_dir = shared.dirs.pods.join(uid);
    volumes::unmount_memory_volumes(&pod_dir);
    if let Err(e) = Sandbox::new(&pod_dir, HostShared::default()).destroy() {
        tracing::warn!("releasing the sandbox of deleted pod {uid}: {e}");
    }
    let _ = std::fs::remove_dir_all(pod_dir);
    remove_pod_cgroups(uid);
}

/// Removes the pod's cgroup in every hierarchy (the runtime removed the containers').
fn remove_pod_cgroups(uid: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let roots: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
        .collect();
    for root in roots {
        for qos in ["", "burstable/", "besteffort/"] {
            let _ = std::fs::remove_dir(root.join(format!("kubepods/{qos}pod{uid}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_messages_read_as_upstream() {
        assert_eq!(duration_text(10), "10s");
        assert_eq!(duration_text(300), "5m0s");
        assert_eq!(duration_text(80), "1m20s");
    }
}
