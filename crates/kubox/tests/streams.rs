//! Interactive streams end to end with stock kubectl: exec (WebSocket),
//! stdin piping, cp. Exec, which each container runtime does its own way,
//! is tested with each.

use std::io::Write;
use std::process::{Command, Stdio};

use kubox_testkit::{KuboxServer, Runtime, with_each_runtime};

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
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    buf
}

async fn exec_runs_commands_with_their_output_and_exit_code(runtime: Runtime) {
    let server = server_with_shell(runtime).await;
    let out = server.kubectl(&[
        "exec",
        "sh",
        "--",
        "sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("oops") && stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );
    assert_eq!(server.kubectl_ok(&["exec", "sh", "--", "hostname"]), "sh\n");

    // stdin is piped through byte for byte, and its end ends `cat`.
    let input = random_bytes(8 << 20);
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["exec", "-i", "sh", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || stdin.write_all(&input).unwrap())
    };
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout == input,
        "cat returned {} of {} bytes, or other bytes",
        out.stdout.len(),
        input.len()
    );

    // A command runs as the container's own process does: its user, its
    // working directory.
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "user"},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"], "workingDir": "/tmp"}],
        }
    });
    let file = server.data_dir().join("user.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    server.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    server.kubectl_ok(&["wait", "--for=condition=Ready", "pod/user", "--timeout=60s"]);
    assert_eq!(
        server.kubectl_ok(&["exec", "user", "--", "sh", "-c", "id -u; id -g; pwd"]),
        "1000\n1000\n/tmp\n"
    );

    let missing = server.kubectl(&["exec", "sh", "-c", "nope", "--", "true"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("container nope is not valid for pod sh")
    );
}

#[tokio::test]
async fn kubectl_cp_copies_both_ways_byte_exact() {
    let server = server_with_shell(Runtime::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("data.bin");
    std::fs::write(&original, random_bytes(4 << 20)).unwrap();
    server.kubectl_ok(&["cp", original.to_str().unwrap(), "sh:/tmp/data.bin"]);
    let back = dir.path().join("back.bin");
    server.kubectl_ok(&["cp", "sh:/tmp/data.bin", back.to_str().unwrap()]);
    assert!(
        std::fs::read(&original).unwrap() == std::fs::read(&back).unwrap(),
        "the copies differ"
    );
}

async fn exec_with_a_terminal_is_interactive(runtime: Runtime) {
    let server = server_with_shell(runtime).await;
    // `script` gives kubectl a terminal, as a person at a shell would have.
    let kubectl = format!("kubectl --kubeconfig {}", server.kubeconfig().display());
    let session = |command: &str, input: &str| {
        let mut child = Command::new("script")
            .args([
                "-qec",
                &format!("{kubectl} exec -it sh -- {command}"),
                "/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = session("sh -c 'tty; exit 4'", "");
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    let (code, out) = session("sh", "echo typed-$((6*7))\nexit 5\n");
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("typed-42"), "{out}");
}
