//! `kubox bench streams`: exec round trips (start `true`, read its exit
//! status) over WebSocket with the kube-rs client, and port-forward
//! throughput through stock `kubectl port-forward` (its default, SPDY
//! tunnelled in a WebSocket, and plain SPDY), against a direct connection
//! to the same listener from inside the pod's network namespace.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, PostParams};
use kubox_testkit::KuboxServer;
use tokio::io::AsyncReadExt;

use crate::report::{Latencies, Table};

pub struct Options {
    pub execs: usize,
    /// MiB read through each port-forward.
    pub megabytes: usize,
    /// `kubox server --runtime`.
    pub runtime: String,
}

/// A pod that serves an endless stream of zeros on port 5000, one connection at a time.
fn source_pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "source"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "while true; do nc -l -p 5000 < /dev/zero; done"],
            }],
        }
    }))
    .expect("a valid pod")
}

async fn exec_true(api: &Api<Pod>, pod: &str) -> anyhow::Result<()> {
    let params = AttachParams::default().stdout(true).stderr(false);
    let mut attached = api.exec(pod, ["true"], &params).await?;
    let mut stdout = attached
        .stdout()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let status = attached
        .take_status()
        .ok_or_else(|| anyhow::anyhow!("no status"))?;
    let mut sink = Vec::new();
    stdout.read_to_end(&mut sink).await?;
    let status = status
        .await
        .ok_or_else(|| anyhow::anyhow!("no status came"))?;
    anyhow::ensure!(
        status.status.as_deref() == Some("Success"),
        "exec failed: {status:?}"
    );
    attached.join().await?;
    Ok(())
}

/// Reads `bytes` from a connection; MB/s (10^6 bytes).
fn drain(mut conn: TcpStream, bytes: usize) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut got = 0;
    while got < bytes {
        let n = conn.read(&mut buf)?;
        anyhow::ensure!(n > 0, "the stream ended after {got} bytes");
        got += n;
    }
    Ok(got as f64 / 1e6 / started.elapsed().as_secs_f64())
}

/// Connects to `port` on the pod's loopback from a thread in its network namespace.
fn connect_in(netns: &std::path::Path, port: u16) -> anyhow::Result<TcpStream> {
    let netns = netns.to_owned();
    std::thread::spawn(move || -> anyhow::Result<TcpStream> {
        let file = std::fs::File::open(&netns)?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        Ok(TcpStream::connect(("127.0.0.1", port))?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
}

/// The first connection may come before the pod's listener is up: retried.
fn retry<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The runtime alone: `runc exec true` into the pod's container, `runs`
/// times, with no API server and no agent in the way.
fn runc_exec_alone(server: &KuboxServer, runs: usize) -> anyhow::Result<Latencies> {
    // Where the agent's runc keeps its state (`--root`).
    let root = server.data_dir().join("agent/runtime/runc");
    let ids = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()?;
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    // The sandbox is no container of its own (no pause image), so any
    // listed id is the shell pod's.
    let id = ids
        .lines()
        .next()
        .ok_or_else(|| anyhow::anyhow!("runc lists no container under {}", root.display()))?;
    let mut latencies = Latencies::default();
    for _ in 0..runs {
        let started = Instant::now();
        let status = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["exec", id, "true"])
            .status()?;
        anyhow::ensure!(status.success(), "runc exec failed");
        latencies.record(started.elapsed());
    }
    Ok(latencies)
}

fn through_kubectl(server: &KuboxServer, spdy: bool, bytes: usize) -> anyhow::Result<f64> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["port-forward", "pod/source", ":5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if spdy {
        cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
    }
    let mut child = cmd.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let port: u16 = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("kubectl port-forward ended"))??;
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split(' ').next().unwrap_or_default().parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let result = retry(|| drain(TcpStream::connect(("127.0.0.1", port))?, bytes));
    let _ = child.kill();
    let _ = child.wait();
    result
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let server =
        KuboxServer::start(&exe, &["--node-name", "bench", "--runtime", &opts.runtime]).await;
    server.import_busybox();
    server.run_sleeper("shell").await;
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await?;
    let api: Api<Pod> = Api::namespaced(client, "default");

    for _ in 0..10 {
        exec_true(&api, "shell").await?;
    }
    let mut latencies = Latencies::default();
    for _ in 0..opts.execs {
        let started = Instant::now();
        exec_true(&api, "shell").await?;
        latencies.record(started.elapsed());
    }
    let runc = if opts.runtime == "runc" {
        Some(runc_exec_alone(&server, opts.execs.min(100))?)
    } else {
        None
    };

    let made = api.create(&PostParams::default(), &source_pod()).await?;
    let uid = made.metadata.uid.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get("source").await?.status.and_then(|s| s.phase) != Some("Running".into()) {
        anyhow::ensure!(Instant::now() < deadline, "the source pod did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bytes = opts.megabytes << 20;
    let netns = server.data_dir().join(format!("agent/pods/{uid}/ns/net"));
    let direct = tokio::task::block_in_place(|| retry(|| drain(connect_in(&netns, 5000)?, bytes)))?;
    let tunnel = tokio::task::block_in_place(|| through_kubectl(&server, false, bytes))?;
    let spdy = tokio::task::block_in_place(|| through_kubectl(&server, true, bytes))?;

    let mut table = Table::new(&["measure", "value"]);
    let mut row = |k: &str, v: String| table.row(vec![k.to_owned(), v]);
    row("runtime", opts.runtime.clone());
    row(
        &format!(
            "exec `true` round trip p50 (kube-rs, WebSocket, {} runs)",
            opts.execs
        ),
        format!("{:.1} ms", latencies.ms(0.5)),
    );
    row(
        "exec `true` round trip p99",
        format!("{:.1} ms", latencies.ms(0.99)),
    );
    if let Some(runc) = runc {
        row(
            "`runc exec true` alone p50 (no API server, no agent)",
            format!("{:.1} ms", runc.ms(0.5)),
        );
        row(
            "`runc exec true` alone p99",
            format!("{:.1} ms", runc.ms(0.99)),
        );
    }
    row(
        &format!(
            "port-forward, kubectl default (SPDY in WebSocket), {} MiB",
            opts.megabytes
        ),
        format!("{tunnel:.0} MB/s"),
    );
    row("port-forward, kubectl over SPDY", format!("{spdy:.0} MB/s"));
    row(
        "direct connection to the same pod listener",
        format!("{direct:.0} MB/s"),
    );
    Ok(table.render())
}
