//! Property-based fuzzing of request decoding: whatever body a client sends
//! to create or update, the answer is an object or a client error (4xx),
//! never a panic, a server error or a partial write.

use std::sync::Arc;

use kubox_apiserver::api::{Api, ObjectRef, WriteOptions};
use kubox_store::{RangeRequest, SqliteConfig, SqliteStore, Store};
use proptest::prelude::*;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9._/-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z]{1,8}",
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("name".to_string())
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Valid objects of several kinds with one field replaced by arbitrary JSON.
fn mutated_object() -> impl Strategy<Value = (usize, Value)> {
    let bases = [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
    ];
    let paths: [&[&str]; 13] = [
        &["metadata"],
        &["metadata", "name"],
        &["metadata", "labels"],
        &["metadata", "namespace"],
        &["metadata", "resourceVersion"],
        &["spec"],
        &["spec", "containers"],
        &["spec", "replicas"],
        &["spec", "selector"],
        &["spec", "ports"],
        &["data"],
        &["kind"],
        &["apiVersion"],
    ];
    (0..bases.len(), 0..paths.len(), json_value()).prop_map(move |(b, p, v)| {
        let mut obj = bases[b].clone();
        let path = paths[p];
        let mut slot = &mut obj;
        for key in &path[..path.len() - 1] {
            slot = &mut slot[*key];
        }
        slot[path[path.len() - 1]] = v;
        (b, obj)
    })
}

const PLURALS: [(&str, &str); 4] = [
    ("", "configmaps"),
    ("", "pods"),
    ("apps", "deployments"),
    ("", "services"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn creates_answer_objects_or_client_errors((kind, body) in mutated_object(), raw in any::<bool>()) {
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("s.db"))).await.unwrap());
            let api = Api::new(store.clone(), std::time::Duration::from_secs(3600));
            let (group, plural) = PLURALS[kind];
            let rtype = api.registry.get(group, "v1", plural).unwrap().clone();
            // The namespace must exist for creates to reach validation and storage.
            let namespaces = api.registry.get("", "v1", "namespaces").unwrap().clone();
            api.ensure(&namespaces, None, json!({"metadata": {"name": "default"}})).await.unwrap();
            let before = store.range(RangeRequest::prefix(rtype.key_prefix())).await.unwrap().count;
            let bytes = if raw { body.to_string().into_bytes().into_iter().rev().collect() } else { serde_json::to_vec(&body).unwrap() };
            match api.create(&rtype, Some("default"), &bytes, &WriteOptions::default()).await {
                Ok(w) => assert!(w.object["metadata"]["uid"].is_string()),
                Err(e) => {
                    assert!(e.code.is_client_error(), "{} for {body}: {}", e.code, e.message);
                    let after = store.range(RangeRequest::prefix(rtype.key_prefix())).await.unwrap().count;
                    assert_eq!(after, before, "a refused create wrote something");
                }
            }
            let target = ObjectRef { rt: &rtype, ns: Some("default"), name: "c", subresource: None };
            if let Err(e) = api.update(target, &bytes, &WriteOptions::default()).await {
                assert!(e.code.is_client_error(), "{} on update: {}", e.code, e.message);
            }
        });
    }
}
