//! A server whose nodes are hollow (`kubox agent --hollow N`): scheduling
//! scenarios on many nodes without running a container.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{KuboxServer, eventually, kill};

/// A `kubox server` without a node agent of its own, and `nodes` hollow
/// nodes `hollow-0`.. joined to it; both stop on drop.
pub struct HollowCluster {
    pub server: KuboxServer,
    agent: Option<Child>,
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
        let log =
            std::fs::File::create(server.data_dir().join("hollow.log")).expect("hollow log file");
        let agent = Command::new(server.bin())
            .args(["agent", "--hollow", &nodes.to_string(), "--kubeconfig"])
            .arg(server.kubeconfig())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kubox agent --hollow");
        let cluster = Self {
            server,
            agent: Some(agent),
        };
        eventually("the hollow nodes to be Ready", Duration::from_secs(120), || async {
            let out = cluster.server.kubectl(&[
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
        cluster
    }
}

impl Drop for HollowCluster {
    fn drop(&mut self) {
        kill(&mut self.agent);
    }
}
