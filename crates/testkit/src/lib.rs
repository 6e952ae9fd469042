//! Test fixtures shared by kubox's crates. Tests use real components: these
//! start them on free loopback ports in temporary directories and clean up
//! when dropped.

pub mod apart;
pub mod hollow;
pub mod hosts;
pub mod images;
pub mod node;

pub use apart::Apart;
pub use hollow::{HollowAgent, HollowCluster};

pub use hosts::{Host, Hosts};
pub use node::Runtime;

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// kubectl 1.35, which scripts/test installs beside the kubectl on PATH so
/// that the API is checked against a newer client as well.
pub const KUBECTL_1_35: &str = "/usr/local/lib/kubox-test/kubectl-1.35";

/// Runs the kubectl on PATH with the credentials of `kubeconfig` (a user's,
/// a node's), not a server's admin ones.
pub fn kubectl_as(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

/// Runs `command` with `input` on its standard input; its whole output.
pub fn output_with_input(command: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", command.get_program()));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(input)
        .expect("writing the command's input");
    child.wait_with_output().expect("waiting for the command")
}

/// The whitespace-separated columns of each non-blank line of a table
/// kubectl printed.
pub fn table_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The cell under `column` in the row of a table kubectl printed whose
/// first cell is `name`, read by the header's offsets (kubectl pads
/// columns by three spaces or more), so an empty cell or a header of two
/// words (`ACCESS MODES`) reads as kubectl meant it.
pub fn table_cell(table: &str, name: &str, column: &str) -> Option<String> {
    let mut lines = table.lines();
    let header = lines.next()?;
    let mut starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| !c.is_whitespace() && (i == 0 || header[..i].ends_with("   ")))
        .map(|(i, _)| i)
        .collect();
    starts.push(usize::MAX);
    let at = starts
        .windows(2)
        .find(|w| header[w[0]..w[1].min(header.len())].trim() == column)?;
    let row = lines.find(|l| l.split_whitespace().next() == Some(name))?;
    let cell = row.get(at[0].min(row.len())..at[1].min(row.len()))?;
    Some(cell.trim().to_owned())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Polls `check` until it returns `Some`, failing the test with `what` once
/// `timeout` has passed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Imports a busybox image built on the spot (`images::write_busybox_archive`)
/// as `reference` into the node whose data directory is `data_dir`, with
/// `bin image import`.
pub fn import_busybox(bin: &std::path::Path, data_dir: &std::path::Path, reference: &str) {
    let archive = data_dir.join("busybox.tar");
    images::write_busybox_archive(&archive, reference);
    let out = Command::new(bin)
        .args(["image", "import", "--data-dir"])
        .arg(data_dir)
        .arg(&archive)
        .output()
        .expect("running kubox image import");
    assert!(
        out.status.success(),
        "kubox image import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGKILLs a fixture's process, if running, and reaps it.
fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How long a fixture's process may take to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// SIGTERMs a fixture's process, if running, and reaps it: a graceful
/// stop, which must end within [`STOP_TIMEOUT`]. Returns how it exited.
async fn terminate(child: &mut Option<Child>, what: &str) -> Option<std::process::ExitStatus> {
    let mut child = child.take()?;
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not stop within {STOP_TIMEOUT:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The path of one of the example applications' binaries (examples/apps),
/// built first if needed; they sit beside the `kubox` binary `beside`.
pub fn example_binary(beside: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = beside
        .parent()
        .expect("the kubox binary is in a target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "-p",
        "kubox-example-apps",
        "--bin",
        name,
    ]);
    if dir.file_name().is_some_and(|d| d == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("running cargo build for the example apps");
    assert!(status.success(), "building example {name}");
    dir.join(name)
}

/// The pod spec of an example go-multiroute (`image`, one of those
/// `build_example_images` makes) serving the routes of ConfigMap
/// `config_map` on port 3000, ready once it listens.
pub fn multiroute_spec(image: &str, config_map: &str) -> serde_json::Value {
    serde_json::json!({
        "containers": [{
            "name": "go-multiroute", "image": image,
            "command": ["/multiroute", "--config", "/config/config.yml"],
            "ports": [{"containerPort": 3000}],
            "readinessProbe": {"tcpSocket": {"port": 3000}, "periodSeconds": 1},
            "volumeMounts": [{"name": "config", "mountPath": "/config"}],
        }],
        "volumes": [{"name": "config", "configMap": {"name": config_map}}],
    })
}

/// A single-member etcd cluster on free loopback ports, with its data in a
/// temporary directory. Killed and removed on drop.
pub struct EtcdProcess(EtcdCluster);

impl EtcdProcess {
    pub async fn start() -> Self {
        Self(EtcdCluster::start(1).await)
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint(0)
    }

    /// Kills etcd with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.0.kill(0);
    }

    /// Starts etcd again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.0.restart(0).await;
    }
}

/// Asks etcd's /health over a plain HTTP/1.0 request.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// A real etcd cluster of several members on loopback, each with its own
/// data directory, for tests of what survives losing one.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    token: String,
}

struct EtcdMember {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdCluster {
    /// Starts `size` members and waits until each reports healthy.
    pub async fn start(size: usize) -> Self {
        let members = (0..size)
            .map(|_| EtcdMember {
                child: None,
                dir: tempfile::tempdir().expect("temporary directory for etcd"),
                client_port: free_port(),
                peer_port: free_port(),
            })
            .collect();
        let mut cluster = Self {
            members,
            token: format!("kubox-test-{}-{}", std::process::id(), free_port()),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    /// The client URLs of every member, comma-separated (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].client_port)
    }

    /// Kills one member (SIGKILL).
    pub fn kill(&mut self, member: usize) {
        kill(&mut self.members[member].child);
    }

    /// Starts a killed member again on its data directory and waits until it is healthy.
    pub async fn restart(&mut self, member: usize) {
        self.kill(member);
        self.spawn(member);
        self.wait_healthy(member).await;
    }

    /// Stops every member gracefully (SIGTERM), as a shutdown of all hosts.
    pub async fn stop(&mut self) {
        for member in &mut self.members {
            terminate(&mut member.child, "etcd").await;
        }
    }

    /// Starts every member that is not running on its data directory and
    /// waits until all are healthy (together: one alone has no quorum).
    pub async fn start_stopped(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await;
        }
    }

    fn name(member: usize) -> String {
        format!("member-{member}")
    }

    fn spawn(&mut self, member: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{}=http://127.0.0.1:{}", Self::name(i), m.peer_port))
            .collect();
        let m = &self.members[member];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .arg(format!("--name={}", Self::name(member)))
            .arg(format!(
                "--data-dir={}",
                m.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd: is etcd-server installed? (scripts/test installs it)");
        self.members[member].child = Some(child);
    }

    async fn wait_healthy(&self, member: usize) {
        let port = self.members[member].client_port;
        eventually(
            "an etcd member to report healthy",
            Duration::from_secs(60),
            || async move { health(port).then_some(()) },
        )
        .await;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            kill(&mut member.child);
        }
    }
}

/// A real OCI registry (Debian's docker-registry) on a free loopback port,
/// with its storage in a temporary directory; killed on drop.
pub struct Registry {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary registry directory");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("writing the registry's configuration");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let registry = Self {
            child: Some(child),
            _dir: dir,
            port,
        };
        eventually("the registry answers", Duration::from_secs(30), || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(drop)
        })
        .await;
        registry
    }

    /// `127.0.0.1:<port>`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes an image archive as `<host>/<name>` with skopeo; the manifest
    /// digest the registry stored it under.
    pub fn push(&self, archive: &std::path::Path, name: &str) -> String {
        let digest_file = archive.with_extension("digest");
        let status = Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .status()
            .expect("running skopeo");
        assert!(status.success(), "skopeo could not push {name}");
        std::fs::read_to_string(&digest_file)
            .expect("skopeo's digest file")
            .trim()
            .to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The network names of one test cluster: its own bridge, nft tables,
/// cluster CIDR and VXLAN identifier, so clusters running at once in one
/// network namespace never meet. A slot is held through a file lock for as
/// long as this lives, so test processes never share one.
pub struct TestNet {
    slot: u16,
    _lock: std::fs::File,
}

/// How many clusters can run at once (10.100.0.0/16 up to 10.227.0.0/16).
const NET_SLOTS: u16 = 128;

impl TestNet {
    pub fn claim() -> Self {
        let dir = std::env::temp_dir().join("kubox-test-net");
        std::fs::create_dir_all(&dir).expect("the network slots' directory");
        for slot in 0..NET_SLOTS {
            let file = std::fs::File::create(dir.join(format!("{slot}.lock")))
                .expect("a network slot's lock file");
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
            {
                return Self { slot, _lock: file };
            }
        }
        panic!("all {NET_SLOTS} test network slots are taken");
    }

    /// The pod addresses of this cluster.
    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 100 + self.slot)
    }

    pub fn bridge(&self) -> String {
        format!("kbxt{}", self.slot)
    }

    pub fn nft_prefix(&self) -> String {
        format!("kubox-t{}", self.slot)
    }

    /// This cluster's DNS Service address: clusters sharing a network
    /// namespace each route their own (10.43.0.10 and up, in the range's
    /// static band, which no other Service is given).
    pub fn cluster_dns(&self) -> String {
        format!("10.43.0.{}", 10 + self.slot)
    }

    /// A number of this slot's own, for names a test makes (netns, links).
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The flags that give a server or agent these names.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--cluster-cidr".into(),
            self.cluster_cidr(),
            "--pod-bridge".into(),
            self.bridge(),
            "--nft-table-prefix".into(),
            self.nft_prefix(),
            "--vxlan-vni".into(),
            (1000 + u32::from(self.slot)).to_string(),
        ]
    }

    /// Removes what a node of this cluster made in this network namespace
    /// (nft tables, bridge, veths, VXLAN device, routes), with `kubox uninstall`.
    pub fn uninstall(&self, bin: &std::path::Path, data_dir: &std::path::Path) {
        let out = Command::new(bin)
            .arg("uninstall")
            .arg("--data-dir")
            .arg(data_dir)
            .args(self.args())
            .output()
            .expect("running kubox uninstall");
        assert!(
            out.status.success() || std::thread::panicking(),
            "kubox uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `kubox server` process on a free port with its own data directory
/// and network names ([`TestNet`]), killed and its network removed on drop.
pub struct KuboxServer {
    child: Option<Child>,
    bin: std::path::PathBuf,
    args: Vec<String>,
    dir: tempfile::TempDir,
    port: u16,
    agent_port: u16,
    net: TestNet,
}

impl KuboxServer {
    /// Starts `bin server` and waits until /readyz answers ok.
    pub async fn start(bin: impl Into<std::path::PathBuf>, extra_args: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            bin: bin.into(),
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().expect("temporary data directory"),
            port: free_port(),
            agent_port: free_port(),
            net: TestNet::claim(),
        };
        // What a crashed holder of the slot may have left.
        server.net.uninstall(&server.bin, server.dir.path());
        server.spawn().await;
        server
    }

    /// Starts `bin server` with its ingress controller on two free ports,
    /// which are returned (HTTP, HTTPS).
    pub async fn start_with_ingress(
        bin: impl Into<std::path::PathBuf>,
        extra_args: &[&str],
    ) -> (Self, u16, u16) {
        let (http, https) = (free_port(), free_port());
        let (http_arg, https_arg) = (http.to_string(), https.to_string());
        let mut args = vec![
            "--ingress-http-port",
            &http_arg,
            "--ingress-https-port",
            &https_arg,
        ];
        args.extend_from_slice(extra_args);
        (Self::start(bin, &args).await, http, https)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn net(&self) -> &TestNet {
        &self.net
    }

    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// The server's process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the node agent's HTTPS endpoint listens on.
    pub fn agent_port(&self) -> u16 {
        self.agent_port
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Runs the real kubectl against this server.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.kubectl_at(std::path::Path::new("kubectl"), args)
    }

    /// Runs kubectl, failing the test unless it succeeds; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_at_ok(std::path::Path::new("kubectl"), args)
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl's JSON")
    }

    /// The messages of the events of `reason` about objects named `name`
    /// (in the default namespace), once there is one.
    pub async fn event_messages(&self, name: &str, reason: &str, timeout: Duration) -> Vec<String> {
        eventually(&format!("a {reason} event"), timeout, || async {
            let selector = format!("involvedObject.name={name},reason={reason}");
            let events = self.kubectl_json(&["get", "events", "--field-selector", &selector]);
            let messages: Vec<String> = events["items"]
                .as_array()?
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .collect();
            (!messages.is_empty()).then_some(messages)
        })
        .await
    }

    /// Runs the kubectl binary `program` (another release than the one on
    /// PATH, such as [`KUBECTL_1_35`]) against this server.
    pub fn kubectl_at(&self, program: &std::path::Path, args: &[&str]) -> std::process::Output {
        Command::new(program)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
    }

    /// [`Self::kubectl_at`], failing the test unless it succeeds; returns its stdout.
    pub fn kubectl_at_ok(&self, program: &std::path::Path, args: &[&str]) -> String {
        let out = self.kubectl_at(program, args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's join token, `DATA/token`, which it writes once it serves.
    pub async fn join_token(&self) -> String {
        let path = self.dir.path().join("token");
        eventually(
            "the server writes its join token",
            Duration::from_secs(90),
            || async {
                let token = std::fs::read_to_string(&path).ok()?;
                token.ends_with('\n').then(|| token.trim().to_owned())
            },
        )
        .await
    }

    /// The arguments of `kubox agent --server URL --token TOKEN` joining this
    /// cluster as node `name` at `node_ip`, with its state in `dir`, on a free
    /// agent port and this cluster's network names.
    pub fn agent_join_args(
        &self,
        url: &str,
        token: &str,
        node_ip: &str,
        name: &str,
        dir: &std::path::Path,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            url.into(),
            "--token".into(),
            token.into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--node-name".into(),
            name.into(),
            "--node-ip".into(),
            node_ip.into(),
            "--agent-port".into(),
            free_port().to_string(),
            "--cluster-dns".into(),
            self.net.cluster_dns(),
        ];
        args.extend(self.net.args());
        args
    }

    /// Waits until node `name` has registered and is Ready.
    pub async fn wait_node_ready(&self, name: &str) {
        eventually("the node to register", Duration::from_secs(120), || async {
            self.kubectl(&["get", "node", name])
                .status
                .success()
                .then_some(())
        })
        .await;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{name}"),
            "--timeout=120s",
        ]);
    }

    /// Imports a busybox image built on the spot into the server's node.
    pub fn import_busybox(&self) {
        self.import_busybox_as("docker.io/library/busybox:latest");
    }

    /// Imports the busybox image under another reference (a second tag to
    /// roll out, say).
    pub fn import_busybox_as(&self, reference: &str) {
        // The agent opens (and tidies) its image store before it registers its
        // node: an import before that could lose its files to the tidying.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .kubectl(&["get", "nodes", "-o", "name"])
            .stdout
            .starts_with(b"node/")
        {
            assert!(Instant::now() < deadline, "no node registered within 60s");
            std::thread::sleep(Duration::from_millis(50));
        }
        import_busybox(&self.bin, self.dir.path(), reference);
    }

    /// `kubectl apply` of a manifest given as JSON (written to a file in the data directory).
    pub fn apply_json(&self, manifest: &serde_json::Value) {
        let file = self.dir.path().join(format!(
            "{}.json",
            manifest["metadata"]["name"].as_str().unwrap_or("manifest")
        ));
        std::fs::write(&file, manifest.to_string()).expect("writing a manifest");
        self.kubectl_ok(&["apply", "-f", file.to_str().expect("a UTF-8 path")]);
    }

    /// Runs `kubox image build` against this server's node with `args`
    /// (after `image build`), failing the test unless it succeeds.
    pub fn build_image(&self, args: &[&str]) {
        let out = Command::new(&self.bin)
            .args(["image", "build", "--data-dir"])
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("running kubox image build");
        assert!(
            out.status.success(),
            "kubox image build {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes `image` from this server's node to `registry` as `name`, as
    /// `docker push` would; the digest the registry gave it.
    pub fn push_image(&self, image: &str, registry: &Registry, name: &str) -> String {
        let archive = self.dir.path().join("push.tar");
        let out = Command::new(&self.bin)
            .args(["image", "save", "--data-dir"])
            .arg(self.dir.path())
            .args([image, "-o"])
            .arg(&archive)
            .output()
            .expect("running kubox image save");
        assert!(
            out.status.success(),
            "kubox image save {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let digest = registry.push(&archive, name);
        std::fs::remove_file(&archive).expect("removing the pushed archive");
        digest
    }

    /// Builds the example applications' images on this server's node, on
    /// busybox (imported first): `kubox.local/go-multiroute:v1` and `:v2`
    /// (the same program, saying which version it is), `kubox.local/redis:7`
    /// (Debian's redis-server and redis-cli) and `kubox.local/saythx:1.0`.
    pub fn build_example_images(&self) {
        self.import_busybox();
        let kubox = self.bin.clone();
        let add = |bin: &std::path::Path, at: &str| format!("{}:{at}", bin.display());
        let multiroute = example_binary(&kubox, "multiroute");
        for version in ["v1", "v2"] {
            self.build_image(&[
                "-t",
                &format!("kubox.local/go-multiroute:{version}"),
                "--from=busybox",
                "--add",
                &add(&multiroute, "/multiroute"),
                "--libraries",
                &format!("--env=VERSION={version}"),
                "--entrypoint=/multiroute",
                "--expose=3000",
            ]);
        }
        let saythx = example_binary(&kubox, "saythx");
        self.build_image(&[
            "-t",
            "kubox.local/saythx:1.0",
            "--from=busybox",
            "--add",
            &add(&saythx, "/usr/bin/saythx"),
            "--libraries",
            "--entrypoint=/usr/bin/saythx",
        ]);
        self.build_image(&[
            "-t",
            "kubox.local/redis:7",
            "--from=busybox",
            "--add=/usr/bin/redis-server:/usr/bin/redis-server",
            "--add=/usr/bin/redis-cli:/usr/bin/redis-cli",
            "--libraries",
            "--entrypoint=redis-server",
            r#"--cmd=["--protected-mode","no"]"#,
            "--expose=6379",
        ]);
    }

    /// Starts a busybox pod that sleeps, and waits until it runs.
    pub async fn run_sleeper(&self, name: &str) {
        self.kubectl_ok(&[
            "run",
            name,
            "--image=busybox",
            "--image-pull-policy=IfNotPresent",
            "--",
            "sleep",
            "3600",
        ]);
        eventually("the pod runs", Duration::from_secs(60), || async {
            let out = self.kubectl(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
            (out.stdout == b"Running").then_some(())
        })
        .await;
    }

    /// SIGKILL, as a crash or power cut of the process would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// SIGTERM, as a shutdown: the server gives up its leases and leaves
    /// the endpoints before it exits. Returns how it exited.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, "kubox server").await
    }

    /// Starts the server again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Restarts the server on the same data directory and ports with other
    /// extra arguments (another datastore, say).
    pub async fn restart_with(&mut self, extra_args: &[&str]) {
        self.kill();
        self.args = extra_args.iter().map(|s| s.to_string()).collect();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log_path = self.dir.path().join("server.log");
        // Appended, so a restarted server's log follows its predecessor's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log file");
        let mut command = Command::new(&self.bin);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--https-port")
            .arg(self.port.to_string())
            .arg("--agent-port")
            .arg(self.agent_port.to_string())
            .args(self.net.args());
        // Loopback unless the test gives the server other addresses.
        for flag in ["--bind-address", "--node-ip"] {
            if !self.args.iter().any(|a| a == flag) {
                command.arg(flag).arg("127.0.0.1");
            }
        }
        // Every server would ask for ports 80 and 443: only those given
        // ingress ports (`start_with_ingress`) run an ingress controller.
        if !self.args.iter().any(|a| a == "--ingress-http-port") {
            command.arg("--disable-ingress");
        }
        if !self.args.iter().any(|a| a == "--cluster-dns") {
            command.arg("--cluster-dns").arg(self.net.cluster_dns());
        }
        // Servers without a node agent all answer DNS on loopback.
        if !self.args.iter().any(|a| a == "--dns-port") {
            command.arg("--dns-port").arg(free_port().to_string());
        }
        let mut child = command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kubox server");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("kubox server exited with {status} while starting:\n{log}");
            }
            let ready = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(self.kubeconfig())
                .args(["get", "--raw", "/readyz"])
                .output()
                .is_ok_and(|out| out.status.success() && out.stdout == b"ok");
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kubox server not ready within 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }
}

impl Drop for KuboxServer {
    fn drop(&mut self) {
        self.kill();
        node::release(self.dir.path());
        self.net.uninstall(&self.bin, self.dir.path());
    }
}
