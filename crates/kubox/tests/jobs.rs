//! Jobs end to end: real busybox pods on a real `kubox server`, driven and
//! read with stock kubectl — completions and parallelism, Indexed Jobs,
//! the backoff limit (Job-wide and per index), success policies, TTL after
//! finished, and Jobs made from CronJobs.

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

/// The pods of job `name` running index `i`, oldest first.
fn index_pods(server: &KuboxServer, name: &str, i: usize) -> Vec<Value> {
    let mut pods: Vec<Value> = job_pods(server, name)
        .into_iter()
        .filter(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .and_then(|s| s.parse().ok())
                == Some(i)
        })
        .collect();
    pods.sort_by_key(|p| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned)
    });
    pods
}

fn failure_count(pod: &Value) -> &Value {
    &pod["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"]
}

#[tokio::test]
async fn indexes_back_off_and_fail_on_their_own() {
    let server = cluster(&[]).await;
    // Index 1 fails past its limit of one retry, index 2 at once by the
    // FailIndex rule; the other two succeed, so the Job ends with failed indexes.
    server.apply_json(&job(
        "per-index",
        json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
               "backoffLimitPerIndex": 1,
               "podFailurePolicy": {"rules": [{"action": "FailIndex",
                   "onExitCodes": {"operator": "In", "values": [42]}}]}}),
        "case $JOB_COMPLETION_INDEX in 1) exit 1;; 2) exit 42;; *) exit 0;; esac",
    ));
    let created = get_json(&server, &["get", "job", "per-index"]);
    assert_eq!(created["spec"]["backoffLimit"], i32::MAX);
    let failed = job_condition(&server, "per-index", "Failed").await;
    for type_ in ["FailureTarget", "Failed"] {
        let c = condition(&failed, type_);
        assert_eq!(
            (&c["reason"], &c["message"]),
            (&json!("FailedIndexes"), &json!("Job has failed indexes")),
            "{type_}"
        );
    }
    let status = &failed["status"];
    assert_eq!(status["failedIndexes"], "1,2", "{status}");
    assert_eq!(status["completedIndexes"], "0,3", "{status}");
    assert_eq!(
        (&status["succeeded"], &status["failed"]),
        (&json!(2), &json!(3))
    );
    let retried = index_pods(&server, "per-index", 1);
    let counts: Vec<&Value> = retried.iter().map(failure_count).collect();
    assert_eq!(
        counts,
        [&json!("0"), &json!("1")],
        "index 1 was tried twice"
    );
    assert_eq!(
        index_pods(&server, "per-index", 2).len(),
        1,
        "FailIndex is not retried"
    );
    let (_, row) = table(&server, "jobs", "per-index");
    assert_eq!(row[..3], ["per-index", "Failed", "2/4"]);

    // With no failed index allowed, the first one fails the Job, and the
    // indexes still running are stopped.
    server.apply_json(&job(
        "no-failures",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
               "backoffLimitPerIndex": 0, "maxFailedIndexes": 0}),
        "if [ $JOB_COMPLETION_INDEX = 1 ]; then exit 1; fi; sleep 300",
    ));
    let failed = job_condition(&server, "no-failures", "Failed").await;
    let c = condition(&failed, "Failed");
    assert_eq!(c["reason"], "MaxFailedIndexesExceeded");
    assert_eq!(
        c["message"],
        "Job has exceeded the specified maximal number of failed indexes"
    );
    assert_eq!(failed["status"]["failedIndexes"], "1");
    assert!(failed["status"]["active"].is_null(), "{}", failed["status"]);
}

#[tokio::test]
async fn a_success_policy_completes_the_job_and_stops_the_rest() {
    let server = cluster(&[]).await;
    server.apply_json(&job(
        "leader",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
               "successPolicy": {"rules": [{"succeededIndexes": "0"}]}}),
        "if [ $JOB_COMPLETION_INDEX = 0 ]; then exit 0; fi; sleep 300",
    ));
    let done = job_condition(&server, "leader", "Complete").await;
    let types: Vec<&str> = done["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
    for type_ in ["SuccessCriteriaMet", "Complete"] {
        let c = condition(&done, type_);
        assert_eq!(
            (&c["reason"], &c["message"]),
            (&json!("SuccessPolicy"), &json!("Matched rules at index 0")),
            "{type_}"
        );
    }
    let status = &done["status"];
    assert_eq!(
        (&status["succeeded"], &status["completedIndexes"]),
        (&json!(1), &json!("0"))
    );
    assert!(
        status["active"].is_null() && status["failed"].is_null(),
        "{status}"
    );
    assert!(status["completionTime"].is_string(), "{status}");
    for i in [1, 2] {
        for pod in index_pods(&server, "leader", i) {
            assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
        }
    }

    let bad = job(
        "bad",
        json!({"completions": 3, "completionMode": "Indexed", "maxFailedIndexes": 4,
               "successPolicy": {"rules": [{"succeededIndexes": "1-5"}]}}),
        "true",
    );
    let err = create_refused(&server, &bad);
    for cause in [
        "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
        "spec.maxFailedIndexes: Invalid value: 4: must be less than or equal to completions",
        "spec.successPolicy.rules[0].succeededIndexes: Invalid value: \"1-5\": \
         error parsing succeededIndexes: too large index: \"5\"",
    ] {
        assert!(err.contains(cause), "{cause} in {err}");
    }
}
