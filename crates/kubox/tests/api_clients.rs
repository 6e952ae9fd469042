//! The API server with the kube-rs client (what kubox's own components use),
//! and the crash test: kill -9 in the middle of concurrent writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config};
use kubox_testkit::{KuboxServer, eventually};

const KUBOX: &str = env!("CARGO_BIN_EXE_kubox");

async fn client(server: &KuboxServer) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}}))
        .unwrap()
}

#[tokio::test]
async fn kube_rs_watcher_and_reflector_follow_changes() {
    // No controller manager: it would publish kube-root-ca.crt meanwhile.
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().any_semantic()),
    )
    .applied_objects()
    .boxed();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(Ok(cm)) = stream.next().await {
                seen.lock()
                    .unwrap()
                    .push(cm.metadata.name.unwrap_or_default());
            }
        })
    };
    for i in 0..5 {
        api.create(&PostParams::default(), &configmap(&format!("w{i}")))
            .await
            .unwrap();
    }
    api.delete("w0", &Default::default()).await.unwrap();
    eventually(
        "the reflector to hold w1..w4",
        Duration::from_secs(20),
        || {
            let reader = reader.clone();
            async move {
                let mut names: Vec<String> = reader
                    .state()
                    .iter()
                    .filter_map(|c| c.metadata.name.clone())
                    .collect();
                names.sort();
                (names == ["w1", "w2", "w3", "w4"]).then_some(())
            }
        },
    )
    .await;
    assert!(seen.lock().unwrap().contains(&"w4".to_string()));
    recorder.abort();

    // Paginated lists return everything exactly once.
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = api.list(&params).await.unwrap();
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["w1", "w2", "w3", "w4"]);
}

/// Metadata-only LISTs and watches, as the garbage collector reads every
/// resource: each object as a PartialObjectMetadata, with no spec or data.
#[tokio::test]
async fn metadata_only_lists_and_watches_carry_each_objects_metadata() {
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let client = client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &configmap("m0"))
        .await
        .unwrap();
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .filter_map(|m| m.metadata.name.clone())
        .collect();
    assert_eq!(names, ["m0"]);
    let rv = list.metadata.resource_version.unwrap();

    // The raw response: only kind, apiVersion and metadata, item by item.
    let req = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .unwrap();
    let raw: serde_json::Value = client.request(req).await.unwrap();
    assert_eq!(raw["kind"], "PartialObjectMetadataList");
    assert_eq!(raw["apiVersion"], "meta.k8s.io/v1");
    let item = &raw["items"][0];
    assert_eq!(item["kind"], "PartialObjectMetadata");
    assert_eq!(item["metadata"]["name"], "m0");
    assert!(item.get("data").is_none(), "{item}");

    let mut events = api
        .watch_metadata(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let labels = serde_json::json!({"metadata": {"labels": {"seen": "yes"}}});
    api.patch("m0", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    api.delete("m0", &Default::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("a watch event within 20 s")
            .expect("an open watch")
            .unwrap();
        match event {
            kube::api::WatchEvent::Modified(m) => {
                assert_eq!(m.metadata.labels.unwrap()["seen"], "yes");
                seen.push("modified");
            }
            kube::api::WatchEvent::Deleted(m) => {
                assert_eq!(m.metadata.name.as_deref(), Some("m0"));
                seen.push("deleted");
            }
            kube::api::WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["modified", "deleted"]);
}

/// The scheduler's way of placing a pod: the binding subresource.
#[tokio::test]
async fn pods_bind_to_a_node_once() {
    // This test is the scheduler: the built-in one must not race it.
    let server = KuboxServer::start(KUBOX, &["--disable-scheduler"]).await;
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let binding = |node: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "p"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        })
    };
    let status: serde_json::Value = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding("node-a"))
        .await
        .unwrap();
    assert_eq!(status["status"], "Success");
    let bound = pods.get("p").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("node-a"));
    let scheduled = bound.status.unwrap().conditions.unwrap();
    assert!(
        scheduled
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let again: Result<serde_json::Value, _> = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding("node-b"))
        .await;
    match again {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 409);
            assert_eq!(
                e.message,
                r#"Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "node-a""#
            );
        }
        other => panic!("expected 409, got {other:?}"),
    }
}

/// kube-rs' server-side apply (`Patch::Apply`), as controllers use it.
#[tokio::test]
async fn kube_rs_server_side_apply_creates_conflicts_and_forces() {
    let server = KuboxServer::start(KUBOX, &["--disable-controllers"]).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let config = |value: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ssa"}, "data": {"k": value},
        })
    };
    let created = api
        .patch(
            "ssa",
            &PatchParams::apply("first"),
            &Patch::Apply(config("1")),
        )
        .await
        .unwrap();
    let entry = &created.metadata.managed_fields.unwrap()[0];
    assert_eq!(
        (entry.manager.as_deref(), entry.operation.as_deref()),
        (Some("first"), Some("Apply"))
    );
    assert_eq!(
        entry.fields_v1.as_ref().unwrap().0,
        serde_json::json!({"f:data": {"f:k": {}}})
    );
    match api
        .patch(
            "ssa",
            &PatchParams::apply("second"),
            &Patch::Apply(config("2")),
        )
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
            assert_eq!(
                e.message,
                r#"Apply failed with 1 conflict: conflict with "first": .data.k"#
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("second").force(),
            &Patch::Apply(config("2")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["k"], "2");
    match api
        .patch("ssa", &PatchParams::default(), &Patch::Apply(config("3")))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(
            (e.code, e.message.as_str()),
            (
                422,
                r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch"#
            )
        ),
        other => panic!("expected 422, got {other:?}"),
    }
}

#[tokio::test]
async fn python_kubernetes_client_lists_creates_patches_watches_and_deletes() {
    let server = KuboxServer::start(KUBOX, &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(server.kubeconfig())
        .output()
        .await
        .expect("running python3 (scripts/test installs the kubernetes package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "python client ok\n");
}

/// kill -9 of `kubox server` during 1000 concurrent creates: after a restart
/// every acknowledged create is there, and resourceVersions keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    let mut server = KuboxServer::start(KUBOX, &[]).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let writers: Vec<_> = (0..1000)
        .map(|i| {
            let api = api.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for round in 0.. {
                    let name = format!("c{i}-{round}");
                    match api.create(&PostParams::default(), &configmap(&name)).await {
                        Ok(cm) => {
                            let rv = cm.metadata.resource_version.unwrap().parse().unwrap();
                            acked.lock().unwrap().insert(name, rv);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    eventually(
        "2000 acknowledged creates",
        Duration::from_secs(120),
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= 2000).then_some(()) }
        },
    )
    .await;
    server.kill();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    server.restart().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let listed = api.list(&ListParams::default()).await.unwrap();
    let found: BTreeMap<String, u64> = listed
        .items
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap(),
                c.metadata
                    .resource_version
                    .clone()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            found.get(name),
            Some(rv),
            "acknowledged create {name} at {rv} lost"
        );
    }
    let max = *acked.values().max().unwrap();
    let next = api
        .create(&PostParams::default(), &configmap("after"))
        .await
        .unwrap();
    assert!(
        next.metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > max
    );
}
