//! Probes and lifecycle hooks: running an exec, HTTP GET or TCP check
//! against a container. Network checks connect from inside the pod's
//! network namespace (a short-lived thread joins it), so they reach the pod
//! at its loopback address whatever the node's routes are.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::ContainerRuntime;
use crate::sandbox::in_netns;

/// What a probe or hook does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Sleep(Duration),
}

/// A port given by number or by the name of one of the container's ports.
fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("couldn't find port \"{name}\" in container {}", c.name)),
    }
}

impl Action {
    pub fn from_probe(p: &Probe, c: &Container) -> Result<Option<Self>, String> {
        if let Some(e) = &p.exec {
            return Ok(Some(Action::Exec(e.command.clone().unwrap_or_default())));
        }
        if let Some(h) = &p.http_get {
            return Ok(Some(Action::Http {
                host: h.host.clone().filter(|h| !h.is_empty()),
                port: port(&h.port, c)?,
                path: h
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }));
        }
        if let Some(t) = &p.tcp_socket {
            return Ok(Some(Action::Tcp {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: port(&t.port, c)?,
            }));
        }
        if p.grpc.is_some() {
            return Err("gRPC probes are not supported by kubox yet".into());
        }
        Ok(None)
    }

    pub fn from_handler(h: &LifecycleHandler, c: &Container) -> Result<Option<Self>, String> {
        if let Some(s) = &h.sleep {
            return Ok(Some(Action::Sleep(Duration::from_secs(
                s.seconds.max(0) as u64
            ))));
        }
        let probe = Probe {
            exec: h.exec.clone(),
            http_get: h.http_get.clone(),
            tcp_socket: h.tcp_socket.clone(),
            ..Default::default()
        };
        Self::from_probe(&probe, c)
    }
}

/// The container an action runs against.
pub struct Target<'a> {
    pub container_id: &'a str,
    /// The pod's network namespace; `None` on the host network.
    pub netns: Option<PathBuf>,
    pub runtime: &'a dyn ContainerRuntime,
}

fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for {host}")))
}

fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n",
        addr.port()
    );
    let custom = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !custom("User-Agent") {
        request.push_str("User-Agent: kube-probe/1.37\r\n");
    }
    if !custom("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{addr}{path}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Where a network check connects: the pod itself (inside its network
/// namespace) unless the action names another host.
fn endpoint(host: &Option<String>, target: &Target<'_>) -> (String, Option<PathBuf>) {
    match host {
        Some(h) if h != "127.0.0.1" => (h.clone(), None),
        _ => ("127.0.0.1".into(), target.netns.clone()),
    }
}

/// Runs an action; `Err` carries upstream's words for the failure.
pub async fn run(action: &Action, target: &Target<'_>, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Exec(argv) => {
            match tokio::time::timeout(timeout, target.runtime.exec(target.container_id, argv))
                .await
            {
                Err(_) => Err(format!("command \"{}\" timed out", argv.join(" "))),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok((0, _))) => Ok(()),
                Ok(Ok((code, output))) => {
                    let text = String::from_utf8_lossy(&output).trim().to_owned();
                    Err(if text.is_empty() {
                        format!("command \"{}\" exited with {code}", argv.join(" "))
                    } else {
                        text
                    })
                }
            }
        }
        Action::Tcp { host, port } => {
            let (host, netns) = endpoint(host, target);
            let port = *port;
            in_netns(netns, move || {
                let addr = resolve(&host, port)?;
                TcpStream::connect_timeout(&addr, timeout).map(drop)
            })
            .await
            .map_err(|e| format!("dial tcp 127.0.0.1:{port}: {e}"))
        }
        Action::Http {
            host,
            port,
            path,
            headers,
        } => {
            let (host, netns) = endpoint(host, target);
            let (port, path, headers) = (*port, path.clone(), headers.clone());
            in_netns(netns, move || {
                let addr = resolve(&host, port)?;
                Ok(http_get(addr, &host, &path, &headers, timeout))
            })
            .await
            .map_err(|e| e.to_string())?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        serde_json::from_value(
            serde_json::json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap()
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let probe: Probe = serde_json::from_value(
            serde_json::json!({"httpGet": {"port": "http", "path": "/healthz"}}),
        )
        .unwrap();
        assert_eq!(
            Action::from_probe(&probe, &container()).unwrap(),
            Some(Action::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![]
            })
        );
        let bad: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert!(Action::from_probe(&bad, &container()).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_checks_on_the_host_network() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let status = if i == 0 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        let runtime = crate::runtime::RuntimeCli::new("runc", std::path::Path::new("/nonexistent"));
        let target = Target {
            container_id: "x",
            netns: None,
            runtime: &runtime,
        };
        let http = Action::Http {
            host: None,
            port,
            path: "/".into(),
            headers: vec![],
        };
        let timeout = Duration::from_secs(2);
        assert_eq!(run(&http, &target, timeout).await, Ok(()));
        assert_eq!(
            run(&http, &target, timeout).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(
            run(&Action::Tcp { host: None, port }, &target, timeout).await,
            Ok(())
        );
    }
}
