//! Jobs end to end: real busybox pods on a real `kubox server`, driven and
//! read with stock kubectl — completions and parallelism, Indexed Jobs,
//! the backoff limit, TTL after finished, and Jobs made from CronJobs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
const TIMEOUT: Duration = Duration::from_secs(120);

/// A server, with `extra` arguments, whose node `node` has busybox as `busybox:1.0`.
async fn cluster(extra: &[&str]) -> KuboxServer {
    let mut args = vec!["--node-name", "node"];
    args.extend(extra);
    let server = KuboxServer::start(KUBOX, &args).await;
    server.wait_node_ready("node").await;
    server.import_busybox_as("docker.io/library/busybox:1.0");
    server
}

/// A Job of busybox running `script` in `sh -c`.
fn job(name: &str, spec: Value, script: &str) -> Value {
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "busybox:1.0", "command": ["sh", "-c", script]}]
                }
            }
        }
    });
    for (k, v) in spec.as_object().unwrap() {
        job["spec"][k] = v.clone();
    }
    job
}

fn get_json(server: &KuboxServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).unwrap()
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn job_pods(server: &KuboxServer, name: &str) -> Vec<Value> {
    items(&get_json(
        server,
        &[
            "get",
            "pods",
            "-l",
            &format!("batch.kubernetes.io/job-name={name}"),
        ],
    ))
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Waits for the Job's condition `type_` to be True; the Job then.
async fn job_condition(server: &KuboxServer, name: &str, type_: &str) -> Value {
    eventually(&format!("job/{name} to be {type_}"), TIMEOUT, || async {
        let j = get_json(server, &["get", "job", name]);
        (condition(&j, type_)["status"] == "True").then_some(j)
    })
    .await
}

/// `kubectl get <what> <name>`'s header and row, split into columns.
fn table(server: &KuboxServer, what: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let out = server.kubectl_ok(&["get", what, name]);
    let mut lines = out.lines().map(|l| {
        l.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    });
    (lines.next().unwrap(), lines.next().unwrap())
}

fn events(server: &KuboxServer, name: &str, reason: &str) -> Vec<String> {
    items(&get_json(
        server,
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.kind=Job,involvedObject.name={name},reason={reason}"),
        ],
    ))
    .iter()
    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
    .collect()
}

