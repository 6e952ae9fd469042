//! A CronJob firing for real: `* * * * *` in a time zone, its Job named by
//! the scheduled minute, the run seen through to completion in the status
//! and events, and `kubectl get cronjob` showing it. The schedule
//! arithmetic (missed runs, deadlines, concurrency, history limits) is
//! unit-tested in the controller.

use std::time::Duration;

use kubox_testkit::{KuboxServer, eventually};
use serde_json::{Value, json};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");
/// A minute to the next firing, and time for the Job to run.
const TIMEOUT: Duration = Duration::from_secs(150);

fn get_json(server: &KuboxServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.kubectl_ok(&all)).unwrap()
}

fn messages(server: &KuboxServer, reason: &str) -> Vec<String> {
    let selector = format!("reason={reason},involvedObject.kind=CronJob,involvedObject.name=tick");
    get_json(server, &["get", "events", "--field-selector", &selector])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_cronjob_fires_on_the_minute_and_records_the_completed_run() {
    let server = KuboxServer::start(KUBOX, &["--node-name", "node"]).await;
    server.wait_node_ready("node").await;
    server.import_busybox_as("docker.io/library/busybox:1.0");
    server.apply_json(&json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "timeZone": "Europe/Berlin",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {"spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "tick", "image": "busybox:1.0", "command": ["true"]}]
                }}}
            }
        }
    }));
    let job = eventually("the first scheduled Job", TIMEOUT, || async {
        get_json(&server, &["get", "jobs", "-l", "app=tick"])["items"]
            .as_array()
            .and_then(|jobs| jobs.first().cloned())
    })
    .await;
    let name = job["metadata"]["name"].as_str().unwrap().to_owned();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    let scheduled =
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .unwrap()
            .to_owned();
    let at: k8s_openapi::jiff::Timestamp = scheduled.parse().unwrap();
    assert_eq!(at.as_second(), minutes * 60, "{scheduled}");
    // Berlin is an hour ahead of UTC in winter, two in summer.
    assert!(
        scheduled.ends_with("+01:00") || scheduled.ends_with("+02:00"),
        "{scheduled}"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");

    let status = eventually("the run to be seen complete", TIMEOUT, || async {
        let status = get_json(&server, &["get", "cronjob", "tick"])["status"].clone();
        (status["lastSuccessfulTime"].is_string() && status["active"].is_null()).then_some(status)
    })
    .await;
    let last: k8s_openapi::jiff::Timestamp = status["lastScheduleTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last.as_second() >= minutes * 60, "{status}");
    assert!(messages(&server, "SuccessfulCreate").contains(&format!("Created job {name}")));
    let completed = format!("Saw completed job: {name}, condition: Complete");
    eventually("the SawCompletedJob event", TIMEOUT, || async {
        messages(&server, "SawCompletedJob")
            .contains(&completed)
            .then_some(())
    })
    .await;

    let table = server.kubectl_ok(&["get", "cronjob", "tick"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
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
        rows[1][..5],
        ["tick", "* * * * *", "Europe/Berlin", "False", "0"]
    );
    assert_ne!(rows[1][5], "<none>");
}
