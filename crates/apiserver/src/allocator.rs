//! Service ClusterIPs and NodePorts. Each address or port in use is a key in
//! the store that only one Service can create (as upstream's IPAddress
//! objects), so two API servers can never hand out the same one.

use std::net::Ipv4Addr;

use kubox_store::{Error as StoreError, Store};
use rand::Rng;
use serde_json::{Value, json};

use crate::status::{ApiError, ApiResult, FieldError};

/// The service network: 10.43.0.0/16, as k3s uses.
const SERVICE_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);
pub const SERVICE_RANGE: &str = "10.43.0.0/16";
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn ip_key(ip: &str) -> String {
    format!("/registry/ipaddresses/{ip}")
}

fn port_key(port: i64) -> String {
    format!("/registry/ranges/servicenodeports/{port}")
}

fn in_range(ip: Ipv4Addr) -> bool {
    let (net, bits) = SERVICE_NET;
    let mask = u32::MAX << (32 - bits);
    let host = u32::from(ip) & !mask;
    u32::from(ip) & mask == u32::from(net) && host != 0 && host != !mask
}

fn needs_cluster_ip(svc: &Value) -> bool {
    svc["spec"]["type"] != "ExternalName" && svc["spec"]["clusterIP"] != "None"
}

fn needs_node_ports(svc: &Value) -> bool {
    matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    )
}

/// The reservation keys a Service holds.
pub fn held(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| *ip != "None" && !ip.is_empty())
    {
        keys.push(ip_key(ip));
    }
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_i64() {
            keys.push(port_key(n));
        }
    }
    keys
}

fn invalid(svc: &Value, errs: Vec<FieldError>) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        svc["metadata"]["name"].as_str().unwrap_or_default(),
        errs,
    )
}

