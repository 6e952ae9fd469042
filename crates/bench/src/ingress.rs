//! `kubox bench ingress`: requests per second and latency with `wrk`
//! through the ingress controller against a direct connection to the same
//! backend pod (go-multiroute, keep-alive), on a real node.

use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually, multiroute_spec};
use serde_json::json;

use crate::report::Table;

pub struct Options {
    pub seconds: u64,
    pub connections: usize,
    pub threads: usize,
}

const TIMEOUT: Duration = Duration::from_secs(300);

/// What `wrk --latency` reports.
#[derive(Clone)]
struct Wrk {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
}

/// `1.23ms`, `456.00us`, `1.02s` in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    Some(Wrk {
        requests_per_second: field("Requests/sec:")?.parse().ok()?,
        p50_ms: millis(field("50%")?)?,
        p99_ms: millis(field("99%")?)?,
        errors: out
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

fn wrk(opts: &Options, url: &str, host: Option<&str>) -> anyhow::Result<Wrk> {
    let mut command = std::process::Command::new("wrk");
    command.args([
        format!("-t{}", opts.threads),
        format!("-c{}", opts.connections),
        format!("-d{}s", opts.seconds),
        "--latency".into(),
    ]);
    if let Some(host) = host {
        command.args(["-H", &format!("Host: {host}")]);
    }
    let out = command
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("running wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).ok_or_else(|| anyhow::anyhow!("unexpected wrk output:\n{text}"))
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let (server, http, _) = KuboxServer::start_with_ingress(&exe, &[]).await;
    server.build_example_images();
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bench"},
        "data": {"config.yml": "routes:\n  /route1: \"route1's content\"\n"},
    }));
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench-backend", "labels": {"app": "bench"}},
        "spec": multiroute_spec("kubox.local/go-multiroute:v1", "bench"),
    }));
    server.apply_json(&json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench-svc"},
        "spec": {"selector": {"app": "bench"}, "ports": [{"port": 3000}]},
    }));
    server.apply_json(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "bench-ing"},
        "spec": {"rules": [{"host": "bench.test", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "bench-svc", "port": {"number": 3000}}}}]}}]},
    }));
    let pod_ip = eventually("the backend pod is ready", TIMEOUT, || async {
        let out = server.kubectl(&["get", "pod", "bench-backend", "-o", "json"]);
        let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = pod["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then(|| pod["status"]["podIP"].as_str().map(str::to_owned))?
    })
    .await;
    let direct = format!("http://{pod_ip}:3000/route1");
    let through = format!("http://127.0.0.1:{http}/route1");
    eventually("the ingress routes to the backend", TIMEOUT, || async {
        let out = std::process::Command::new("wget")
            .args(["-qO-", "--header=Host: bench.test", &through])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    // Warm both paths (connection pools, caches) before measuring.
    let warm = Options {
        seconds: 1,
        connections: opts.connections,
        threads: opts.threads,
    };
    wrk(&warm, &direct, None)?;
    wrk(&warm, &through, Some("bench.test"))?;
    let direct_result = wrk(&opts, &direct, None)?;
    let ingress_result = wrk(&opts, &through, Some("bench.test"))?;
    let mut rows = vec![
        ("direct to the pod", direct_result.clone()),
        ("through the ingress", ingress_result.clone()),
    ];
    let nginx = Nginx::start(&pod_ip).await?;
    if let Some(nginx) = &nginx {
        let url = format!("http://127.0.0.1:{}/route1", nginx.port);
        wrk(&warm, &url, None)?;
        rows.push((
            "through nginx (Debian's, same pod)",
            wrk(&opts, &url, None)?,
        ));
    }
    let mut table = Table::new(&["path", "requests/s", "p50 ms", "p99 ms", "errors"]);
    for (name, r) in &rows {
        table.row(vec![
            (*name).into(),
            format!("{:.0}", r.requests_per_second),
            format!("{:.2}", r.p50_ms),
            format!("{:.2}", r.p99_ms),
            if r.errors.is_empty() {
                "none".into()
            } else {
                r.errors.clone()
            },
        ]);
    }
    table.row(vec![
        "ingress / direct".into(),
        format!(
            "{:.2}",
            ingress_result.requests_per_second / direct_result.requests_per_second
        ),
        String::new(),
        String::new(),
        String::new(),
    ]);
    if let Some((_, r)) = rows.get(2) {
        table.row(vec![
            "nginx / direct".into(),
            format!(
                "{:.2}",
                r.requests_per_second / direct_result.requests_per_second
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    Ok(table.render())
}

/// Debian's nginx as a reverse proxy to the same pod, when it is installed:
/// the real thing the ingress is measured against. It is configured as
/// ingress-nginx runs it: keep-alive connections upstream, an access log.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

const NGINX: &str = "/usr/sbin/nginx";

impl Nginx {
    async fn start(pod_ip: &str) -> anyhow::Result<Option<Self>> {
        if !std::path::Path::new(NGINX).exists() {
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let port = kubox_testkit::free_port();
        let root = dir.path().display();
        let config = format!(
            "daemon off;\nworker_processes auto;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {root}/access.log;\n\
               upstream backend {{ server {pod_ip}:3000; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://backend; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config)?;
        let child = std::process::Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let nginx = Self {
            child,
            port,
            _dir: dir,
        };
        eventually("nginx listens", TIMEOUT, || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(drop)
        })
        .await;
        Ok(Some(nginx))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers too.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out = "Running 5s test @ http://x\n  2 threads and 32 connections\n  Latency Distribution\n     50%  412.00us\n     75%    1.10ms\n     90%    2.00ms\n     99%    1.50s\n  1000 requests in 5.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  20001.50\nTransfer/sec:      1.00MB\n";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.requests_per_second, 20001.5);
        assert!((w.p50_ms - 0.412).abs() < 1e-9);
        assert_eq!(w.p99_ms, 1500.0);
        assert_eq!(w.errors, "Non-2xx or 3xx responses: 3");
    }
}
