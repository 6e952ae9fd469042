//! The node agent end to end: a real `kubox server` with its agent, real
//! containers from an image built here, driven with real kubectl. Tests of
//! what each container runtime does for itself (lifecycle, limits, restart
//! adoption, leftovers) run once per runtime; the others on the default.

use std::time::Duration;

use kubox_testkit::{KuboxServer, Runtime, eventually, with_each_runtime};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const BUSYBOX: &str = "docker.io/library/busybox:latest";

with_each_runtime!(
    a_pod_runs_to_completion_with_config_from_configmaps_and_secrets,
    containers_outlive_a_killed_agent_and_are_adopted,
    limits_are_applied_and_a_container_over_its_memory_limit_is_oom_killed,
    create_delete_cycles_leave_nothing_behind,
);

/// A server whose node is named `node`, runs `runtime` and has busybox imported.
async fn server_with_busybox(runtime: Runtime) -> KuboxServer {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &runtime.server_args()).await;
    server.import_busybox();
    server
}

/// `kubectl apply` of a manifest given as JSON.
fn apply(server: &KuboxServer, manifest: &Value) {
    server.apply_json(manifest);
}

fn pod_json(server: &KuboxServer, name: &str) -> Value {
    serde_json::from_str(&server.kubectl_ok(&["get", "pod", name, "-o", "json"])).unwrap()
}

/// The text a container wrote, from its CRI log files.
fn container_output(server: &KuboxServer, pod: &str, container: &str) -> String {
    let uid = uid(server, pod);
    let dir = server
        .data_dir()
        .join(format!("agent/logs/default_{pod}_{uid}/{container}"));
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let raw = std::fs::read(entry.path()).unwrap();
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record = kubox_agent::parse_record(line).expect("CRI log records");
            text.push_str(&String::from_utf8_lossy(record.text));
            if !record.partial {
                text.push('\n');
            }
        }
    }
    text
}

/// The IDs of the containers the node's runtime holds.
fn containers(server: &KuboxServer) -> Vec<String> {
    kubox_testkit::node::containers(server.data_dir())
}

