//! What the API server asks of node agents for pods: `pods/log` streams
//! the log from the agent's `/containerLogs`; `pods/exec`, `pods/attach`
//! and `pods/portforward` hand the client's connection upgrade (WebSocket
//! or SPDY) to the agent and then copy bytes both ways. The API server authenticates to the agent with
//! its own client certificate.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::api::Api;
use crate::http::Body;
use crate::pki::CertPair;
use crate::server::TlsError;
use crate::status::{ApiError, ApiResult};

/// Node agents serve self-signed certificates; as upstream's API server
/// without --kubelet-certificate-authority, their identity is not checked.
#[derive(Debug)]
struct AnyNodeCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyNodeCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// HTTPS requests to node agents as the API server's kubelet client.
pub struct NodeClient {
    connector: tokio_rustls::TlsConnector,
}

impl NodeClient {
    pub fn new(creds: &CertPair) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = crate::server::certs(&creds.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyNodeCertificate(provider)))
            .with_client_auth_cert(certs, key)?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// GET `path_and_query` from a node agent, with extra headers (those of
    /// a connection upgrade); the connection can be upgraded afterwards.
    async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        // Exec and attach frames are small and answered; Nagle would add a
        // delayed-ACK round (tens of ms) to each.
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn.with_upgrades());
        let mut req = http::Request::get(path_and_query)
            .header(header::HOST, format!("{host}:{port}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        req.headers_mut().extend(headers.clone());
        sender.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// The container a log request means: the one named, the only one, or the
/// pod's default-container annotation, as upstream decides.
fn container_name(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (apps, inits) = (names("containers"), names("initContainers"));
    let annotated =
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str();
    let chosen = match asked.filter(|c| !c.is_empty()).or(annotated) {
        Some(c) => c.to_owned(),
        None if apps.len() == 1 => apps[0].clone(),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            );
            if !inits.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            return Err(ApiError::bad_request(message));
        }
    };
    if !apps.contains(&chosen) && !inits.contains(&chosen) {
        return Err(ApiError::bad_request(format!(
            "container {chosen} is not valid for pod {name}"
        )));
    }
    Ok(chosen)
}

/// Why a container has no log yet, as kubelet says it.
fn not_started(pod: &Value, name: &str, container: &str, previous: bool) -> Option<String> {
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|f| pod["status"][f].as_array())
        .flatten();
    let status = statuses.into_iter().find(|s| s["name"] == container);
    let waiting = status
        .map(|s| &s["state"]["waiting"])
        .filter(|w| w.is_object());
    let ran_before = status.is_some_and(|s| s["lastState"]["terminated"].is_object());
    let never_ran = status.is_none_or(|s| s["containerID"].as_str().unwrap_or_default().is_empty());
    match waiting {
        Some(w) if never_ran && !(previous && ran_before) => Some(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {}",
            w["reason"].as_str().unwrap_or("ContainerCreating")
        )),
        None if status.is_none() => Some(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )),
        _ => None,
    }
}

/// Where a node's agent listens: its InternalIP and the port it reports.
async fn agent_endpoint(api: &Api, node_name: &str) -> ApiResult<(String, u16)> {
    let node_type = api
        .registry
        .get("", "v1", "nodes")
        .ok_or_else(ApiError::no_route)?
        .clone();
    let node = api.get(&node_type, None, node_name).await?;
    let address = node["status"]["addresses"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|a| a["type"] == "InternalIP")
                .or_else(|| a.first())
        })
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no address")))?
        .to_owned();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| ApiError::internal(format!("node {node_name} reports no agent port")))?;
    Ok((address, port))
}

/// An agent's refusal as the API's error, with its text.
async fn node_error(resp: Response<hyper::body::Incoming>) -> ApiError {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_owned();
    match status {
        StatusCode::BAD_REQUEST => ApiError::bad_request(message),
        StatusCode::NOT_FOUND => ApiError::new(StatusCode::NOT_FOUND, "NotFound", message),
        _ => ApiError::internal(message),
    }
}

