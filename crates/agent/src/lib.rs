//! The node agent: kubox's kubelet. An API client only: it registers its
//! Node, keeps its Lease, watches the pods bound to it and runs each with
//! a [`pod::Worker`], reporting status back through the API.

mod attach;
mod cadvisor;
mod cgroup;
mod console;
mod container;
pub mod dns;
mod exec;
pub mod hollow;
pub mod image;
mod kubelet_metrics;
mod log_reader;
mod logs;
mod node;
mod pod;
mod portforward;
mod probe;
mod prober;
mod projected;
mod remote;
mod resource_metrics;
pub mod runtime;
pub mod sandbox;
mod server;
mod spdy;
mod spec;
mod startup;
mod status;
mod tunnel;
mod upgrade;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::image::ImageStore;
use crate::runtime::ContainerRuntime;

pub use crate::logs::{Record as LogRecord, parse_record};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the node agent needs root (it mounts filesystems and makes namespaces)")]
    NotRoot,
    #[error("preparing {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Endpoint(#[from] server::ServerError),
    #[error("registering node {0}: {1}")]
    Register(String, #[source] kube::Error),
}

pub struct AgentConfig {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// Where the agent keeps images, containers, pods and logs.
    pub state_dir: PathBuf,
    pub runtime: Box<dyn ContainerRuntime>,
    /// `None` when the runtime is missing: the node then reports itself not ready.
    pub runtime_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The port the agent's HTTPS endpoint listens on (logs, exec), on all addresses.
    pub port: u16,
    /// The CA whose client certificates the endpoint accepts (the cluster's).
    pub client_ca_pem: String,
    /// Registries (`host:port`) pulled from over plain HTTP; those on this machine always are.
    pub insecure_registries: Vec<String>,
    /// The pod network pods are put on.
    pub network: Arc<kubox_net::PodNetwork>,
    /// The cluster DNS pods' resolv.conf names.
    pub dns: dns::ClusterDns,
}

/// Where the agent keeps things, under its state directory.
pub struct Dirs {
    pub root: PathBuf,
    pub pods: PathBuf,
    pub containers: PathBuf,
    pub logs: PathBuf,
    pub images: PathBuf,
}

impl Dirs {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            pods: root.join("pods"),
            containers: root.join("containers"),
            logs: root.join("logs"),
            images: root.join("images"),
        }
    }
}

/// What every pod worker shares.
pub struct Shared {
    pub client: kube::Client,
    pub node_name: String,
    pub node_ip: String,
    pub dirs: Dirs,
    pub images: ImageStore,
    pub runtime: Box<dyn ContainerRuntime>,
    pub runtime_version: Option<String>,
    pub memory_capacity: u64,
    pub agent_port: u16,
    pub active_logs: Arc<logs::Active>,
    pub events: kubox_client::events::Recorder,
    pub insecure_registries: Vec<String>,
    pub network: Arc<kubox_net::PodNetwork>,
    pub dns: dns::ClusterDns,
    /// Running containers by namespace, pod and container name, for exec and attach.
    pub running: std::sync::Mutex<HashMap<(String, String, String), Running>>,
    /// Pods whose sandbox exists, by namespace and name, for port-forward.
    pub sandboxes: std::sync::Mutex<HashMap<(String, String), portforward::Target>>,
    /// kubelet's own metrics, on `/metrics`.
    pub metrics: kubelet_metrics::KubeletMetrics,
    /// The `kubernetes` Service, whose variables every container gets, as a
    /// reflector keeps it: read at each container start, never fetched then.
    pub api_service: Store<Service>,
}

/// A running container, as exec and attach find it.
pub struct Running {
    pub id: String,
    pub io: Arc<attach::ContainerIo>,
    /// The cgroup of the container's pod; the container's is `<pod_cgroup>/<id>`.
    pub pod_cgroup: String,
    pub started_at: k8s_openapi::jiff::Timestamp,
    /// The image it runs, as the pod names it.
    pub image: String,
}

/// The labels upstream's kubelet puts on its node. The control-plane role
/// is not one: NodeRestriction keeps a node from giving itself
/// `node-role.kubernetes.io/*` labels, so the server sets it.
pub fn node_labels(node_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node_name.to_owned()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            image::platform_architecture().to_owned(),
        ),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "beta.kubernetes.io/arch".to_owned(),
            image::platform_architecture().to_owned(),
        ),
    ])
}

/// Fails unless this process can do what the agent does; checked before
/// anything is set up, so a user without root gets this, not the first
/// permission error of the node's set-up.
pub fn ensure_root() -> Result<(), AgentError> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(AgentError::NotRoot)
    }
}