/// What the agent recorded of a container, from the ID in a pod's status.
fn record(server: &KuboxServer, container_id: &str) -> Value {
    let id = container_id.split_once("://").unwrap().1;
    let path = server
        .data_dir()
        .join(format!("agent/containers/{id}/record.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The embedded runtime's helper process, a child of the server.
fn helper_pid(server: &KuboxServer) -> Option<i64> {
    let server = server.pid().unwrap().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let parent = rest.split_whitespace().nth(1)?;
        (name == "kubox-runtime" && parent == server)
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

fn kill_9(pid: i64) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

fn uid(server: &KuboxServer, pod: &str) -> String {
    pod_json(server, pod)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Mounts the agent made, and the cgroups of these pods; none should outlive them.
fn leftovers(server: &KuboxServer, uids: &[String]) -> Vec<String> {
    let data = server.data_dir().join("agent").display().to_string();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&data))
        .map(str::to_owned)
        .collect();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for qos in ["", "besteffort/", "burstable/"] {
            for uid in uids {
                let pod = hierarchy.path().join(format!("kubepods/{qos}pod{uid}"));
                if pod.exists() {
                    found.push(pod.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn the_node_registers_ready_with_a_lease() {
    // No --runtime: the default, embedded one.
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    // Images imported while the node runs show in its status at the next heartbeat.
    let node: Value = eventually(
        "the node is ready and lists its images",
        TIMEOUT,
        || async {
            let out = server.kubectl(&["get", "node", "node", "-o", "json"]);
            let node: Value = serde_json::from_slice(&out.stdout).ok()?;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && node["status"]["images"].to_string().contains(BUSYBOX)).then_some(node)
        },
    )
    .await;
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "node");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(
        labels
            .get("node-role.kubernetes.io/control-plane")
            .is_some()
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    assert_eq!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"],
        format!("embedded://{}", env!("CARGO_PKG_VERSION"))
    );
    let table = server.kubectl_ok(&["get", "nodes"]);
    assert!(
        table.contains("Ready") && table.contains("control-plane"),
        "{table}"
    );
    let lease = server.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        "node",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "node");
}

async fn a_pod_runs_to_completion_with_config_from_configmaps_and_secrets(runtime: Runtime) {
    let server = server_with_busybox(runtime).await;
    server.kubectl_ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
    ]);
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "once"},
        "spec": {
            "nodeName": "node",
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "cat /config/greeting; echo; echo \"pw=$PASSWORD\"; hostname; grep SigIgn /proc/self/status; echo $(MSG) >&2"],
                "env": [
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "MSG", "value": "to-stderr"},
                ],
                "volumeMounts": [{"name": "config", "mountPath": "/config"}],
            }],
            "volumes": [{"name": "config", "configMap": {"name": "app"}}],
        }
    });
    apply(&server, &manifest);
    let pod = eventually("the pod succeeds", TIMEOUT, || async {
        let pod = pod_json(&server, "once");
        (pod["status"]["phase"] == "Succeeded").then_some(pod)
    })
    .await;
    let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(state["exitCode"], 0);
    assert_eq!(state["reason"], "Completed");
    assert!(
        pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}://", runtime.name()))
    );
    assert_eq!(pod["status"]["containerStatuses"][0]["image"], BUSYBOX);
    let output = server.kubectl_ok(&["logs", "once"]);
    assert_eq!(
        output,
        container_output(&server, "once", "main"),
        "kubectl logs shows what the log files hold"
    );
    for expected in ["hello", "pw=s3cret", "once", "to-stderr"] {
        assert!(
            output.lines().any(|l| l == expected),
            "{expected:?} missing from {output:?}"
        );
    }
    // The runtime passes on no signal disposition of its own: SIGPIPE
    // (ignored by Rust programs) and SIGCHLD are not ignored in the container.
    let ignored = output
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .and_then(|mask| u64::from_str_radix(mask, 16).ok())
        .expect("the container's ignored signals");
    assert_eq!(ignored & (1 << (13 - 1) | 1 << (17 - 1)), 0, "{ignored:x}");
    let table = server.kubectl_ok(&["get", "pod", "once"]);
    assert!(table.contains("Completed"), "{table}");
    let uids = [uid(&server, "once")];
    server.kubectl_ok(&["delete", "pod", "once"]);
    eventually("the pod's mounts and cgroups are gone", TIMEOUT, || async {
        leftovers(&server, &uids).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn crashing_containers_back_off_and_missing_config_waits() {
    let server = server_with_busybox(Runtime::Embedded).await;
    server.kubectl_ok(&[
        "run",
        "crash",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"nodeName":"node"}}"#,
        "--",
        "sh",
        "-c",
        "echo boom; exit 3",
    ]);
    let status = eventually("the container is in CrashLoopBackOff", TIMEOUT, || async {
        let pod = pod_json(&server, "crash");
        let s = pod["status"]["containerStatuses"][0].clone();
        (s["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(s)
    })
    .await;
    assert!(status["restartCount"].as_i64().unwrap() >= 1);
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(status["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(pod_json(&server, "crash")["status"]["phase"], "Running");
    let table = server.kubectl_ok(&["get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    assert_eq!(server.kubectl_ok(&["logs", "crash"]), "boom\n");
    assert_eq!(
        server.kubectl_ok(&["logs", "crash", "--previous"]),
        "boom\n"
    );

    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "waits"},
        "spec": {
            "nodeName": "node",
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "c", "mountPath": "/c"}]}],
            "volumes": [{"name": "c", "configMap": {"name": "later"}}],
        }
    });
    apply(&server, &manifest);
    eventually("a FailedMount event", TIMEOUT, || async {
        let events = server.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=waits",
            "-o",
            "json",
        ]);
        events.contains("FailedMount").then_some(())
    })
    .await;
    let table = server.kubectl_ok(&["get", "pod", "waits"]);
    assert!(table.contains("ContainerCreating"), "{table}");
    let early = server.kubectl(&["logs", "waits"]);
    assert_eq!(
        String::from_utf8_lossy(&early.stderr).trim(),
        "Error from server (BadRequest): container \"main\" in pod \"waits\" is waiting to start: ContainerCreating"
    );
    server.kubectl_ok(&["create", "configmap", "later", "--from-literal=k=v"]);
    eventually(
        "the pod runs once its ConfigMap exists",
        Duration::from_secs(90),
        || async { (pod_json(&server, "waits")["status"]["phase"] == "Running").then_some(()) },
    )
    .await;

    // sh as PID 1 ignores SIGTERM: the grace period ends in SIGKILL.
    let uids = [uid(&server, "crash"), uid(&server, "waits")];
    server.kubectl_ok(&["delete", "pod", "crash", "waits", "--grace-period=2"]);
    let pods = server.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert!(pods.is_empty(), "{pods}");
    eventually("the pods' mounts and cgroups are gone", TIMEOUT, || async {
        leftovers(&server, &uids).is_empty().then_some(())
    })
    .await;
}

