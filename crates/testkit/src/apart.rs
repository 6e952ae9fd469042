//! Control-plane components run apart from a [`KuboxServer`] (`kubox
//! scheduler`, `kubox controller-manager`), with the credentials the server
//! writes for them in its data directory; each is killed on drop.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{KuboxServer, eventually, free_port, kill};

pub struct Apart {
    child: Option<Child>,
    metrics_port: u16,
    log: PathBuf,
}

impl Apart {
    /// `kubox scheduler` as `system:kube-scheduler`, with `extra` flags.
    pub async fn scheduler(server: &KuboxServer, extra: &[&str]) -> Self {
        let kubeconfig = server.data_dir().join("scheduler.kubeconfig");
        Self::spawn(server, "scheduler", &kubeconfig, &[], extra).await
    }

    /// `kubox controller-manager` as `system:kube-controller-manager`, with
    /// the server's cluster CIDR, CA and service-account key, and `extra` flags.
    pub async fn controller_manager(server: &KuboxServer, extra: &[&str]) -> Self {
        let dir = server.data_dir();
        let kubeconfig = dir.join("controller-manager.kubeconfig");
        let pki = dir.join("pki");
        let path = |p: PathBuf| p.display().to_string();
        let flags = [
            "--cluster-cidr".to_owned(),
            server.net().cluster_cidr(),
            "--cluster-signing-cert-file".to_owned(),
            path(pki.join("ca.crt")),
            "--cluster-signing-key-file".to_owned(),
            path(pki.join("ca.key")),
            "--root-ca-file".to_owned(),
            path(pki.join("ca.crt")),
            "--service-account-private-key-file".to_owned(),
            path(pki.join("sa.key")),
            "--local-path-dir".to_owned(),
            path(dir.join("storage")),
        ];
        Self::spawn(server, "controller-manager", &kubeconfig, &flags, extra).await
    }

    async fn spawn(
        server: &KuboxServer,
        command: &str,
        kubeconfig: &std::path::Path,
        flags: &[String],
        extra: &[&str],
    ) -> Self {
        // The server writes the credentials once its own node has started,
        // after its API answers.
        eventually(
            &format!("the server to write {}", kubeconfig.display()),
            Duration::from_secs(60),
            || async { kubeconfig.exists().then_some(()) },
        )
        .await;
        let metrics_port = free_port();
        let log = server.data_dir().join(format!("{command}.log"));
        let child = Command::new(server.bin())
            .arg(command)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--bind-address", "127.0.0.1", "--metrics-port"])
            .arg(metrics_port.to_string())
            .args(flags)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting kubox {command}: {e}"));
        Self {
            child: Some(child),
            metrics_port,
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of `GET path` on its metrics port, once it answers.
    pub async fn get(&self, path: &str) -> String {
        let port = self.metrics_port;
        eventually(
            &format!("GET {path} on port {port}"),
            Duration::from_secs(60),
            || async move {
                let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
                let mut response = String::new();
                tcp.read_to_string(&mut response).ok()?;
                let (head, body) = response.split_once("\r\n\r\n")?;
                (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
            },
        )
        .await
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