/// The node of a pod that can run commands: bound and not finished.
fn running_node<'a>(pod: &'a Value, name: &str, action: &str) -> ApiResult<&'a str> {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::bad_request(format!(
            "cannot {action} a container in a completed pod; current phase is {phase}"
        )));
    }
    pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))
}

/// The streaming subresources of pods, each served by the pod's node agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Exec,
    Attach,
    PortForward,
}

/// `pods/exec`, `pods/attach`, `pods/portforward`: hands the client's
/// connection upgrade (WebSocket or SPDY) to the pod's agent and, once the
/// agent switches protocols, joins the two connections.
pub async fn pod_stream(
    api: &Api,
    nodes: &NodeClient,
    ns: &str,
    name: &str,
    kind: Stream,
    mut req: http::Request<hyper::body::Incoming>,
) -> ApiResult<Response<Body>> {
    let pods = api
        .registry
        .get("", "v1", "pods")
        .ok_or_else(ApiError::no_route)?
        .clone();
    let pod = api.get(&pods, Some(ns), name).await?;
    let query = req.uri().query().unwrap_or_default().to_owned();
    let path = match kind {
        Stream::Exec | Stream::Attach => {
            let asked: Option<String> = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.into_owned());
            let container = container_name(&pod, name, asked.as_deref())?;
            let (action, route) = match kind {
                Stream::Exec => ("exec into", "exec"),
                _ => ("attach to", "attach"),
            };
            running_node(&pod, name, action)?;
            format!("/{route}/{ns}/{name}/{container}?{query}")
        }
        Stream::PortForward => format!("/portForward/{ns}/{name}?{query}"),
    };
    let node_name = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let (address, port) = agent_endpoint(api, node_name).await?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in req.headers() {
        let forwarded = k == header::CONNECTION
            || k == header::UPGRADE
            || k.as_str().starts_with("sec-websocket-")
            || k.as_str() == "x-stream-protocol-version";
        if forwarded {
            headers.append(k.clone(), v.clone());
        }
    }
    let node_resp = nodes
        .get(&address, port, &path, &headers)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    if node_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(node_error(node_resp).await);
    }
    let mut out = Response::new(BodyExt::boxed(
        http_body_util::Empty::new().map_err(|never| match never {}),
    ));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in node_resp.headers() {
        out.headers_mut().append(k.clone(), v.clone());
    }
    tokio::spawn(async move {
        let (client, node) =
            futures::join!(hyper::upgrade::on(&mut req), hyper::upgrade::on(node_resp));
        if let (Ok(client), Ok(node)) = (client, node) {
            splice(TokioIo::new(client), TokioIo::new(node)).await;
        }
    });
    Ok(out)
}

/// Copies bytes both ways until each side has finished. Unlike
/// `copy_bidirectional`, a side that ends abruptly (a TLS peer closing
/// without close_notify) does not cut short what it sent before: that is
/// flushed through, which for exec is the final status and close frame.
async fn splice<A, B>(a: A, b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::AsyncWriteExt;
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let forward = async {
        let _ = tokio::io::copy(&mut a_read, &mut b_write).await;
        let _ = b_write.shutdown().await;
    };
    let backward = async {
        let _ = tokio::io::copy(&mut b_read, &mut a_write).await;
        let _ = a_write.shutdown().await;
    };
    futures::join!(forward, backward);
}

fn crashed_and_waiting(pod: &Value, container: &str) -> bool {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|f| pod["status"][f].as_array())
        .flatten()
        .find(|s| s["name"] == container)
        .is_some_and(|s| {
            s["state"]["waiting"].is_object() && s["lastState"]["terminated"].is_object()
        })
}

