//! Server-side printing: the `Table` kubectl asks for with
//! `Accept: application/json;as=Table;g=meta.k8s.io;v=v1`, with upstream's
//! columns for each built-in type (`-o wide` shows the priority-1 ones).

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::registry::ResourceType;

/// `3m5s`, or `3m` when the smaller unit is zero.
fn two_units(major: i64, major_unit: &str, minor: i64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor}{minor_unit}")
    }
}

/// Upstream's `HumanDuration`: how old something is, the way kubectl shows it.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (minutes, hours) = (s / 60, s / 3600);
    let (days, years) = (hours / 24, hours / 24 / 365);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if minutes < 10 => two_units(minutes, "m", s % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => two_units(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => two_units(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => two_units(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

fn age(ts: &Value) -> String {
    match ts
        .as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    {
        Some(t) => human_duration((OffsetDateTime::now_utc() - t).whole_seconds()),
        None => "<unknown>".into(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

fn selector_string(sel: &Value) -> String {
    or_none(crate::selectors::selector_text(sel))
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs: Vec<&Value> = list(&spec["containers"]).collect();
    (
        join(cs.iter().map(|c| s(&c["name"]))),
        join(cs.iter().map(|c| s(&c["image"]))),
    )
}

/// A column: name, type, and priority (1 = only with -o wide).
type Column = (&'static str, &'static str, u8);

const NAME: Column = ("Name", "string", 0);
const AGE: Column = ("Age", "string", 0);

fn pod_status(pod: &Value) -> (String, i64, String) {
    let status = &pod["status"];
    let mut reason = s(&status["reason"]);
    if reason.is_empty() {
        reason = s(&status["phase"]);
    }
    if list(&status["conditions"])
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    let mut restarts = 0;
    let mut ready = 0;
    let total = list(&pod["spec"]["containers"]).count();
    let mut initializing = false;
    for (i, c) in list(&status["initContainerStatuses"]).enumerate() {
        restarts += n(&c["restartCount"]);
        let st = &c["state"];
        if st["terminated"]["exitCode"] == 0 && st["terminated"].is_object() {
            continue;
        }
        initializing = true;
        let init_total = list(&pod["spec"]["initContainers"]).count();
        reason = if let Some(r) = st["terminated"]["reason"].as_str() {
            format!("Init:{r}")
        } else if let Some(r) = st["waiting"]["reason"]
            .as_str()
            .filter(|r| *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in list(&status["containerStatuses"])
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            restarts += n(&c["restartCount"]);
            let st = &c["state"];
            if let Some(r) = st["waiting"]["reason"].as_str() {
                reason = r.to_owned();
            } else if let Some(r) = st["terminated"]["reason"].as_str() {
                reason = r.to_owned();
            } else if st["terminated"].is_object() {
                let t = &st["terminated"];
                reason = if t["signal"].as_i64().unwrap_or(0) != 0 {
                    format!("Signal:{}", n(&t["signal"]))
                } else {
                    format!("ExitCode:{}", n(&t["exitCode"]))
                };
            } else if c["ready"] == true && st["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        reason = if status["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (format!("{ready}/{total}"), restarts, reason)
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    match rt.plural {
        "pods" => vec![
            NAME,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            AGE,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "namespaces" => vec![NAME, ("Status", "string", 0), AGE],
        "services" => vec![
            NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            AGE,
            ("Selector", "string", 1),
        ],
        "deployments" => vec![
            NAME,
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "replicasets" | "replicationcontrollers" => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "statefulsets" => vec![
            NAME,
            ("Ready", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        "daemonsets" => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "jobs" => vec![
            NAME,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "cronjobs" => vec![
            NAME,
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "configmaps" => vec![NAME, ("Data", "string", 0), AGE],
        "secrets" => vec![NAME, ("Type", "string", 0), ("Data", "string", 0), AGE],
        "serviceaccounts" => vec![NAME, ("Secrets", "string", 0), AGE],
        "endpoints" => vec![NAME, ("Endpoints", "string", 0), AGE],
        "nodes" => vec![
            NAME,
            ("Status", "string", 0),
            ("Roles", "string", 0),
            AGE,
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        "events" => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        "ingresses" => vec![
            NAME,
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            AGE,
        ],
        "persistentvolumeclaims" => vec![
            NAME,
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            AGE,
        ],
        "horizontalpodautoscalers" => vec![
            NAME,
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "string", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "integer", 0),
            AGE,
        ],
        "roles" | "clusterroles" => vec![NAME, ("Created At", "string", 0)],
        "leases" => vec![NAME, ("Holder", "string", 0), AGE],
        "rolebindings" | "clusterrolebindings" => vec![
            NAME,
            ("Role", "string", 0),
            AGE,
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ],
        "ingressclasses" => vec![
            NAME,
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            AGE,
        ],
        "networkpolicies" => vec![NAME, ("Pod-Selector", "string", 0), AGE],
        "poddisruptionbudgets" => vec![
            NAME,
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            AGE,
        ],
        "persistentvolumes" => vec![
            NAME,
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            AGE,
            ("VolumeMode", "string", 1),
        ],
        "storageclasses" => vec![
            NAME,
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            AGE,
        ],
        "priorityclasses" => vec![
            NAME,
            ("Value", "integer", 0),
            ("Global-Default", "boolean", 0),
            AGE,
            ("PreemptionPolicy", "string", 0),
        ],
        "resourcequotas" => vec![NAME, AGE, ("Request", "string", 0), ("Limit", "string", 0)],
        "limitranges" => vec![NAME, ("Created At", "string", 0)],
        "controllerrevisions" => vec![
            NAME,
            ("Controller", "string", 0),
            ("Revision", "integer", 0),
            AGE,
        ],
        "endpointslices" => vec![
            NAME,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn access_modes(v: &Value) -> String {
    join(list(v).map(|m| match m.as_str() {
        Some("ReadWriteOnce") => "RWO".into(),
        Some("ReadOnlyMany") => "ROX".into(),
        Some("ReadWriteMany") => "RWX".into(),
        Some("ReadWriteOncePod") => "RWOP".into(),
        _ => s(m),
    }))
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let meta = &o["metadata"];
    let (spec, status) = (&o["spec"], &o["status"]);
    let name = s(&meta["name"]);
    let created = age(&meta["creationTimestamp"]);
    match rt.plural {
        "pods" => {
            let (ready, restarts, reason) = pod_status(o);
            let gates = list(&spec["readinessGates"]).count();
            let gates = if gates == 0 {
                "<none>".into()
            } else {
                let true_gates = list(&spec["readinessGates"])
                    .filter(|g| {
                        list(&status["conditions"])
                            .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
                    .count();
                format!("{true_gates}/{gates}")
            };
            vec![
                json!(name),
                json!(ready),
                json!(reason),
                json!(restarts.to_string()),
                json!(created),
                json!(or_none(s(&status["podIP"]))),
                json!(or_none(s(&spec["nodeName"]))),
                json!(or_none(s(&status["nominatedNodeName"]))),
                json!(gates),
            ]
        }
        "namespaces" => vec![json!(name), json!(s(&status["phase"])), json!(created)],
        "services" => {
            let t = s(&spec["type"]);
            let external = match t.as_str() {
                "ExternalName" => s(&spec["externalName"]),
                "LoadBalancer" => {
                    let ips: Vec<String> = list(&status["loadBalancer"]["ingress"])
                        .map(|i| {
                            if i["ip"].is_string() {
                                s(&i["ip"])
                            } else {
                                s(&i["hostname"])
                            }
                        })
                        .collect();
                    if ips.is_empty() {
                        "<pending>".into()
                    } else {
                        ips.join(",")
                    }
                }
                _ => {
                    let ext: Vec<String> = list(&spec["externalIPs"]).map(s).collect();
                    or_none(ext.join(","))
                }
            };
            let ports = join(list(&spec["ports"]).map(|p| {
                let node_port = p["nodePort"]
                    .as_i64()
                    .map(|np| format!(":{np}"))
                    .unwrap_or_default();
                format!("{}{node_port}/{}", n(&p["port"]), s(&p["protocol"]))
            }));
            let cluster_ip = if spec["clusterIP"].is_string() {
                s(&spec["clusterIP"])
            } else {
                "<none>".into()
            };
            vec![
                json!(name),
                json!(t),
                json!(cluster_ip),
                json!(external),
                json!(or_none(ports)),
                json!(created),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "deployments" => {
            let (cs, imgs) = containers_images(&spec["template"]["spec"]);
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    n(&status["readyReplicas"]),
                    n(&spec["replicas"])
                )),
                json!(n(&status["updatedReplicas"])),
                json!(n(&status["availableReplicas"])),
                json!(created),
                json!(cs),
                json!(imgs),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "replicasets" | "replicationcontrollers" => {
            let (cs, imgs) = containers_images(&spec["template"]["spec"]);
            vec![
                json!(name),
                json!(n(&spec["replicas"])),
                json!(n(&status["replicas"])),
                json!(n(&status["readyReplicas"])),
                json!(created),
                json!(cs),
                json!(imgs),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "statefulsets" => {
            let (cs, imgs) = containers_images(&spec["template"]["spec"]);
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    n(&status["readyReplicas"]),
                    n(&spec["replicas"])
                )),
                json!(created),
                json!(cs),
                json!(imgs),
            ]
        }
        "daemonsets" => {
            let (cs, imgs) = containers_images(&spec["template"]["spec"]);
            let node_selector = join(
                spec["template"]["spec"]["nodeSelector"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", s(v))),
            );
            vec![
                json!(name),
                json!(n(&status["desiredNumberScheduled"])),
                json!(n(&status["currentNumberScheduled"])),
                json!(n(&status["numberReady"])),
                json!(n(&status["updatedNumberScheduled"])),
                json!(n(&status["numberAvailable"])),
                json!(or_none(node_selector)),
                json!(created),
                json!(cs),
                json!(imgs),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "jobs" => {
            let (cs, imgs) = containers_images(&spec["template"]["spec"]);
            let completions = match spec["completions"].as_i64() {
                Some(c) => format!("{}/{c}", n(&status["succeeded"])),
                None => format!(
                    "{}/1 of {}",
                    n(&status["succeeded"]),
                    n(&spec["parallelism"])
                ),
            };
            let condition = |t: &str| {
                list(&status["conditions"]).any(|c| c["type"] == t && c["status"] == "True")
            };
            let state = if condition("Complete") {
                "Complete"
            } else if condition("Failed") {
                "Failed"
            } else if meta["deletionTimestamp"].is_string() {
                "Terminating"
            } else if condition("Suspended") {
                "Suspended"
            } else if condition("FailureTarget") {
                "FailureTarget"
            } else if condition("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else {
                "Running"
            };
            let duration = match (
                status["startTime"].as_str(),
                status["completionTime"].as_str(),
            ) {
                (Some(st), Some(ct)) => match (
                    OffsetDateTime::parse(st, &Rfc3339),
                    OffsetDateTime::parse(ct, &Rfc3339),
                ) {
                    (Ok(a), Ok(b)) => human_duration((b - a).whole_seconds()),
                    _ => String::new(),
                },
                (Some(_), None) => age(&status["startTime"]),
                _ => String::new(),
            };
            vec![
                json!(name),
                json!(state),
                json!(completions),
                json!(duration),
                json!(created),
                json!(cs),
                json!(imgs),
                json!(selector_string(&spec["selector"])),
            ]
        }
        "cronjobs" => {
            let (cs, imgs) = containers_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            let last = if status["lastScheduleTime"].is_string() {
                age(&status["lastScheduleTime"])
            } else {
                "<none>".into()
            };
            vec![
                json!(name),
                json!(s(&spec["schedule"])),
                json!(or_none(s(&spec["timeZone"]))),
                json!(if spec["suspend"] == true {
                    "True"
                } else {
                    "False"
                }),
                json!(list(&status["active"]).count()),
                json!(last),
                json!(created),
                json!(cs),
                json!(imgs),
                json!(selector_string(&spec["jobTemplate"]["spec"]["selector"])),
            ]
        }
        "configmaps" => {
            let count = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![json!(name), json!(count.to_string()), json!(created)]
        }
        "secrets" => vec![
            json!(name),
            json!(s(&o["type"])),
            json!(o["data"].as_object().map_or(0, |m| m.len()).to_string()),
            json!(created),
        ],
        "serviceaccounts" => vec![
            json!(name),
            json!(list(&o["secrets"]).count().to_string()),
            json!(created),
        ],
        "endpoints" => {
            let mut eps = Vec::new();
            for subset in list(&o["subsets"]) {
                for a in list(&subset["addresses"]) {
                    for p in list(&subset["ports"]) {
                        eps.push(format!("{}:{}", s(&a["ip"]), n(&p["port"])));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![json!(name), json!(or_none(shown)), json!(created)]
        }
        "nodes" => {
            let ready = list(&status["conditions"]).find(|c| c["type"] == "Ready");
            let mut state = match ready.map(|c| s(&c["status"])) {
                Some(st) if st == "True" => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                state.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = meta["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_owned)
                        .or_else(|| (k == "kubernetes.io/role").then(|| s(v)))
                })
                .filter(|r| !r.is_empty())
                .collect();
            roles.sort();
            let addr = |t: &str| {
                or_none(join(
                    list(&status["addresses"])
                        .filter(|a| a["type"] == t)
                        .map(|a| s(&a["address"])),
                ))
            };
            let info = &status["nodeInfo"];
            vec![
                json!(name),
                json!(state),
                json!(or_none(roles.join(","))),
                json!(created),
                json!(s(&info["kubeletVersion"])),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(&info["osImage"])),
                json!(s(&info["kernelVersion"])),
                json!(s(&info["containerRuntimeVersion"])),
            ]
        }
        "events" => {
            let last = if o["lastTimestamp"].is_string() {
                &o["lastTimestamp"]
            } else if o["eventTime"].is_string() {
                &o["eventTime"]
            } else {
                &meta["creationTimestamp"]
            };
            let obj = format!(
                "{}/{}",
                s(&o["involvedObject"]["kind"]).to_lowercase(),
                s(&o["involvedObject"]["name"])
            );
            vec![
                json!(age(last)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(obj),
                json!(s(&o["message"]).trim()),
            ]
        }
        "ingresses" => {
            let hosts = join(list(&spec["rules"]).map(|r| {
                if r["host"].is_string() {
                    s(&r["host"])
                } else {
                    "*".into()
                }
            }));
            let address = join(list(&status["loadBalancer"]["ingress"]).map(|i| {
                if i["ip"].is_string() {
                    s(&i["ip"])
                } else {
                    s(&i["hostname"])
                }
            }));
            let ports = if list(&spec["tls"]).count() > 0 {
                "80, 443"
            } else {
                "80"
            };
            vec![
                json!(name),
                json!(or_none(s(&spec["ingressClassName"]))),
                json!(if hosts.is_empty() { "*".into() } else { hosts }),
                json!(address),
                json!(ports),
                json!(created),
            ]
        }
        "persistentvolumeclaims" => vec![
            json!(name),
            json!(phase_or_terminating(meta, status)),
            json!(s(&spec["volumeName"])),
            json!(s(&status["capacity"]["storage"])),
            json!(access_modes(&status["accessModes"])),
            json!(s(&spec["storageClassName"])),
            json!(or_none(s(&spec["volumeAttributesClassName"]))),
            json!(created),
        ],
        "horizontalpodautoscalers" => {
            let target = &spec["scaleTargetRef"];
            let targets = join(list(&spec["metrics"]).map(|m| {
                let res = &m["resource"];
                let current =
                    list(&status["currentMetrics"]).find(|c| c["resource"]["name"] == res["name"]);
                let cur = current
                    .map(|c| {
                        c["resource"]["current"]["averageUtilization"]
                            .as_i64()
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(|| s(&c["resource"]["current"]["averageValue"]))
                    })
                    .unwrap_or_else(|| "<unknown>".into());
                let want = res["target"]["averageUtilization"]
                    .as_i64()
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| s(&res["target"]["averageValue"]));
                format!("{}: {cur}/{want}", s(&res["name"]))
            }));
            vec![
                json!(name),
                json!(format!("{}/{}", s(&target["kind"]), s(&target["name"]))),
                json!(or_none(targets)),
                json!(spec["minReplicas"].as_i64().unwrap_or(1).to_string()),
                json!(n(&spec["maxReplicas"])),
                json!(n(&status["currentReplicas"])),
                json!(created),
            ]
        }
        "roles" | "clusterroles" | "limitranges" => {
            vec![json!(name), json!(s(&meta["creationTimestamp"]))]
        }
        "rolebindings" | "clusterrolebindings" => {
            let subjects = |kind: &str| {
                join(list(&o["subjects"]).filter(|x| x["kind"] == kind).map(|x| {
                    if kind == "ServiceAccount" {
                        format!("{}/{}", s(&x["namespace"]), s(&x["name"]))
                    } else {
                        s(&x["name"])
                    }
                }))
            };
            let role = format!("{}/{}", s(&o["roleRef"]["kind"]), s(&o["roleRef"]["name"]));
            vec![
                json!(name),
                json!(role),
                json!(created),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        "ingressclasses" => {
            let p = &spec["parameters"];
            let params = if p.is_object() {
                let group = p["apiGroup"]
                    .as_str()
                    .map(|g| format!(".{g}"))
                    .unwrap_or_default();
                format!("{}{group}/{}", s(&p["kind"]), s(&p["name"]))
            } else {
                "<none>".into()
            };
            vec![
                json!(name),
                json!(s(&spec["controller"])),
                json!(params),
                json!(created),
            ]
        }
        "networkpolicies" => vec![
            json!(name),
            json!(or_none(crate::selectors::selector_text(
                &spec["podSelector"]
            ))),
            json!(created),
        ],
        "poddisruptionbudgets" => vec![
            json!(name),
            json!(if spec["minAvailable"].is_null() {
                "N/A".into()
            } else {
                s(&spec["minAvailable"])
            }),
            json!(if spec["maxUnavailable"].is_null() {
                "N/A".into()
            } else {
                s(&spec["maxUnavailable"])
            }),
            json!(n(&status["disruptionsAllowed"])),
            json!(created),
        ],
        "persistentvolumes" => {
            let claim = &spec["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", s(&claim["namespace"]), s(&claim["name"]))
            } else {
                String::new()
            };
            vec![
                json!(name),
                json!(s(&spec["capacity"]["storage"])),
                json!(access_modes(&spec["accessModes"])),
                json!(s(&spec["persistentVolumeReclaimPolicy"])),
                json!(phase_or_terminating(meta, status)),
                json!(claim),
                json!(s(&spec["storageClassName"])),
                json!(or_none(s(&spec["volumeAttributesClassName"]))),
                json!(s(&status["reason"])),
                json!(created),
                json!(s(&spec["volumeMode"])),
            ]
        }
        "storageclasses" => {
            let default =
                meta["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true";
            let shown = if default {
                format!("{name} (default)")
            } else {
                name
            };
            vec![
                json!(shown),
                json!(s(&o["provisioner"])),
                json!(if o["reclaimPolicy"].is_string() {
                    s(&o["reclaimPolicy"])
                } else {
                    "Delete".into()
                }),
                json!(if o["volumeBindingMode"].is_string() {
                    s(&o["volumeBindingMode"])
                } else {
                    "Immediate".into()
                }),
                json!(
                    o["allowVolumeExpansion"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                ),
                json!(created),
            ]
        }
        "priorityclasses" => vec![
            json!(name),
            json!(n(&o["value"])),
            json!(o["globalDefault"].as_bool().unwrap_or(false)),
            json!(created),
            json!(if o["preemptionPolicy"].is_string() {
                s(&o["preemptionPolicy"])
            } else {
                "PreemptLowerPriority".into()
            }),
        ],
        "resourcequotas" => {
            let usage = |prefix: bool| {
                let mut parts: Vec<String> = status["hard"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.starts_with("limits.") == prefix)
                    .map(|(k, hard)| {
                        format!(
                            "{k}: {}/{}",
                            if status["used"][k].is_string() {
                                s(&status["used"][k])
                            } else {
                                "0".into()
                            },
                            s(hard)
                        )
                    })
                    .collect();
                parts.sort();
                parts.join(", ")
            };
            vec![
                json!(name),
                json!(created),
                json!(usage(false)),
                json!(usage(true)),
            ]
        }
        "controllerrevisions" => {
            let owner = list(&meta["ownerReferences"]).find(|r| r["controller"] == true);
            let controller = owner.map_or("<none>".into(), |r| {
                format!("{}/{}", s(&r["kind"]).to_lowercase(), s(&r["name"]))
            });
            vec![
                json!(name),
                json!(controller),
                json!(n(&o["revision"])),
                json!(created),
            ]
        }
        "endpointslices" => {
            let ports = join(list(&o["ports"]).map(|p| n(&p["port"]).to_string()));
            let addrs: Vec<String> = list(&o["endpoints"])
                .flat_map(|e| list(&e["addresses"]).map(s))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                json!(name),
                json!(s(&o["addressType"])),
                json!(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports
                }),
                json!(if shown.is_empty() {
                    "<unset>".into()
                } else {
                    shown
                }),
                json!(created),
            ]
        }
        "leases" => vec![
            json!(name),
            json!(s(&spec["holderIdentity"])),
            json!(created),
        ],
        _ => vec![json!(name), json!(created)],
    }
}

/// `PartialObjectMetadata` for one object: what a Table row carries by default.
pub fn partial_metadata(metadata: Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata})
}

/// How much of each object a Table row includes (`includeObject`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

/// A `Table` of `objects`; `resource_version` and `continue` come from the list.
pub fn table(
    rt: &ResourceType,
    objects: &[&Value],
    list_meta: Value,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let cols = columns(rt);
    let defs: Vec<Value> = cols
        .iter()
        .map(|(name, ty, priority)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|&o| {
            // Columns print from the stored form, as upstream's printers
            // print the internal version whatever version was asked for.
            let stored = rt.conversion.and_then(|c| (c.to_storage)(o.clone()).ok());
            let mut row = json!({"cells": cells(rt, stored.as_ref().unwrap_or(o))});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(o["metadata"].clone()),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "rows": rows});
    t["columnDefinitions"] = if with_columns { json!(defs) } else { json!([]) };
    t
}

/// A volume's or claim's phase, or `Terminating` once its deletion is
/// asked for (a protection finalizer may hold it).
fn phase_or_terminating(meta: &Value, status: &Value) -> String {
    if meta["deletionTimestamp"].is_string() {
        "Terminating".into()
    } else {
        status["phase"].as_str().unwrap_or_default().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (49 * 3600, "2d1h"),
            (30 * 86400, "30d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn every_row_fills_its_columns() {
        let registry = crate::registry::Registry::builtin();
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for rt in registry.types() {
            assert_eq!(cells(rt, &obj).len(), columns(rt).len(), "{}", rt.plural);
        }
    }

    #[test]
    fn pod_status_column() {
        let pod = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running", "containerStatuses": [{"ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(
            pod_status(&pod),
            ("0/1".into(), 3, "CrashLoopBackOff".into())
        );
        let running = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        assert_eq!(pod_status(&running), ("1/1".into(), 0, "Running".into()));
        let gated = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}});
        assert_eq!(
            pod_status(&gated),
            ("0/1".into(), 0, "SchedulingGated".into())
        );
    }
}
