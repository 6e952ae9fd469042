//! `kubox bench metrics`: what collecting metrics costs, on a real `kubox
//! server` with N pods running on its node. The node agent's pages
//! (`/metrics/cadvisor`, `/metrics/resource`) and the API server's
//! `/metrics` are scraped as Prometheus does, through the API server (the
//! node proxy for the agent's), timing each scrape; the server's CPU and
//! memory are read before and while scraping every second.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::pods::{USER_HZ, pod, running, usage};
use crate::report::{Latencies, Table};

pub struct Options {
    pub pods: usize,
    /// Scrapes of each page timed.
    pub scrapes: usize,
    /// Measure the node agent as its own `kubox agent` process rather than
    /// the server it runs in (see `bench pods --agent-apart`).
    pub agent_apart: bool,
}

/// One GET through the API server, its body's size.
async fn get(client: &kube::Client, path: &str) -> anyhow::Result<usize> {
    let req = http::Request::get(path).body(Vec::new())?;
    Ok(client.request_text(req).await?.len())
}

/// Scrapes `path` `n` times, one after another.
async fn scrape(client: &kube::Client, path: &str, n: usize) -> anyhow::Result<(Latencies, usize)> {
    let mut latencies = Latencies::default();
    let mut size = 0;
    for _ in 0..n {
        let started = Instant::now();
        size = get(client, path).await?;
        latencies.record(started.elapsed());
    }
    Ok((latencies, size))
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let node = crate::pods::start(&exe, "embedded", opts.agent_apart).await?;
    let (server, pid) = (&node.server, node.pid);
    server.wait_node_ready("bench").await;
    let who = if opts.agent_apart { "agent" } else { "server" };
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..opts.pods {
        api.create(&PostParams::default(), &pod(&format!("bench-{i}")))
            .await?;
    }
    running(&api, opts.pods).await?;
    // Let start-up work (status patches, the first scrapes) settle.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let window = Duration::from_secs(20);
    let (rss_before, cpu_0) = usage(pid);
    tokio::time::sleep(window).await;
    let (_, cpu_1) = usage(pid);
    let idle = (cpu_1 - cpu_0) as f64 / USER_HZ / window.as_secs_f64() * 100.0;

    // Every page once a second, as a Prometheus with a 1 s interval would.
    let started = Instant::now();
    let mut pages = 0u32;
    while started.elapsed() < window {
        let tick = Instant::now();
        for path in [
            "/api/v1/nodes/bench/proxy/metrics/cadvisor",
            "/api/v1/nodes/bench/proxy/metrics/resource",
            "/api/v1/nodes/bench/proxy/metrics",
            "/metrics",
        ] {
            get(&client, path).await?;
        }
        pages += 1;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    let (rss_scraping, cpu_2) = usage(pid);
    let scraping = (cpu_2 - cpu_1) as f64 / USER_HZ / started.elapsed().as_secs_f64() * 100.0;

    let (cadvisor, cadvisor_size) = scrape(
        &client,
        "/api/v1/nodes/bench/proxy/metrics/cadvisor",
        opts.scrapes,
    )
    .await?;
    let (resource, resource_size) = scrape(
        &client,
        "/api/v1/nodes/bench/proxy/metrics/resource",
        opts.scrapes,
    )
    .await?;
    let (apiserver, apiserver_size) = scrape(&client, "/metrics", opts.scrapes).await?;

    let mut table = Table::new(&["measure", "value"]);
    let mut row = |k: &str, v: String| table.row(vec![k.to_owned(), v]);
    row("pods running on the node", opts.pods.to_string());
    row(
        &format!("{who} CPU, metrics-server only (15 s resolution)"),
        format!("{idle:.1} % of a core"),
    );
    row(
        &format!("{who} CPU, every page scraped each second ({pages} rounds)"),
        format!("{scraping:.1} % of a core"),
    );
    row(
        &format!("{who} RSS before / while scraping"),
        format!(
            "{:.1} / {:.1} MiB",
            rss_before as f64 / 1024.0,
            rss_scraping as f64 / 1024.0
        ),
    );
    for (name, l, size) in [
        ("/metrics/cadvisor (node proxy)", &cadvisor, cadvisor_size),
        ("/metrics/resource (node proxy)", &resource, resource_size),
        ("API server /metrics", &apiserver, apiserver_size),
    ] {
        row(
            &format!("{name} scrape p50 / p99, page size"),
            format!(
                "{:.1} / {:.1} ms, {:.0} KiB",
                l.ms(0.5),
                l.ms(0.99),
                size as f64 / 1024.0
            ),
        );
    }
    Ok(table.render())
}