async fn containers_outlive_a_killed_agent_and_are_adopted(runtime: Runtime) {
    let mut server = server_with_busybox(runtime).await;
    server.kubectl_ok(&[
        "run",
        "long",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"nodeName":"node"}}"#,
        "--",
        "sleep",
        "3600",
    ]);
    let before = eventually("the pod runs", TIMEOUT, || async {
        let pod = pod_json(&server, "long");
        (pod["status"]["phase"] == "Running")
            .then(|| pod["status"]["containerStatuses"][0]["containerID"].clone())
    })
    .await;
    assert_eq!(containers(&server).len(), 1);

    server.kill();
    server.restart().await;
    let uid = uid(&server, "long");
    let before = before.as_str().unwrap();
    let id = before
        .strip_prefix(&format!("{}://", runtime.name()))
        .unwrap()
        .to_owned();
    assert_eq!(
        containers(&server),
        std::slice::from_ref(&id),
        "the container outlived its agent"
    );

    // The embedded runtime's helper, killed, is started again by the next
    // call that needs it: the restart below.
    let helper = match runtime {
        Runtime::Embedded => {
            let helper = eventually("the runtime's helper runs", TIMEOUT, || async {
                helper_pid(&server)
            })
            .await;
            kill_9(helper);
            Some(helper)
        }
        Runtime::Runc => None,
    };

    // The restarted agent owns the old container: when it dies, it is
    // restarted once, and the old one is cleaned away.
    let pid = record(&server, before)["pid"].as_i64().unwrap();
    kill_9(pid);
    let status = eventually("the container is restarted", TIMEOUT, || async {
        let pod = pod_json(&server, "long");
        let status = pod["status"]["containerStatuses"][0].clone();
        (status["restartCount"] == 1 && status["state"]["running"].is_object()).then_some(status)
    })
    .await;
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 137);
    assert_ne!(status["containerID"], before);
    assert_eq!(
        containers(&server).len(),
        1,
        "exactly one container runs for the pod"
    );
    if let Some(helper) = helper {
        assert!(helper_pid(&server).is_some_and(|p| p != helper));
    }

    server.kubectl_ok(&["delete", "pod", "long", "--grace-period=1"]);
    assert!(containers(&server).is_empty());
    eventually("the pod's mounts and cgroups are gone", TIMEOUT, || async {
        leftovers(&server, std::slice::from_ref(&uid))
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_logs_follows_tails_and_picks_containers() {
    let server = server_with_busybox(Runtime::Embedded).await;
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {
            "nodeName": "node",
            "restartPolicy": "Never",
            "initContainers": [{"name": "setup", "image": "busybox", "command": ["echo", "init done"]}],
            "containers": [
                {"name": "counter", "image": "busybox",
                 "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done"]},
                {"name": "quiet", "image": "busybox", "command": ["true"]},
            ],
        }
    });
    apply(&server, &manifest);
    // kubectl picks a container itself; the API's own answer to a bare request:
    let ambiguous = server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/talker/log"]);
    let stderr = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(
        stderr.contains("a container name must be specified for pod talker, choose one of: [counter quiet] or one of the init containers: [setup]"),
        "{stderr}"
    );
    eventually("the counter starts", TIMEOUT, || async {
        let pod = pod_json(&server, "talker");
        pod["status"]["containerStatuses"]
            .to_string()
            .contains("startedAt")
            .then_some(())
    })
    .await;
    // -f streams until the container ends, so every line arrives.
    let followed = server.kubectl_ok(&["logs", "-f", "talker", "-c", "counter"]);
    assert_eq!(followed, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    assert_eq!(
        server.kubectl_ok(&["logs", "talker", "-c", "counter", "--tail=2"]),
        "line 4\nline 5\n"
    );
    assert_eq!(
        server.kubectl_ok(&["logs", "talker", "-c", "setup"]),
        "init done\n"
    );
    let stamped = server.kubectl_ok(&["logs", "talker", "-c", "setup", "--timestamps"]);
    let (time, text) = stamped.trim_end().split_once(' ').unwrap();
    assert!(time.ends_with('Z') && time.contains('T'), "{stamped}");
    assert_eq!(text, "init done");
    let all = server.kubectl_ok(&["logs", "talker", "--all-containers", "--prefix"]);
    assert!(
        all.contains("[pod/talker/setup] init done") && all.contains("[pod/talker/counter] line 5"),
        "{all}"
    );
    server.kubectl_ok(&["delete", "pod", "talker", "--grace-period=1"]);
}