#[tokio::test]
async fn jobs_run_to_completion_in_parallel_and_fail_past_their_backoff_limit() {
    let server = cluster(&[]).await;
    server.apply_json(&job(
        "three",
        json!({"completions": 3, "parallelism": 2}),
        "sleep 2",
    ));

    // The API server selects the Job's pods by its UID and labels them so.
    let created = get_json(&server, &["get", "job", "three"]);
    let uid = created["metadata"]["uid"].as_str().unwrap();
    assert_eq!(created["spec"]["manualSelector"], false);
    assert_eq!(
        created["spec"]["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    );
    let labels = &created["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["batch.kubernetes.io/job-name"], "three");
    assert_eq!(labels["job-name"], "three");
    assert_eq!(labels["controller-uid"], uid);
    assert_eq!(created["metadata"]["labels"], *labels);

    // Never more than two at once.
    let most_active = AtomicUsize::new(0);
    let done = eventually("job/three to complete", TIMEOUT, || async {
        let pods = job_pods(&server, "three");
        let running = pods
            .iter()
            .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Pending" | "Running")))
            .count();
        most_active.fetch_max(running, Ordering::SeqCst);
        let j = get_json(&server, &["get", "job", "three"]);
        (condition(&j, "Complete")["status"] == "True").then_some(j)
    })
    .await;
    let most_active = most_active.load(Ordering::SeqCst);
    assert!(most_active <= 2, "{most_active} pods ran at once");
    let status = &done["status"];
    assert_eq!(status["succeeded"], 3);
    assert!(status["active"].is_null(), "{status}");
    assert_eq!(status["ready"], 0);
    assert_eq!(status["terminating"], 0);
    assert!(status["startTime"].is_string() && status["completionTime"].is_string());
    assert_eq!(
        status["uncountedTerminatedPods"],
        json!({}),
        "every pod is counted"
    );
    let met = condition(&done, "SuccessCriteriaMet");
    assert_eq!(
        (&met["status"], &met["reason"], &met["message"]),
        (
            &json!("True"),
            &json!("CompletionsReached"),
            &json!("Reached expected number of succeeded pods")
        )
    );
    assert_eq!(condition(&done, "Complete")["reason"], "CompletionsReached");
    assert_eq!(events(&server, "three", "Completed"), ["Job completed"]);
    assert_eq!(events(&server, "three", "SuccessfulCreate").len(), 3);

    let pods = job_pods(&server, "three");
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert!(p["metadata"]["finalizers"].is_null(), "released: {p}");
        assert_eq!(
            p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"],
            uid
        );
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["controller"]),
            (&json!("Job"), &json!(true))
        );
        assert!(
            p["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("three-")
        );
    }
    let (header, row) = table(&server, "jobs", "three");
    assert_eq!(header, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    assert_eq!(row[..3], ["three", "Complete", "3/3"]);

    // A Job whose pods fail gives up after backoffLimit + 1 failures.
    server.apply_json(&job("failing", json!({"backoffLimit": 1}), "exit 3"));
    let failed = job_condition(&server, "failing", "Failed").await;
    assert_eq!(failed["status"]["failed"], 2);
    assert!(failed["status"]["succeeded"].is_null());
    assert!(failed["status"]["completionTime"].is_null());
    for type_ in ["FailureTarget", "Failed"] {
        let c = condition(&failed, type_);
        assert_eq!(
            (&c["reason"], &c["message"]),
            (
                &json!("BackoffLimitExceeded"),
                &json!("Job has reached the specified backoff limit")
            ),
            "{type_}"
        );
    }
    assert_eq!(
        events(&server, "failing", "BackoffLimitExceeded"),
        ["Job has reached the specified backoff limit"]
    );
    assert_eq!(job_pods(&server, "failing").len(), 2);
    let (_, row) = table(&server, "jobs", "failing");
    assert_eq!(row[..3], ["failing", "Failed", "0/1"]);
}

#[tokio::test]
async fn indexed_jobs_run_each_index_once_and_finished_jobs_expire() {
    let server = cluster(&[]).await;
    server.apply_json(&job(
        "idx",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
               "ttlSecondsAfterFinished": 5}),
        "test \"$JOB_COMPLETION_INDEX\" = \"$(hostname | sed s/idx-//)\"",
    ));
    let done = job_condition(&server, "idx", "Complete").await;
    assert_eq!(done["status"]["completedIndexes"], "0-2");
    assert_eq!(done["status"]["succeeded"], 3);
    let mut indexes: Vec<String> = job_pods(&server, "idx")
        .iter()
        .map(|p| {
            let i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(
                p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"],
                i.as_str()
            );
            assert_eq!(p["spec"]["hostname"], format!("idx-{i}"));
            assert!(
                p["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("idx-{i}-"))
            );
            i
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);

    // Five seconds after it completed, the Job goes, and its pods with it.
    eventually("job/idx to be deleted after its TTL", TIMEOUT, || async {
        let gone = !server.kubectl(&["get", "job", "idx"]).status.success()
            && job_pods(&server, "idx").is_empty();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_made_from_a_cronjob_runs_its_template() {
    let server = cluster(&["--disable-controllers=cronjob"]).await;
    server.kubectl_ok(&[
        "create",
        "cronjob",
        "nightly",
        "--image=busybox:1.0",
        "--schedule=0 3 * * *",
        "--",
        "true",
    ]);
    assert_eq!(
        server
            .kubectl_ok(&["create", "job", "manual", "--from=cronjob/nightly"])
            .trim(),
        "job.batch/manual created"
    );
    let j = get_json(&server, &["get", "job", "manual"]);
    assert_eq!(
        j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    job_condition(&server, "manual", "Complete").await;
    let (header, row) = table(&server, "cronjobs", "nightly");
    assert_eq!(
        header,
        [
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE"
        ]
    );
    assert_eq!(
        row[..6],
        ["nightly", "0 3 * * *", "<none>", "False", "0", "<none>"]
    );
}

/// `kubectl create -f -` of `manifest`; kubectl's stderr when it fails.
fn create_refused(server: &KuboxServer, manifest: &Value) -> String {
    let out = kubox_testkit::output_with_input(
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .args(["create", "-f", "-"]),
        manifest.to_string().as_bytes(),
    );
    assert!(!out.status.success(), "created: {manifest}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_pod_failure_policy_fails_ignores_or_counts_failures_by_exit_code() {
    let server = cluster(&[]).await;
    let policy = json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]});

    // Exit code 42 fails the Job at once, whatever the backoff limit.
    server.apply_json(&job(
        "fatal",
        json!({"backoffLimit": 6, "podFailurePolicy": policy}),
        "exit 42",
    ));
    let created = get_json(&server, &["get", "job", "fatal"]);
    assert_eq!(created["spec"]["podReplacementPolicy"], "Failed");
    assert_eq!(
        created["spec"]["podFailurePolicy"]["rules"][2]["onPodConditions"][0]["status"],
        "True"
    );
    let failed = job_condition(&server, "fatal", "Failed").await;
    let pods = job_pods(&server, "fatal");
    assert_eq!(pods.len(), 1, "no replacement for a fatal failure");
    let message = format!(
        "Container main for pod default/{} failed with exit code 42 matching FailJob rule at index 0",
        pods[0]["metadata"]["name"].as_str().unwrap()
    );
    for type_ in ["FailureTarget", "Failed"] {
        let c = condition(&failed, type_);
        assert_eq!(
            (&c["reason"], &c["message"]),
            (&json!("PodFailurePolicy"), &json!(message)),
            "{type_}"
        );
    }
    assert_eq!(failed["status"]["failed"], 1);
    assert_eq!(events(&server, "fatal", "PodFailurePolicy"), [message]);
    let (_, row) = table(&server, "jobs", "fatal");
    assert_eq!(row[..3], ["fatal", "Failed", "0/1"]);

    // Exit code 3 is ignored: with no failure allowed, the Job still
    // replaces its pod rather than fail, and counts nothing.
    server.apply_json(&job(
        "flaky",
        json!({"backoffLimit": 0, "podFailurePolicy": policy}),
        "exit 3",
    ));
    let ignored = eventually("two ignored failures of job/flaky", TIMEOUT, || async {
        let pods = job_pods(&server, "flaky");
        let failed = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .count();
        (failed >= 2).then_some(pods)
    })
    .await;
    for p in ignored.iter().filter(|p| p["status"]["phase"] == "Failed") {
        let state = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(state["exitCode"], 3, "{p}");
    }
    let j = get_json(&server, &["get", "job", "flaky"]);
    assert!(condition(&j, "Failed").is_null(), "{j}");
    assert!(condition(&j, "FailureTarget").is_null(), "{j}");
    assert!(j["status"]["failed"].is_null(), "{}", j["status"]);

    // Any other exit code counts toward the limit as without a policy.
    server.apply_json(&job(
        "counted",
        json!({"backoffLimit": 0, "podFailurePolicy": policy}),
        "exit 1",
    ));
    let failed = job_condition(&server, "counted", "Failed").await;
    assert_eq!(
        condition(&failed, "Failed")["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(failed["status"]["failed"], 1);
}

#[tokio::test]
async fn a_bad_pod_failure_policy_is_refused_as_upstream_refuses_it() {
    let server = cluster(&[]).await;
    let bad = job(
        "bad",
        json!({"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 1]}},
            {"action": "Ignore", "onExitCodes": {"containerName": "other", "operator": "NotIn", "values": [1]}},
            {"action": "FailIndex", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]}}),
        "true",
    );
    let err = create_refused(&server, &bad);
    assert!(err.contains("The Job \"bad\" is invalid"), "{err}");
    for cause in [
        "spec.podFailurePolicy.rules[0].onExitCodes.values[0]: Invalid value: 0: \
         must not be 0 for the In operator",
        "spec.podFailurePolicy.rules[1].onExitCodes.containerName: Invalid value: \"other\": \
         must be one of the container or initContainer names in the pod template",
        "spec.podFailurePolicy.rules[2].action: Invalid value: \"FailIndex\": \
         requires the backoffLimitPerIndex to be set",
    ] {
        assert!(err.contains(cause), "{cause} in {err}");
    }
    let mut restarting = job(
        "restarting",
        json!({"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}),
        "true",
    );
    restarting["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    let err = create_refused(&server, &restarting);
    assert!(
        err.contains(
            "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": \
             only \"Never\" is supported when podFailurePolicy is specified"
        ),
        "{err}"
    );
}