/// `nodes/{name}/proxy/{path}`: a GET of `path` (and query) on the node's
/// agent, answered as the agent answers it, status and all. An in-cluster
/// Prometheus or metrics-server scrapes node metrics this way.
pub async fn node_get(
    api: &Api,
    nodes: &NodeClient,
    name: &str,
    uri: &http::Uri,
) -> ApiResult<Response<Body>> {
    let prefix = format!("/api/v1/nodes/{name}/proxy");
    let rest = uri.path().strip_prefix(&prefix).unwrap_or_default();
    let path = match uri.query() {
        Some(q) => format!("/{}?{q}", rest.trim_start_matches('/')),
        None => format!("/{}", rest.trim_start_matches('/')),
    };
    let (address, port) = agent_endpoint(api, name).await?;
    let resp = nodes
        .get(&address, port, &path, &http::HeaderMap::new())
        .await
        .map_err(|e| ApiError::unavailable(format!("error trying to reach service: {e}")))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| ApiError::unavailable(format!("reading from node {name}: {e}")))?
        .to_bytes();
    let mut out = Response::new(crate::http::full(body));
    *out.status_mut() = parts.status;
    if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, kind.clone());
    }
    Ok(out)
}

pub async fn pod_log(
    api: &Api,
    nodes: &NodeClient,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Response<Body>> {
    let pods = api
        .registry
        .get("", "v1", "pods")
        .ok_or_else(ApiError::no_route)?
        .clone();
    let pod = api.get(&pods, Some(ns), name).await?;
    let container = container_name(&pod, name, q.get("container").map(String::as_str))?;
    let mut previous = q.get("previous").is_some_and(|v| v == "true");
    if let Some(message) = not_started(&pod, name, &container, previous) {
        return Err(ApiError::bad_request(message));
    }
    // A container waiting to restart: its current log is its last run's, which
    // is also what upstream shows for --previous.
    if crashed_and_waiting(&pod, &container) {
        previous = false;
    }
    let node_name = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
    let node_name = node_name.ok_or_else(|| {
        ApiError::bad_request(format!("pod {name} does not have a host assigned"))
    })?;
    let (address, port) = agent_endpoint(api, node_name).await?;
    let query = {
        let mut forwarded = form_urlencoded::Serializer::new(String::new());
        if previous {
            forwarded.append_pair("previous", "true");
        }
        for key in [
            "follow",
            "sinceSeconds",
            "sinceTime",
            "timestamps",
            "tailLines",
            "limitBytes",
        ] {
            if let Some(v) = q.get(key) {
                forwarded.append_pair(key, v);
            }
        }
        forwarded.finish()
    };
    let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
    let resp = nodes
        .get(&address, port, &path, &http::HeaderMap::new())
        .await
        .map_err(|e| ApiError::internal(format!("Get \"https://{address}:{port}{path}\": {e}")))?;
    if !resp.status().is_success() {
        return Err(node_error(resp).await);
    }
    // A broken node connection ends the stream, as upstream's proxy does.
    let data = resp
        .into_body()
        .into_data_stream()
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok().map(|b| Ok(Frame::data(b)))));
    let mut out = Response::new(BodyExt::boxed(StreamBody::new(data)));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_chosen_as_upstream() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container_name(&one, "p", None).unwrap(), "a");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let err = container_name(&two, "p", None).unwrap_err();
        assert_eq!(
            err.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container_name(&two, "p", Some("i")).unwrap(), "i");
        assert_eq!(
            container_name(&two, "p", Some("z")).unwrap_err().message,
            "container z is not valid for pod p"
        );
        let annotated = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "b"}},
                               "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(container_name(&annotated, "p", None).unwrap(), "b");
    }

    #[test]
    fn waiting_containers_have_no_log_yet() {
        let pod = json!({"status": {"containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "ErrImagePull"}}}]}});
        assert_eq!(
            not_started(&pod, "p", "a", false).unwrap(),
            "container \"a\" in pod \"p\" is waiting to start: ErrImagePull"
        );
        let crashed = json!({"status": {"containerStatuses": [{"name": "a", "containerID": "runc://x",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}]}});
        assert_eq!(not_started(&crashed, "p", "a", false), None);
    }
}