/// A running agent; dropping it stops watching pods (containers keep running).
pub struct Agent {
    _tasks: kubox_client::Tasks,
}

impl Agent {
    /// Prepares the node and registers it; pods are then run in the background.
    pub async fn start(client: kube::Client, config: AgentConfig) -> Result<Self, AgentError> {
        ensure_root()?;
        let dirs = Dirs::new(&config.state_dir);
        for d in [&dirs.pods, &dirs.containers, &dirs.logs, &dirs.images] {
            std::fs::create_dir_all(d).map_err(|e| AgentError::Io(d.display().to_string(), e))?;
        }
        runtime::become_subreaper().map_err(|e| AgentError::Io("the subreaper flag".into(), e))?;
        let images = ImageStore::open(&dirs.images)?;
        let (api_service, api_service_writer) = reflector::store();
        let api_service_events = tokio::spawn(
            reflector::reflector(
                api_service_writer,
                watcher(
                    Api::<Service>::namespaced(client.clone(), "default"),
                    watcher::Config::default().fields("metadata.name=kubernetes"),
                ),
            )
            .default_backoff()
            .for_each(|_| async {}),
        );
        let shared = Arc::new(Shared {
            events: kubox_client::events::Recorder::new(
                client.clone(),
                "kubelet",
                Some(&config.node_name),
            ),
            client,
            node_name: config.node_name.clone(),
            node_ip: config.node_ip.to_string(),
            dirs,
            images,
            runtime: config.runtime,
            runtime_version: config.runtime_version,
            memory_capacity: node::memory_capacity(),
            agent_port: config.port,
            active_logs: Arc::default(),
            insecure_registries: config.insecure_registries,
            network: config.network,
            dns: config.dns,
            running: Default::default(),
            sandboxes: Default::default(),
            metrics: Default::default(),
            api_service,
        });
        let endpoint = server::start(
            shared.clone(),
            std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), config.port),
            &config.client_ca_pem,
        )
        .await?;
        let node = node::register(&shared, &config.labels)
            .await
            .map_err(|e| AgentError::Register(config.node_name.clone(), e))?;
        let heartbeat = tokio::spawn(node::heartbeat(shared.clone(), node));
        let pods = tokio::spawn(run_pods(shared));
        Ok(Self {
            _tasks: kubox_client::Tasks::new(vec![pods, heartbeat, endpoint, api_service_events]),
        })
    }
}

/// Watches the pods bound to this node and gives each its worker.
async fn run_pods(shared: Arc<Shared>) {
    let mut records: HashMap<String, Vec<pod::Record>> = HashMap::new();
    for r in pod::Record::load_all(&shared) {
        records.entry(r.pod_uid.clone()).or_default().push(r);
    }
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    // Back off between retries while the API server cannot be reached.
    let mut events =
        std::pin::pin!(watcher(api, config).backoff(kubox_client::node_watch_backoff()));
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listed: Vec<String> = Vec::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("watching pods: {e}");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                listed.push(uid.clone());
                workers.retain(|_, tx| !tx.is_closed());
                match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod.clone()));
                        let adopted = records.remove(&uid).unwrap_or_default();
                        tokio::spawn(pod::Worker::new(shared.clone(), pod, rx, adopted).run());
                        workers.insert(uid, tx);
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(tx) = pod
                    .metadata
                    .uid
                    .as_ref()
                    .and_then(|uid| workers.remove(uid))
                {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                // Containers and sandboxes of pods that no longer exist: stop and forget them.
                let mut orphans: Vec<String> = records
                    .keys()
                    .filter(|uid| !listed.contains(uid))
                    .cloned()
                    .collect();
                let pod_dirs = std::fs::read_dir(&shared.dirs.pods)
                    .into_iter()
                    .flatten()
                    .flatten();
                let stray: Vec<String> = pod_dirs
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|uid| {
                        !listed.contains(uid)
                            && !orphans.contains(uid)
                            && !workers.contains_key(uid)
                    })
                    .collect();
                orphans.extend(stray);
                for uid in orphans {
                    let adopted = records.remove(&uid).unwrap_or_default();
                    pod::remove_orphans(&shared, &uid, adopted).await;
                }
                // Addresses and veths of pods that went while no agent ran.
                let live: std::collections::HashSet<String> = listed.iter().cloned().collect();
                if let Err(e) = shared.network.reconcile(&live).await {
                    tracing::warn!("reconciling the pod network: {e}");
                }
                // Pods gone while the watch was down.
                for (uid, tx) in workers.iter() {
                    if !listed.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                workers.retain(|uid, _| listed.contains(uid));
            }
        }
    }
}
