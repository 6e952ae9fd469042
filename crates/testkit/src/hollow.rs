//! A server whose nodes are hollow (`kubox agent --hollow N`): scheduling
//! scenarios on many nodes without running a container.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{KuboxServer, eventually, kill};

/// A `kubox agent --hollow N` process; it stops on drop.
pub struct HollowAgent {
    child: Option<Child>,
}

impl HollowAgent {
    /// Starts `nodes` hollow nodes `hollow-0`.. with `kubeconfig`'s
    /// identity, logging to `log`.
    pub fn start(
        bin: &std::path::Path,
        kubeconfig: &std::path::Path,
        nodes: usize,
        log: &std::path::Path,
    ) -> Self {
        let log = std::fs::File::create(log).expect("hollow log file");
        let child = Command::new(bin)
            .args(["agent", "--hollow", &nodes.to_string(), "--kubeconfig"])
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kubox agent --hollow");
        Self { child: Some(child) }
    }
}

impl Drop for HollowAgent {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Waits until `nodes` nodes of the cluster `server` serves are Ready.
pub async fn wait_nodes_ready(server: &KuboxServer, nodes: usize) {
    eventually("the hollow nodes to be Ready", Duration::from_secs(120), || async {
        let out = server.kubectl(&[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ]);
        let ready = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l == "True")
            .count();
        (ready == nodes).then_some(())
    })
    .await;
}

/// A `kubox server` without a node agent of its own, and `nodes` hollow
/// nodes `hollow-0`.. joined to it; both stop on drop.
pub struct HollowCluster {
    pub server: KuboxServer,
    _agent: HollowAgent,
}

impl HollowCluster {
    /// Starts the server with `extra_args`, then the hollow nodes, and waits
    /// until all are Ready.
    pub async fn start(
        bin: impl Into<std::path::PathBuf>,
        nodes: usize,
        extra_args: &[&str],
    ) -> Self {
        let mut args = vec!["--disable-agent"];
        args.extend_from_slice(extra_args);
        let server = KuboxServer::start(bin, &args).await;
        let agent = HollowAgent::start(
            server.bin(),
            &server.kubeconfig(),
            nodes,
            &server.data_dir().join("hollow.log"),
        );
        wait_nodes_ready(&server, nodes).await;
        Self {
            server,
            _agent: agent,
        }
    }
}
