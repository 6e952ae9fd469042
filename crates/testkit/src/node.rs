//! The node agent's container runtimes, for tests: which to run a test
//! with, which containers a node has, and cleaning a node up after a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A container runtime the node agent runs with (`--runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// youki's libcontainer, built into kubox: the default.
    Embedded,
    /// runc from Debian's packages, through its command line.
    Runc,
}

impl Runtime {
    /// The `--runtime` value, which is also the scheme of container IDs.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Embedded => "embedded",
            Runtime::Runc => "runc",
        }
    }

    /// `kubox server` arguments for a node named `node` on this runtime.
    pub fn server_args(self) -> [&'static str; 4] {
        ["--node-name", "node", "--runtime", self.name()]
    }
}

/// Turns `async fn NAME(runtime: Runtime)` test bodies into one test per
/// runtime, `NAME::embedded` and `NAME::runc`.
#[macro_export]
macro_rules! with_each_runtime {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn embedded() {
                super::$test($crate::Runtime::Embedded).await
            }

            #[tokio::test]
            async fn runc() {
                super::$test($crate::Runtime::Runc).await
            }
        }
    )*};
}

fn runtimes(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/runtime")
}

fn runc(data_dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("runc")
        .arg("--root")
        .arg(runtimes(data_dir).join("runc"))
        .args(args)
        .output()
        .ok()
}

/// The state directories of the embedded runtime's containers.
fn embedded_containers(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(runtimes(data_dir).join("embedded"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("state.json").exists())
        .collect()
}

/// The IDs of the containers the runtimes of the node agent under
/// `data_dir` (a `kubox server --data-dir`) hold, running or not.
pub fn containers(data_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = runc(data_dir, &["list", "-q"])
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    ids.extend(
        embedded_containers(data_dir)
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    );
    ids
}

/// The cgroup hierarchies' roots: each v1 controller's and the v2 one.
fn cgroup_roots() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
        .collect()
}

/// Kills an embedded-runtime container and removes its cgroups and state,
/// as `runc delete --force` does for runc's.
fn release_embedded(state_dir: &Path) {
    let read = |p: PathBuf| {
        std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default()
    };
    let state = read(state_dir.join("state.json"));
    if let Some(pid) = state["pid"].as_i64() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let bundle = PathBuf::from(state["bundle"].as_str().unwrap_or_default());
    let config = read(bundle.join("config.json"));
    if let Some(path) = config["linux"]["cgroupsPath"].as_str() {
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(path.trim_start_matches('/')));
        }
    }
    let _ = std::fs::remove_dir_all(state_dir);
}

/// Containers outlive their node agent by design; a test's must not outlive
/// the test. Deletes the containers of the agent under `data_dir`, and
/// unmounts its namespaces and root filesystems, so the directory can go.
pub fn release(data_dir: &Path) {
    for id in runc(data_dir, &["list", "-q"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
        .lines()
    {
        let _ = runc(data_dir, &["delete", "--force", id]);
    }
    for dir in embedded_containers(data_dir) {
        release_embedded(&dir);
    }
    let agent = data_dir.join("agent");
    let prefix = agent.display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.reverse();
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).output();
    }
    for pod in std::fs::read_dir(agent.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let uid = pod.file_name().to_string_lossy().into_owned();
        for root in cgroup_roots() {
            for qos in ["", "burstable/", "besteffort/"] {
                let _ = std::fs::remove_dir(root.join(format!("kubepods/{qos}pod{uid}")));
            }
        }
    }
}