/// Creates a reservation; false when someone holds it.
async fn reserve(store: &dyn Store, key: &str, owner: &str) -> ApiResult<bool> {
    match store
        .create(key, bytes::Bytes::copy_from_slice(owner.as_bytes()), 0)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists(_, current)) => Ok(current.value == owner.as_bytes()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes reservations, as a Service goes or a failed write is undone.
pub async fn release(store: &dyn Store, keys: &[String]) {
    for key in keys {
        if let Err(e) = store.delete(key, None).await
            && !matches!(e, StoreError::NotFound(_))
        {
            tracing::warn!(key, error = %e, "releasing a service allocation failed");
        }
    }
}

/// Gives a Service its ClusterIP and NodePorts: the ones it asks for, if free
/// and in range, else free ones at random. `old` is the stored Service on an
/// update: what it holds stays, and its ClusterIP cannot change. Returns the
/// keys reserved now, which the caller releases if its write fails.
pub async fn allocate(
    store: &dyn Store,
    svc: &mut Value,
    old: Option<&Value>,
    owner: &str,
) -> ApiResult<Vec<String>> {
    let mut reserved = Vec::new();
    let result = allocate_into(store, svc, old, owner, &mut reserved).await;
    if result.is_err() {
        release(store, &reserved).await;
        reserved.clear();
    }
    result.map(|()| reserved)
}

async fn allocate_into(
    store: &dyn Store,
    svc: &mut Value,
    old: Option<&Value>,
    owner: &str,
    reserved: &mut Vec<String>,
) -> ApiResult<()> {
    let old_held = old.map(held).unwrap_or_default();
    if needs_cluster_ip(svc) {
        let old_ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .filter(|ip| !ip.is_empty());
        let asked = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .map(str::to_owned);
        let ip = match (asked, old_ip) {
            (Some(a), Some(o)) if a != o => {
                return Err(invalid(
                    svc,
                    vec![FieldError::invalid(
                        "spec.clusterIPs[0]",
                        &json!(a),
                        "may not change once set",
                    )],
                ));
            }
            (_, Some(o)) => o.to_owned(),
            (Some(a), None) => {
                let parsed: Ipv4Addr = a.parse().map_err(|_| {
                    invalid(
                        svc,
                        vec![FieldError::invalid(
                            "spec.clusterIPs[0]",
                            &json!(a),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )],
                    )
                })?;
                let field = |why: String| FieldError {
                    reason: "FieldValueInvalid",
                    field: "spec.clusterIPs".into(),
                    message: format!(
                        "Invalid value: []string{{\"{a}\"}}: failed to allocate IP {a}: {why}"
                    ),
                };
                if !in_range(parsed) {
                    return Err(invalid(
                        svc,
                        vec![field(format!(
                            "the provided IP ({a}) is not in the valid range. The range of valid IPs is {SERVICE_RANGE}"
                        ))],
                    ));
                }
                if !reserve(store, &ip_key(&a), owner).await? {
                    return Err(invalid(
                        svc,
                        vec![field("provided IP is already allocated".into())],
                    ));
                }
                reserved.push(ip_key(&a));
                a
            }
            (None, None) => {
                let ip = random_ip(store, owner).await?;
                reserved.push(ip_key(&ip));
                ip
            }
        };
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
        svc["spec"]["ipFamilies"] = json!(["IPv4"]);
        svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    if needs_node_ports(svc) {
        let count = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
        for i in 0..count {
            let port = &svc["spec"]["ports"][i];
            let asked = port["nodePort"].as_i64().filter(|p| *p != 0);
            // An update keeps the node port the stored Service has for this port.
            let kept = old.and_then(|o| {
                o["spec"]["ports"].as_array()?.iter().find(|op| {
                        op["port"] == port["port"] && op["protocol"] == port["protocol"]
                    })?["nodePort"]
                        .as_i64()
            });
            let field = format!("spec.ports[{i}].nodePort");
            let n = match (asked, kept) {
                (Some(a), _) if old_held.contains(&port_key(a)) => a,
                (Some(a), _) => {
                    if !NODE_PORTS.contains(&a) {
                        return Err(invalid(
                            svc,
                            vec![FieldError::invalid(
                                field,
                                &json!(a),
                                format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    NODE_PORTS.start(),
                                    NODE_PORTS.end()
                                ),
                            )],
                        ));
                    }
                    if !reserve(store, &port_key(a), owner).await? {
                        return Err(invalid(
                            svc,
                            vec![FieldError::invalid(
                                field,
                                &json!(a),
                                "provided port is already allocated",
                            )],
                        ));
                    }
                    reserved.push(port_key(a));
                    a
                }
                (None, Some(k)) => k,
                (None, None) => {
                    let p = random_port(store, owner).await?;
                    reserved.push(port_key(p));
                    p
                }
            };
            svc["spec"]["ports"][i]["nodePort"] = json!(n);
        }
    } else if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        for p in ports {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    Ok(())
}

/// The bottom of the range, kept for addresses chosen by name (the cluster
/// DNS at 10.43.0.10), as upstream's static subrange: `size / 16` between
/// 16 and 256 addresses. Free addresses are drawn above it, and from it only
/// when the rest looks full.
fn static_band(size: u32) -> u32 {
    (size / 16).clamp(16, 256)
}

async fn random_ip(store: &dyn Store, owner: &str) -> ApiResult<String> {
    let (net, bits) = SERVICE_NET;
    let size = 1u32 << (32 - bits);
    for attempt in 0..256 {
        // Never the network or broadcast address.
        let low = if attempt < 192 { static_band(size) } else { 2 };
        let host = rand::rng().random_range(low..size - 1);
        let ip = Ipv4Addr::from(u32::from(net) + host).to_string();
        if reserve(store, &ip_key(&ip), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(format!(
        "no free IP address in the service range {SERVICE_RANGE}"
    )))
}

async fn random_port(store: &dyn Store, owner: &str) -> ApiResult<i64> {
    for _ in 0..256 {
        let port = rand::rng().random_range(NODE_PORTS);
        if reserve(store, &port_key(port), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::internal(
        "no free node port in the range 30000-32767",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_band_is_upstreams() {
        assert_eq!(static_band(1 << 16), 256);
        assert_eq!(static_band(1 << 8), 16);
        assert_eq!(static_band(1 << 12), 256);
        assert_eq!(static_band(1 << 10), 64);
    }

    #[test]
    fn service_range_bounds() {
        assert!(in_range("10.43.0.1".parse().unwrap()));
        assert!(in_range("10.43.255.254".parse().unwrap()));
        assert!(!in_range("10.43.0.0".parse().unwrap()));
        assert!(!in_range("10.43.255.255".parse().unwrap()));
        assert!(!in_range("10.44.0.1".parse().unwrap()));
    }

    #[test]
    fn held_keys() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.7", "ports": [{"port": 80, "nodePort": 30080}]}});
        assert_eq!(
            held(&svc),
            [
                "/registry/ipaddresses/10.43.0.7",
                "/registry/ranges/servicenodeports/30080"
            ]
        );
        assert!(held(&json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
