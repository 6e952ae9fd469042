use kubox_testkit::KuboxServer;
#[tokio::test]
async fn scratch() {
    let server = KuboxServer::start(env!("CARGO_BIN_EXE_kubox"), &["--node-name", "node"]).await;
    server.import_busybox();
    std::fs::write(
        "/tmp/kx/kubeconfig",
        server.kubeconfig().display().to_string(),
    )
    .unwrap();
    std::fs::write("/tmp/kx/pid", server.pid().unwrap().to_string()).unwrap();
    std::fs::write("/tmp/kx/datadir", server.data_dir().display().to_string()).unwrap();
    while !std::path::Path::new("/tmp/kx/stop").exists() {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