#[test]
fn images_from_skopeo_archives_are_imported_listed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("busybox-oci.tar");
    kubox_testkit::images::write_busybox_archive(&oci, BUSYBOX);
    let docker = dir.path().join("busybox-docker.tar");
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!(
            "docker-archive:{}:example.com/tools/busybox:v3",
            docker.display()
        ))
        .status()
        .unwrap();
    assert!(copied.success());
    let kubox = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubox"))
            .arg("image")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubox(&["import", docker.to_str().unwrap()]);
    kubox(&["import", oci.to_str().unwrap()]);
    let listed = kubox(&["ls"]);
    assert!(
        listed.contains("example.com/tools/busybox:v3") && listed.contains(BUSYBOX),
        "{listed}"
    );
    kubox(&["rm", "example.com/tools/busybox:v3"]);
    let listed = kubox(&["ls"]);
    assert!(
        !listed.contains("example.com/tools/busybox:v3") && listed.contains(BUSYBOX),
        "{listed}"
    );
}

async fn limits_are_applied_and_a_container_over_its_memory_limit_is_oom_killed(runtime: Runtime) {
    let server = server_with_busybox(runtime).await;
    let limited = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "limited"},
        "spec": {
            "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "3600"],
                "resources": {
                    "requests": {"cpu": "100m"},
                    "limits": {"memory": "64Mi", "cpu": "250m"},
                },
            }],
        }
    });
    apply(&server, &limited);
    let pod = eventually("the limited pod runs", TIMEOUT, || async {
        let pod = pod_json(&server, "limited");
        (pod["status"]["phase"] == "Running").then_some(pod)
    })
    .await;
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    let container_id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap();
    let cgroup = format!(
        "kubepods/burstable/pod{}/{}",
        pod["metadata"]["uid"].as_str().unwrap(),
        container_id.split_once("://").unwrap().1
    );
    let read = |hierarchy: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{hierarchy}/{cgroup}/{file}"))
            .unwrap_or_else(|e| panic!("{hierarchy}/{cgroup}/{file}: {e}"))
            .trim()
            .to_owned()
    };
    // Upstream's conversions: 1024 shares a CPU, the quota per 100 ms period.
    assert_eq!(read("cpu", "cpu.shares"), "102");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64 << 20).to_string()
    );
    // cpuacct is a hierarchy of its own here: the container is in it too.
    let pid = record(&server, container_id)["pid"].as_i64().unwrap();
    assert!(
        read("cpuacct", "cgroup.procs")
            .lines()
            .any(|p| p == pid.to_string()),
        "the container's process is in its cpuacct cgroup"
    );
    // A Burstable container's OOM score is upstream's, from its memory
    // request (its limit here) over the node's memory; the agent's own
    // score is untouched.
    let node: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "node", "node", "-o", "json"])).unwrap();
    let capacity: i64 = node["status"]["capacity"]["memory"]
        .as_str()
        .unwrap()
        .trim_end_matches("Ki")
        .parse::<i64>()
        .unwrap()
        * 1024;
    let score = (1000 - 1000 * (64 << 20) / capacity).clamp(2, 999);
    let oom_score_adj = |pid: i64| {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(oom_score_adj(pid), score.to_string());
    assert_eq!(
        oom_score_adj(server.pid().unwrap() as i64),
        oom_score_adj(std::process::id() as i64)
    );

    let hungry = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hungry"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "busybox",
                // dd holds a 64 MiB block in memory, twice the limit.
                "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"],
                "resources": {"limits": {"memory": "32Mi", "cpu": "500m"}},
            }],
        }
    });
    apply(&server, &hungry);
    let pod = eventually("the pod fails", TIMEOUT, || async {
        let pod = pod_json(&server, "hungry");
        (pod["status"]["phase"] == "Failed").then_some(pod)
    })
    .await;
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled");
    assert_eq!(terminated["exitCode"], 137);
    let table = server.kubectl_ok(&["get", "pod", "hungry"]);
    assert!(table.contains("OOMKilled"), "{table}");
    server.kubectl_ok(&["delete", "pod", "hungry", "limited", "--grace-period=1"]);
}

