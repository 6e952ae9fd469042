//! Interactive streams end to end with stock kubectl: exec, cp, attach,
//! port-forward and logs -f, over WebSocket (kubectl's default) and SPDY
//! (forced, and spoken natively by older kubectl minors when present).
//! Exec, which each container runtime does its own way, is tested with each.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use kubox_testkit::{KuboxServer, Runtime, eventually, with_each_runtime};

/// Forces kubectl onto SPDY for exec, attach, cp and port-forward.
const SPDY: [(&str, &str); 2] = [
    ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
    ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
];

with_each_runtime!(
    exec_runs_commands_with_their_output_and_exit_code,
    exec_with_a_terminal_is_interactive,
);

async fn server_with_shell(runtime: Runtime) -> KuboxServer {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &runtime.server_args()).await;
    server.import_busybox();
    server.run_sleeper("sh").await;
    server
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// kubectl (the one on PATH, or another binary) against the server, with extra environment.
fn kubectl(server: &KuboxServer, program: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(program);
    c.arg("--kubeconfig").arg(server.kubeconfig());
    c.envs(env.iter().copied());
    c
}

/// Other kubectl minors on this machine: the ones before 1.30 speak only SPDY for exec.
fn other_kubectls() -> Vec<String> {
    let dir = std::fs::canonicalize("/usr/bin/kubectl")
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_owned()));
    let mut found: Vec<String> = dir
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .filter(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("kubectl.1."))
        })
        .collect();
    found.sort();
    found
}

