//! `kubox bench dns`: queries per second and latency of cluster DNS on a
//! real server with many Services, from concurrent clients over UDP; and
//! names forwarded to an upstream on this machine, which measures the
//! forwarding path rather than a remote resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kubox_testkit::{KuboxServer, eventually, free_port};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::report::Table;

pub struct Options {
    pub services: usize,
    pub duration: Duration,
}

const CLIENTS: [usize; 3] = [1, 16, 64];
const TIMEOUT: Duration = Duration::from_secs(300);

/// An upstream on loopback that answers every A query with 192.0.2.7.
async fn local_upstream() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .add_queries(query.queries().to_vec());
            for q in query.queries() {
                answer.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 7)),
                ));
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    Ok((addr, task))
}

/// One A query over a connected socket; fails unless answered with an address.
async fn query(socket: &UdpSocket, name: &Name, id: u16) -> anyhow::Result<()> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), RecordType::A));
    socket.send(&message.to_vec()?).await?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await??;
    let answer = Message::from_vec(&buf[..n])?;
    anyhow::ensure!(
        answer.id() == id
            && answer.response_code() == ResponseCode::NoError
            && !answer.answers().is_empty(),
        "no answer for {name}"
    );
    Ok(())
}

async fn measure(
    dns: SocketAddr,
    names: Arc<Vec<Name>>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(f64, crate::report::Latencies)> {
    let sockets = Arc::new({
        let mut sockets = Vec::new();
        for _ in 0..clients {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(dns).await?;
            sockets.push(socket);
        }
        sockets
    });
    crate::load::load(clients, duration, move |c, i| {
        let sockets = sockets.clone();
        let names = names.clone();
        async move {
            let name = &names[(c * 7919 + i as usize) % names.len()];
            query(&sockets[c], name, i as u16).await
        }
    })
    .await
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let (upstream, _upstream) = local_upstream().await?;
    let port = free_port();
    let server = KuboxServer::start(
        &exe,
        &[
            "--disable-agent",
            "--dns-bind-address",
            "127.0.0.1",
            "--dns-port",
            &port.to_string(),
            "--dns-upstream",
            &upstream.to_string(),
        ],
    )
    .await;
    let dns: SocketAddr = ([127, 0, 0, 1], port).into();
    let (client, _) = kubox_client::connect(&server.kubeconfig()).await?;
    let services: Api<Service> = Api::namespaced(client, "default");
    for i in 0..opts.services {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("bench-{i}")},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    let names: Vec<Name> = (0..opts.services)
        .map(|i| Name::from_ascii(format!("bench-{i}.default.svc.cluster.local.")))
        .collect::<Result<_, _>>()?;
    let last = names.last().cloned();
    if let Some(last) = last {
        let probe = UdpSocket::bind("127.0.0.1:0").await?;
        probe.connect(dns).await?;
        eventually("the last Service resolves", TIMEOUT, || async {
            query(&probe, &last, 1).await.ok()
        })
        .await;
    }
    let names = Arc::new(names);
    let outside = Arc::new(
        (0..100)
            .map(|i| Name::from_ascii(format!("host-{i}.example.test.")))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let mut table = Table::new(&["queries", "clients", "queries/s", "p50 ms", "p99 ms"]);
    for clients in CLIENTS {
        let (rate, lat) = measure(dns, names.clone(), clients, opts.duration).await?;
        table.row(vec![
            format!("A, {} Services", opts.services),
            clients.to_string(),
            format!("{rate:.0}"),
            format!("{:.3}", lat.ms(0.5)),
            format!("{:.3}", lat.ms(0.99)),
        ]);
    }
    let clients = 16;
    let (rate, lat) = measure(dns, outside, clients, opts.duration).await?;
    table.row(vec![
        "A, forwarded to an upstream on loopback".into(),
        clients.to_string(),
        format!("{rate:.0}"),
        format!("{:.3}", lat.ms(0.5)),
        format!("{:.3}", lat.ms(0.99)),
    ]);
    Ok(table.render())
}
