//! `kubox bench rollout`: a Deployment rolled out on hollow nodes, timed
//! from the image change until every replica is updated and available and
//! no old pod is left (what `kubectl rollout status` waits for), with
//! upstream's default RollingUpdate strategy (maxSurge and maxUnavailable
//! 25%). The first rollout, from nothing, is timed too.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::report::Table;

pub struct Options {
    pub replicas: i32,
    pub nodes: usize,
}

const NAMESPACE: &str = "default";
const POLL: Duration = Duration::from_millis(100);

/// Whether the Deployment's controller has seen its latest spec and
/// every replica is of the latest template and available.
fn rolled_out(d: &Deployment, replicas: i32) -> bool {
    let Some(s) = d.status.as_ref() else {
        return false;
    };
    s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && s.replicas == Some(replicas)
}

/// Waits until the Deployment has rolled out; how long that took, and the
/// most pods it had at once meanwhile (`status.replicas`).
async fn until_rolled_out(
    api: &Api<Deployment>,
    replicas: i32,
    limit: Duration,
) -> anyhow::Result<(Duration, i32)> {
    let started = Instant::now();
    let mut most = 0;
    loop {
        let d = api.get("bench").await?;
        most = most.max(d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
        if rolled_out(&d, replicas) {
            return Ok((started.elapsed(), most));
        }
        if started.elapsed() > limit {
            anyhow::bail!(
                "not rolled out within {limit:?}: {:?}",
                d.status.unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let (server, client, _hollow) =
        crate::scheduler::hollow_cluster(&exe, opts.nodes, 1, &[]).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
            }
        }
    }))?;
    let limit = Duration::from_secs(600);
    api.create(&PostParams::default(), &deployment).await?;
    let (first, _) = until_rolled_out(&api, opts.replicas, limit).await?;
    let patch = serde_json::json!({"spec": {"template": {"spec": {
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}]}}}});
    api.patch("bench", &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    let (update, most) = until_rolled_out(&api, opts.replicas, limit).await?;
    let rss = server.pid().map_or(0, |pid| crate::pods::usage(pid).0);
    let mut table = Table::new(&[
        "hollow nodes",
        "replicas",
        "strategy",
        "first rollout",
        "image change → all new available",
        "most pods at once",
        "server RSS after",
    ]);
    table.row(vec![
        opts.nodes.to_string(),
        opts.replicas.to_string(),
        "RollingUpdate 25%/25%".into(),
        format!("{:.1} s", first.as_secs_f64()),
        format!("{:.1} s", update.as_secs_f64()),
        most.to_string(),
        format!("{:.0} MiB", rss as f64 / 1024.0),
    ]);
    Ok(table.render())
}