fn apply(server: &KuboxServer, yaml: &str) {
    let out = kubox_testkit::output_with_input(
        kubectl(server, "kubectl", &[]).args(["apply", "-f", "-"]),
        yaml.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_running(server: &KuboxServer, name: &str) {
    eventually(
        &format!("pod {name} runs"),
        Duration::from_secs(60),
        || async {
            let out = server.kubectl(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
            (out.stdout == b"Running").then_some(())
        },
    )
    .await;
}

/// Runs `exec -i ... cat` piping `input` through; returns what came back.
fn cat_through(server: &KuboxServer, program: &str, env: &[(&str, &str)], input: &[u8]) -> Vec<u8> {
    let mut child = kubectl(server, program, env)
        .args(["exec", "-i", "sh", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let input = input.to_vec();
        std::thread::spawn(move || stdin.write_all(&input).unwrap())
    };
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn check_exec(server: &KuboxServer, program: &str, env: &[(&str, &str)]) {
    let out = kubectl(server, program, env)
        .args([
            "exec",
            "sh",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{program} {env:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("oops") && stderr.contains("command terminated with exit code 3"),
        "{program} {env:?}: {stderr}"
    );
    let input = random_bytes(1 << 20);
    assert!(
        cat_through(server, program, env, &input) == input,
        "{program} {env:?}: cat differs"
    );
}

async fn exec_runs_commands_with_their_output_and_exit_code(runtime: Runtime) {
    let server = server_with_shell(runtime).await;
    check_exec(&server, "kubectl", &[]);
    assert_eq!(server.kubectl_ok(&["exec", "sh", "--", "hostname"]), "sh\n");

    // 50 MB through `cat` and back, byte for byte; its end ends `cat`.
    let input = random_bytes(50 << 20);
    let back = cat_through(&server, "kubectl", &[], &input);
    assert!(
        back == input,
        "cat returned {} of {} bytes, or other bytes",
        back.len(),
        input.len()
    );

    // A command runs as the container's own process does: its user, its
    // working directory.
    server.apply_json(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "user"},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"], "workingDir": "/tmp"}],
        }
    }));
    server.kubectl_ok(&["wait", "--for=condition=Ready", "pod/user", "--timeout=60s"]);
    assert_eq!(
        server.kubectl_ok(&["exec", "user", "--", "sh", "-c", "id -u; id -g; pwd"]),
        "1000\n1000\n/tmp\n"
    );
}

#[tokio::test]
async fn exec_over_spdy_with_this_and_older_kubectl() {
    let server = server_with_shell(Runtime::Embedded).await;
    check_exec(&server, "kubectl", &SPDY);
    // Older minors (1.27-1.29 use SPDY for exec by default), where the machine has them.
    for program in other_kubectls() {
        check_exec(&server, &program, &[]);
    }
    // cp is tar over exec: SPDY carries it too.
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("data.bin");
    std::fs::write(&original, random_bytes(1 << 20)).unwrap();
    let status = kubectl(&server, "kubectl", &SPDY)
        .args(["cp", original.to_str().unwrap(), "sh:/tmp/spdy.bin"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = server.kubectl_ok(&["exec", "sh", "--", "md5sum", "/tmp/spdy.bin"]);
    let expected = Command::new("md5sum").arg(&original).output().unwrap();
    assert_eq!(
        out.split_whitespace().next(),
        String::from_utf8_lossy(&expected.stdout)
            .split_whitespace()
            .next()
    );
}

#[tokio::test]
async fn exec_errors_read_as_upstreams() {
    let server = server_with_shell(Runtime::Embedded).await;
    let missing = server.kubectl(&["exec", "sh", "-c", "nope", "--", "true"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("container nope is not valid for pod sh")
    );
    // A pod that cannot start: its container is waiting, so kubelet has none to run in.
    server.kubectl_ok(&[
        "run",
        "stuck",
        "--image=no.such.registry.invalid/nothing",
        "--",
        "true",
    ]);
    let out = server.kubectl(&["exec", "stuck", "--", "true"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container not found (\"stuck\")"),
        "{stderr}"
    );
    let out = server.kubectl(&["exec", "sh", "--", "no-such-command"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Internal error occurred: error executing command in container"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kubectl_cp_copies_both_ways_byte_exact() {
    let server = server_with_shell(Runtime::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("data.bin");
    std::fs::write(&original, random_bytes(20 << 20)).unwrap();
    server.kubectl_ok(&["cp", original.to_str().unwrap(), "sh:/tmp/data.bin"]);
    let back = dir.path().join("back.bin");
    server.kubectl_ok(&["cp", "sh:/tmp/data.bin", back.to_str().unwrap()]);
    assert!(
        std::fs::read(&original).unwrap() == std::fs::read(&back).unwrap(),
        "the copies differ"
    );
}

/// Runs kubectl under `script`, which gives it a terminal as a person at a
/// shell would have; returns its exit code and what it printed.
fn with_terminal(command: &str, input: &str) -> (Option<i32>, String) {
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    // Typed slowly enough for the remote shell to be there to read it.
    let typist = std::thread::spawn(move || {
        for line in input.split_inclusive('\n') {
            std::thread::sleep(Duration::from_millis(300));
            if stdin.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    });
    let out = child.wait_with_output().unwrap();
    let _ = typist.join();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn exec_with_a_terminal_is_interactive(runtime: Runtime) {
    let server = server_with_shell(runtime).await;
    let kubectl = format!("kubectl --kubeconfig {}", server.kubeconfig().display());
    let (code, out) = with_terminal(&format!("{kubectl} exec -it sh -- sh -c 'tty; exit 4'"), "");
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    let (code, out) = with_terminal(
        &format!("{kubectl} exec -it sh -- sh"),
        "echo typed-$((6*7))\nexit 5\n",
    );
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("typed-42"), "{out}");
    // The same over SPDY.
    let (code, out) = with_terminal(
        &format!("env KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false {kubectl} exec -it sh -- sh"),
        "echo spdy-$((6*7))\nexit 6\n",
    );
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("spdy-42"), "{out}");
}

#[tokio::test]
async fn kubectl_run_it_rm_attaches_to_a_terminal_and_cleans_up() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    let kubectl = format!("kubectl --kubeconfig {}", server.kubeconfig().display());
    let (code, out) = with_terminal(
        &format!(
            "{kubectl} run -it --rm --restart=Never --image=busybox --image-pull-policy=IfNotPresent shell -- sh"
        ),
        "\necho attached-$((6*7))\nexit\n",
    );
    assert!(out.contains("attached-42"), "{out}");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("pod \"shell\" deleted"), "{out}");
    let gone = server.kubectl(&["get", "pod", "shell"]);
    assert!(!gone.status.success());
}

#[tokio::test]
async fn attach_follows_output_and_feeds_stdin() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: echo
    image: busybox
    imagePullPolicy: IfNotPresent
    stdin: true
    command: ["sh", "-c", "while read line; do echo got-$line; echo err-$line >&2; done"]
"#,
    );
    wait_running(&server, "echo").await;
    for env in [&[][..], &SPDY[..]] {
        let mut child = kubectl(&server, "kubectl", env)
            .args(["attach", "-i", "echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        stdin.write_all(b"line0\n").unwrap();
        let answer = lines.next().unwrap().unwrap();
        assert_eq!(answer, "got-line0", "{env:?}");
        stdin.write_all(b"line1\n").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "got-line1", "{env:?}");
        // This container keeps its stdin (no stdinOnce): the client leaving leaves it running.
        child.kill().unwrap();
        let _ = child.wait();
        wait_running(&server, "echo").await;
    }
    // Without -i, attach follows the output of a container that writes on its own.
    apply(
        &server,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: ticker
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done"]
"#,
    );
    wait_running(&server, "ticker").await;
    let mut child = kubectl(&server, "kubectl", &[])
        .args(["attach", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ticks: Vec<u64> = lines
        .take(5)
        .map(|l| l.unwrap().trim_start_matches("tick-").parse().unwrap())
        .collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    child.kill().unwrap();
    let _ = child.wait();
}

/// A running `kubectl port-forward`, killed on drop.
struct Forward {
    child: Child,
    local: Vec<u16>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kubectl port-forward TARGET :p1 :p2...` and waits for its local ports.
fn port_forward(
    server: &KuboxServer,
    env: &[(&str, &str)],
    target: &str,
    ports: &[u16],
) -> Forward {
    let mut cmd = kubectl(server, "kubectl", env);
    cmd.args(["port-forward", target]);
    for p in ports {
        cmd.arg(format!(":{p}"));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let mut pipe = child.stderr.take().unwrap();
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stderr
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut local = Vec::new();
    while local.len() < ports.len() {
        let Some(Ok(line)) = lines.next() else {
            panic!("port-forward ended: {}", stderr.lock().unwrap());
        };
        // "Forwarding from 127.0.0.1:40123 -> 80" (and the same for [::1]).
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            local.push(rest.split(' ').next().unwrap().parse().unwrap());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Forward {
        child,
        local,
        stderr,
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    Ok(response)
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    ports: [{containerPort: 80}]
    command: ["sh", "-c", "mkdir -p /a /b && echo page-a > /a/index.html && echo page-b > /b/index.html && httpd -p 81 -h /b && exec httpd -f -p 80 -h /a"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 80}]
"#;

#[tokio::test]
async fn port_forward_carries_http_over_websocket_and_spdy() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    apply(&server, WEB);
    wait_running(&server, "web").await;
    for env in [&[][..], &SPDY[..]] {
        let fwd = port_forward(&server, env, "pod/web", &[80, 81]);
        // httpd may still be starting: the first request waits for it.
        let first = eventually("httpd answers", Duration::from_secs(30), || async {
            http_get(fwd.local[0], "/")
                .ok()
                .filter(|r| r.contains("page-a"))
        })
        .await;
        assert!(first.contains(" 200 OK"), "{first}");
        assert!(http_get(fwd.local[1], "/").unwrap().contains("page-b"));
        // Many connections at once over the one forward.
        let port = fwd.local[0];
        let clients: Vec<_> = (0..40)
            .map(|_| std::thread::spawn(move || http_get(port, "/")))
            .collect();
        for c in clients {
            let r = c.join().unwrap().unwrap();
            assert!(r.contains("page-a"), "{env:?}: {r}");
        }
        drop(fwd);
    }
    // kubectl resolves a Service to one of its pods and its target port.
    let fwd = port_forward(&server, &[], "svc/web", &[8080]);
    let page = eventually(
        "the service's pod answers",
        Duration::from_secs(30),
        || async { http_get(fwd.local[0], "/").ok() },
    )
    .await;
    assert!(page.contains("page-a"), "{page}");
}

#[tokio::test]
async fn port_forward_to_a_closed_port_reports_upstreams_error() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    server.run_sleeper("idle").await;
    for env in [&[][..], &SPDY[..]] {
        let fwd = port_forward(&server, env, "pod/idle", &[9999]);
        // The connection is accepted locally, then closed when the pod refuses.
        let _ = http_get(fwd.local[0], "/");
        let message = eventually(
            "kubectl reports the error",
            Duration::from_secs(20),
            || async {
                let text = fwd.stderr.lock().unwrap().clone();
                text.contains("connection refused").then_some(text)
            },
        )
        .await;
        assert!(
            message.contains("error forwarding port 9999 to pod")
                && message.contains("failed to connect to localhost:9999 inside namespace"),
            "{env:?}: {message}"
        );
    }
}

#[tokio::test]
async fn logs_follow_a_container_as_it_writes() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    server.kubectl_ok(&[
        "run",
        "counter",
        "--image=busybox",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.1; done",
    ]);
    wait_running(&server, "counter").await;
    let mut child = kubectl(&server, "kubectl", &[])
        .args(["logs", "-f", "counter"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: u64 = lines
        .next()
        .unwrap()
        .unwrap()
        .trim_start_matches("line-")
        .parse()
        .unwrap();
    // Lines written after kubectl started arrive as they are written, in order.
    let started = std::time::Instant::now();
    for expected in first + 1..first + 20 {
        let line = lines.next().unwrap().unwrap();
        assert_eq!(line, format!("line-{expected}"));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "19 lines 100 ms apart came in {:?}: not followed as written",
        started.elapsed()
    );
    child.kill().unwrap();
    let _ = child.wait();
}

async fn client(server: &KuboxServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Runs `argv` in pod `sh` over WebSocket with kube-rs; its stdout and final status.
async fn kube_exec(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    argv: &[&str],
) -> (
    Vec<u8>,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
) {
    use tokio::io::AsyncReadExt;
    let params = kube::api::AttachParams::default().stderr(false);
    let mut attached = pods.exec("sh", argv.to_vec(), &params).await.unwrap();
    let mut stdout = attached.stdout().unwrap();
    let status = attached.take_status().unwrap();
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).await.unwrap();
    let status = status.await.unwrap();
    attached.join().await.unwrap();
    (out, status)
}

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn kube_rs_execs_and_the_agent_returns_to_its_baseline() {
    let server = server_with_shell(Runtime::Embedded).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::default_namespaced(client(&server).await);
    let (out, status) = kube_exec(&pods, &["sh", "-c", "echo hi; exit 3"]).await;
    assert_eq!(out, b"hi\n");
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let (_, status) = kube_exec(&pods, &["true"]).await;
    assert_eq!(status.status.as_deref(), Some("Success"));

    // The agent runs inside the server: its descriptors and threads are the server's.
    let pid = server.pid().unwrap();
    let (fds, tasks) = (format!("/proc/{pid}/fd"), format!("/proc/{pid}/task"));
    let (base_fds, base_tasks) = (count(fds.clone()), count(tasks.clone()));
    let pods = &pods;
    let runs = futures::stream::iter(0..500)
        .map(|_| async move { kube_exec(pods, &["true"]).await.1 })
        .buffer_unordered(4);
    let statuses: Vec<_> = runs.collect().await;
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| s.status.as_deref() != Some("Success"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} execs failed: {:?}",
        failed.len(),
        failed.first()
    );
    eventually(
        "the server's descriptors and threads back at their baseline",
        Duration::from_secs(60),
        || {
            let (fds, tasks) = (fds.clone(), tasks.clone());
            async move {
                let now = (count(fds), count(tasks));
                (now.0 <= base_fds && now.1 <= base_tasks).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_takes_its_command_along() {
    let server = server_with_shell(Runtime::Embedded).await;
    let ps = || server.kubectl_ok(&["exec", "sh", "--", "ps", "-o", "args"]);
    for env in [&[][..], &SPDY[..]] {
        let mut child = kubectl(&server, "kubectl", env)
            .args(["exec", "-i", "sh", "--", "sleep", "4321"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        eventually("the command runs", Duration::from_secs(30), || async {
            ps().contains("sleep 4321").then_some(())
        })
        .await;
        child.kill().unwrap();
        let _ = child.wait();
        eventually("the command is gone", Duration::from_secs(30), || async {
            (!ps().contains("sleep 4321")).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn the_agent_refuses_clients_without_the_clusters_certificate() {
    use base64::Engine;
    let server = server_with_shell(Runtime::Embedded).await;
    let url = format!("https://127.0.0.1:{}/healthz", server.agent_port());
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sk", "--max-time", "10"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let anonymous = curl(&[]);
    assert!(!anonymous.status.success(), "{anonymous:?}");
    // The same request with a certificate the cluster's CA signed is served.
    let config = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let field = |name: &str| -> String {
        let line = config
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap();
        line.trim_start_matches(':')
            .trim()
            .trim_matches('"')
            .to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in [
        ("client-certificate-data", "c.pem"),
        ("client-key-data", "k.pem"),
    ] {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(field(name))
            .unwrap();
        std::fs::write(dir.path().join(file), pem).unwrap();
    }
    let cert = dir.path().join("c.pem").display().to_string();
    let key = dir.path().join("k.pem").display().to_string();
    let admitted = curl(&["--cert", &cert, "--key", &key]);
    assert_eq!(String::from_utf8_lossy(&admitted.stdout), "ok");
}
