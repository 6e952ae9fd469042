//! Admission reads namespaces, service accounts, LimitRanges and
//! PriorityClasses from the watch caches: a write is seen by the very next
//! request, before the cache's feed has had a chance to run.

use std::sync::Arc;
use std::time::Duration;

use kubox_apiserver::api::{Api, WriteOptions};
use kubox_apiserver::deletion::DeleteOptions;
use kubox_apiserver::registry::ResourceType;
use kubox_store::{SqliteConfig, SqliteStore};
use serde_json::{Value, json};

fn rt(api: &Api, group: &str, version: &str, plural: &str) -> Arc<ResourceType> {
    api.registry.get(group, version, plural).unwrap().clone()
}

async fn create(api: &Api, rt: &ResourceType, ns: Option<&str>, obj: Value) -> Value {
    let body = serde_json::to_vec(&obj).unwrap();
    match api.create(rt, ns, &body, &WriteOptions::default()).await {
        Ok(w) => w.object,
        Err(e) => panic!("creating {obj}: {} {}", e.code, e.message),
    }
}

fn pod(name: &str, class: Option<&str>) -> Value {
    let mut pod = json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    if let Some(class) = class {
        pod["spec"]["priorityClassName"] = json!(class);
    }
    pod
}

// One thread: the cache's feed runs only when a request waits, so a read
// that does not wait for the cache sees it without the write just made.
#[tokio::test(flavor = "current_thread")]
async fn each_request_sees_the_writes_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("s.db")))
        .await
        .unwrap();
    let api = Api::new(Arc::new(store), Duration::from_secs(3600));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !api.ready() {
        assert!(tokio::time::Instant::now() < deadline, "the caches load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (namespaces, accounts, ranges, classes, pods) = (
        rt(&api, "", "v1", "namespaces"),
        rt(&api, "", "v1", "serviceaccounts"),
        rt(&api, "", "v1", "limitranges"),
        rt(&api, "scheduling.k8s.io", "v1", "priorityclasses"),
        rt(&api, "", "v1", "pods"),
    );
    for i in 0..20 {
        let ns = format!("n{i}");
        let ns = Some(ns.as_str());
        create(&api, &namespaces, None, json!({"metadata": {"name": ns}})).await;
        create(
            &api,
            &accounts,
            ns,
            json!({"metadata": {"name": "default"}}),
        )
        .await;
        let cpu = format!("{}m", 100 + i);
        create(
            &api,
            &ranges,
            ns,
            json!({"metadata": {"name": "limits"}, "spec": {"limits": [
                {"type": "Container", "defaultRequest": {"cpu": cpu}}]}}),
        )
        .await;
        let class = format!("class-{i}");
        create(
            &api,
            &classes,
            None,
            json!({"metadata": {"name": class}, "value": 1000 + i}),
        )
        .await;

        let p = create(&api, &pods, ns, pod("p", Some(&class))).await;
        let container = &p["spec"]["containers"][0];
        assert_eq!(container["resources"]["requests"]["cpu"], json!(cpu), "{p}");
        assert_eq!(p["spec"]["priority"], json!(1000 + i), "{p}");
        assert_eq!(p["spec"]["serviceAccountName"], "default");

        api.delete(&ranges, ns, "limits", &DeleteOptions::default())
            .await
            .unwrap();
        let q = create(&api, &pods, ns, pod("q", None)).await;
        assert!(
            q["spec"]["containers"][0]["resources"]["requests"].is_null(),
            "{q}"
        );
    }
}