#[tokio::test]
async fn probes_drive_readiness_and_restarts_and_hooks_run() {
    let server = server_with_busybox(Runtime::Embedded).await;
    let shared = server.data_dir().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probed"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "shared", "hostPath": {"path": shared.to_str().unwrap()}}],
            "containers": [
                {
                    // Serves HTTP only after two seconds: ready then, not before.
                    "name": "web", "image": "busybox",
                    "command": ["sh", "-c", "mkdir /www && echo ok > /www/index.html && sleep 2 && exec httpd -f -p 8080 -h /www"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 4, "periodSeconds": 1},
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                    "lifecycle": {
                        "postStart": {"exec": {"command": ["sh", "-c", "echo started > /shared/post-start"]}},
                        "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /shared/pre-stop"]}},
                    },
                },
                {
                    // Healthy until /tmp/dead appears, then restarted by its liveness probe.
                    "name": "mortal", "image": "busybox",
                    "command": ["sh", "-c", "sleep 2; touch /tmp/dead; sleep 3600"],
                    "livenessProbe": {"exec": {"command": ["sh", "-c", "test ! -f /tmp/dead"]}, "periodSeconds": 1, "failureThreshold": 1},
                },
            ],
        }
    });
    apply(&server, &manifest);
    let status = |name: &'static str| {
        let pod = pod_json(&server, "probed");
        pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_default()
    };
    eventually("web runs but is not ready yet", TIMEOUT, || async {
        let s = status("web");
        (s["state"]["running"].is_object() && s["ready"] == false).then_some(())
    })
    .await;
    eventually("web turns ready once it serves HTTP", TIMEOUT, || async {
        (status("web")["ready"] == true).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(shared.join("post-start")).unwrap(),
        "started\n"
    );
    eventually(
        "mortal is restarted by its liveness probe",
        TIMEOUT,
        || async { (status("mortal")["restartCount"].as_i64() >= Some(1)).then_some(()) },
    )
    .await;
    let events = server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=probed",
        "-o",
        "json",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("Container mortal failed liveness probe, will be restarted"),
        "{events}"
    );
    assert_eq!(
        status("web")["restartCount"],
        0,
        "web's liveness probe keeps passing"
    );

    server.kubectl_ok(&["delete", "pod", "probed"]);
    assert_eq!(
        std::fs::read_to_string(shared.join("pre-stop")).unwrap(),
        "stopping\n"
    );
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_by_tag_and_digest() {
    let registry = kubox_testkit::Registry::start().await;
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    let archive = server.data_dir().join("image.tar");
    kubox_testkit::images::write_busybox_archive(&archive, BUSYBOX);
    registry.push(&archive, "tools/busybox:1.0");
    let image = format!("{}/tools/busybox:1.0", registry.host());

    let run = |name: &str, image: &str| {
        server.kubectl_ok(&[
            "run",
            name,
            &format!("--image={image}"),
            "--restart=Never",
            "--",
            "echo",
            "pulled",
        ]);
    };
    run("by-tag", &image);
    let pod = eventually("the pulled image runs", TIMEOUT, || async {
        let pod = pod_json(&server, "by-tag");
        (pod["status"]["phase"] == "Succeeded").then_some(pod)
    })
    .await;
    assert_eq!(server.kubectl_ok(&["logs", "by-tag"]), "pulled\n");
    let image_id = pod["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap()
        .to_owned();
    let digest = image_id.split_once('@').unwrap().1.to_owned();
    assert!(digest.starts_with("sha256:"), "{image_id}");
    let events = server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=by-tag",
        "-o",
        "json",
    ]);
    assert!(
        events.contains(&format!("Pulling image \\\"{image}\\\"")),
        "{events}"
    );
    assert!(events.contains("Successfully pulled image"), "{events}");

    // Pinned by the digest the registry gave: runs. Pinned by another: refused.
    let pinned = format!("{}/tools/busybox@{digest}", registry.host());
    run("by-digest", &pinned);
    eventually("the pinned image runs", TIMEOUT, || async {
        (pod_json(&server, "by-digest")["status"]["phase"] == "Succeeded").then_some(())
    })
    .await;
    let wrong = format!(
        "{}/tools/busybox@sha256:{}",
        registry.host(),
        "0".repeat(64)
    );
    run("wrong-digest", &wrong);
    run("missing", &format!("{}/tools/nothing:1.0", registry.host()));
    for name in ["wrong-digest", "missing"] {
        eventually("a pull that fails backs off", TIMEOUT, || async {
            let reason = pod_json(&server, name)["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
            (reason == "ImagePullBackOff").then_some(())
        })
        .await;
    }
    let table = server.kubectl_ok(&["get", "pod", "missing"]);
    assert!(
        table.contains("ImagePullBackOff") || table.contains("ErrImagePull"),
        "{table}"
    );
    server.kubectl_ok(&["delete", "pods", "--all", "--grace-period=1"]);
}

async fn create_delete_cycles_leave_nothing_behind(runtime: Runtime) {
    let server = server_with_busybox(runtime).await;
    let mut uids = Vec::new();
    for i in 0..20 {
        let name = format!("cycle-{i}");
        server.run_sleeper(&name).await;
        uids.push(uid(&server, &name));
        server.kubectl_ok(&["delete", "pod", &name, "--grace-period=0"]);
    }
    eventually("every mount and cgroup is released", TIMEOUT, || async {
        leftovers(&server, &uids).is_empty().then_some(())
    })
    .await;
    assert_eq!(
        containers(&server),
        Vec::<String>::new(),
        "no container is left"
    );
    let pod_dirs = std::fs::read_dir(server.data_dir().join("agent/pods"))
        .unwrap()
        .count();
    assert_eq!(pod_dirs, 0, "no pod directory is left");
    let container_dirs = std::fs::read_dir(server.data_dir().join("agent/containers"))
        .unwrap()
        .count();
    assert_eq!(container_dirs, 0, "no container directory is left");
}
