//! `kubox bench ...`

use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The API server over HTTPS with the kube-rs client: CRUD at 1/16/128
    /// clients, LIST of many pods, watch fan-out.
    Api {
        /// Seconds each phase runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Measure only the embedded store, not also a real etcd.
        #[arg(long)]
        no_etcd: bool,
    },
    /// Fail-over of the control plane: three servers on a three-member
    /// etcd; the controller manager's leader is killed (SIGKILL) and the
    /// time until another server's controllers act is measured, per trial.
    Failover {
        #[arg(long, default_value_t = 10)]
        trials: usize,
    },
    /// Pods on one node of a real server (scheduler, agent, container
    /// runtime): startup latency, memory and CPU with pods running,
    /// leftovers after cycles.
    Pods {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Create/run/delete cycles before counting what is left behind.
        #[arg(long, default_value_t = 200)]
        cycles: usize,
        /// The node agent's container runtime, as `kubox server --runtime`.
        #[arg(long, default_value = "embedded")]
        runtime: String,
        /// Run the node agent as its own `kubox agent` process, joined to
        /// the server from a host of its own, to measure it alone.
        #[arg(long)]
        agent_apart: bool,
    },
    /// Interactive streams on a real server: exec round-trip latency
    /// (kube-rs over WebSocket), port-forward throughput through kubectl
    /// against a direct connection to the same pod listener.
    Streams {
        #[arg(long, default_value_t = 200)]
        execs: usize,
        /// MiB read through each port-forward.
        #[arg(long, default_value_t = 1024)]
        megabytes: usize,
        /// The node agent's container runtime, as `kubox server --runtime`;
        /// with `runc`, `runc exec` alone is measured beside the exec.
        #[arg(long, default_value = "embedded")]
        runtime: String,
    },
    /// The service proxy and pod network: rule programming latency with
    /// many Services, throughput through a ClusterIP against a pod's IP.
    Net {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// EndpointSlice changes timed one after another.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// The size of the file downloaded for throughput.
        #[arg(long, default_value_t = 256)]
        megabytes: usize,
    },
    /// The ingress controller: requests/s and latency with wrk through the
    /// ingress against a direct connection to the same backend pod.
    Ingress {
        /// Seconds each measurement runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Cluster DNS on a real server: queries/s and latency for Service
    /// names at 1/16/64 clients over UDP, and for forwarded names.
    Dns {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Seconds each phase runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The scheduler on hollow nodes: pods/s from creation to bound for a
    /// basic workload, required pod anti-affinity and topology spread.
    Scheduler {
        /// Cluster sizes, comma-separated, each on a fresh server.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        nodes: Vec<usize>,
        /// Pods per workload.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Zones the hollow nodes are spread over.
        #[arg(long, default_value_t = 10)]
        zones: usize,
        /// Run the scheduler as its own process (`kubox scheduler`) and
        /// report its memory and CPU.
        #[arg(long)]
        apart: bool,
    },
    /// The controller manager run apart (`kubox controller-manager`, and
    /// `kubox scheduler`) on hollow nodes: the memory and CPU seconds of
    /// each process until Deployments totalling N pods are available, and
    /// at idle.
    Controllers {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Replicas of each Deployment.
        #[arg(long, default_value_t = 100)]
        per_deployment: usize,
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Seconds the converged cluster is watched idle.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
    },
    /// The cost of metrics: server CPU and memory with N pods while every
    /// page is scraped each second, and the scrape times of the agent's
    /// `/metrics/cadvisor` and `/metrics/resource` and the API server's
    /// `/metrics`.
    Metrics {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Scrapes of each page timed.
        #[arg(long, default_value_t = 50)]
        scrapes: usize,
        /// Measure the node agent alone, run as its own `kubox agent`.
        #[arg(long)]
        agent_apart: bool,
    },
    /// A Deployment's rolling update on hollow nodes: from the image
    /// change to every new replica available.
    Rollout {
        #[arg(long, default_value_t = 100)]
        replicas: i32,
        #[arg(long, default_value_t = 20)]
        nodes: usize,
    },
    /// The storage engine: write latency and throughput, range reads, watch fan-out.
    Store {
        /// Skip measuring a real etcd side by side.
        #[arg(long)]
        no_etcd: bool,
        /// Seconds each throughput phase runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
    },
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Api {
            seconds,
            pods,
            watchers,
            no_etcd,
        } => {
            let table = kubox_bench::api::run(kubox_bench::api::Options {
                duration: Duration::from_secs(seconds),
                pods,
                watchers,
                etcd: !no_etcd,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Failover { trials } => {
            let table =
                kubox_bench::failover::run(kubox_bench::failover::Options { trials }).await?;
            println!("{table}");
        }
        BenchCommand::Pods {
            pods,
            cycles,
            runtime,
            agent_apart,
        } => {
            let table = kubox_bench::pods::run(kubox_bench::pods::Options {
                pods,
                cycles,
                runtime,
                agent_apart,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Streams {
            execs,
            megabytes,
            runtime,
        } => {
            let table = kubox_bench::streams::run(kubox_bench::streams::Options {
                execs,
                megabytes,
                runtime,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Net {
            services,
            endpoints,
            changes,
            megabytes,
        } => {
            let table = kubox_bench::net::run(kubox_bench::net::Options {
                services,
                endpoints,
                changes,
                megabytes,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Ingress {
            seconds,
            connections,
            threads,
        } => {
            let table = kubox_bench::ingress::run(kubox_bench::ingress::Options {
                seconds,
                connections,
                threads,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Dns { services, seconds } => {
            let table = kubox_bench::dns::run(kubox_bench::dns::Options {
                services,
                duration: Duration::from_secs(seconds),
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Scheduler {
            nodes,
            pods,
            zones,
            apart,
        } => {
            let table = kubox_bench::scheduler::run(kubox_bench::scheduler::Options {
                nodes,
                pods,
                zones,
                apart,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Controllers {
            pods,
            per_deployment,
            nodes,
            idle_seconds,
        } => {
            let table = kubox_bench::controllers::run(kubox_bench::controllers::Options {
                pods,
                per_deployment,
                nodes,
                idle: Duration::from_secs(idle_seconds),
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Metrics {
            pods,
            scrapes,
            agent_apart,
        } => {
            let table = kubox_bench::metrics::run(kubox_bench::metrics::Options {
                pods,
                scrapes,
                agent_apart,
            })
            .await?;
            println!("{table}");
        }
        BenchCommand::Rollout { replicas, nodes } => {
            let table =
                kubox_bench::rollout::run(kubox_bench::rollout::Options { replicas, nodes })
                    .await?;
            println!("{table}");
        }
        BenchCommand::Store {
            no_etcd,
            seconds,
            watchers,
            value_bytes,
        } => {
            let table = kubox_bench::store::run(kubox_bench::store::Options {
                etcd: !no_etcd,
                duration: Duration::from_secs(seconds),
                watchers,
                value_bytes,
            })
            .await?;
            println!("{table}");
        }
    }
    Ok(())
}
