//! Kubernetes' protobuf encoding of built-in objects, decoded to the JSON
//! form the API server works with.
//!
//! Client-go's typed clients (kubectl's `create configmap`, `run`, `drain`,
//! `auth can-i` ...) send `application/vnd.kubernetes.protobuf`: a `k8s\0`
//! magic, then a `runtime.Unknown` envelope naming apiVersion and kind around
//! the object's message. The message layouts come from upstream's .proto
//! definitions (see build.rs); the decoder walks the wire format with them.

use base64::Engine;
use serde_json::{Map, Value};

include!(concat!(env!("OUT_DIR"), "/messages.rs"));

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the body does not start with the Kubernetes protobuf prefix")]
    NoMagic,
    #[error("no protobuf message is known for {0}")]
    UnknownKind(String),
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    String,
    Int,
    Bool,
    Double,
    Bytes,
    Message(&'static str),
    MapString,
    MapBytes,
    MapMessage(&'static str),
}

#[derive(Debug)]
struct Field {
    tag: u32,
    json: &'static str,
    kind: Kind,
    repeated: bool,
    /// The message's fields are the parent's in JSON (Go's `json:",inline"`).
    inline: bool,
}

#[derive(Debug)]
struct Message {
    name: &'static str,
    fields: &'static [Field],
}

fn message(name: &str) -> Option<&'static Message> {
    MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &MESSAGES[i])
}

/// A cursor over protobuf wire data.
struct Reader<'a>(&'a [u8]);

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    /// No Kubernetes message has 32-bit fixed fields; skipped if met.
    Fixed32,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .0
                .split_first()
                .ok_or(DecodeError::Malformed("truncated varint"))?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Malformed("truncated field"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field's tag and value, or None at the end.
    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag =
            u32::try_from(key >> 3).map_err(|_| DecodeError::Malformed("tag out of range"))?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| DecodeError::Malformed("length out of range"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return Err(DecodeError::Malformed("unsupported wire type")),
        };
        Ok(Some((tag, wire)))
    }
}

/// Decodes a request body: envelope, then the object, with apiVersion and kind set.
pub fn decode_object(data: &[u8]) -> Result<Value, DecodeError> {
    let body = data.strip_prefix(MAGIC).ok_or(DecodeError::NoMagic)?;
    // runtime.Unknown: typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2.
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut r = Reader(body);
    while let Some((tag, wire)) = r.field()? {
        match (tag, wire) {
            (1, Wire::Bytes(meta)) => {
                let mut m = Reader(meta);
                while let Some((t, w)) = m.field()? {
                    if let Wire::Bytes(s) = w {
                        let s = String::from_utf8_lossy(s).into_owned();
                        match t {
                            1 => api_version = s,
                            2 => kind = s,
                            _ => {}
                        }
                    }
                }
            }
            (2, Wire::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let name = message_for(&api_version, &kind)
        .ok_or_else(|| DecodeError::UnknownKind(format!("{api_version}, Kind={kind}")))?;
    let mut object = match decode_value(name, raw)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

/// The message for an apiVersion and kind: `apps/v1` Deployment is
/// `api.apps.v1.Deployment`; `rbac.authorization.k8s.io/v1` Role is
/// `api.rbac.v1.Role`; meta types (DeleteOptions) live in apimachinery.
fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let short = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    let candidates = [
        format!("api.{short}.{version}.{kind}"),
        format!("apimachinery.pkg.apis.meta.{version}.{kind}"),
        format!("apiextensions_apiserver.pkg.apis.{short}.{version}.{kind}"),
    ];
    candidates.iter().find_map(|c| message(c).map(|m| m.name))
}

fn str_field(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// Formats seconds since the epoch as RFC 3339, with `micros` digits if given.
fn rfc3339(seconds: i64, nanos: i64, micros: bool) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if micros {
        format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z",
            nanos / 1000
        )
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Go's `time.Duration.String()` for a count of nanoseconds.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let (h, rem) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let s = trim_fraction(rem, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = div.ilog10() as usize;
    let f = format!("{frac:0digits$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// The varint and length-delimited fields of a small wrapper message.
struct Small<'a>(Vec<(u32, Wire<'a>)>);

impl<'a> Small<'a> {
    fn read(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut fields = Vec::new();
        let mut r = Reader(bytes);
        while let Some(f) = r.field()? {
            fields.push(f);
        }
        Ok(Self(fields))
    }

    fn number(&self, tag: u32) -> i64 {
        self.0
            .iter()
            .find_map(|(t, w)| match w {
                Wire::Varint(v) if *t == tag => Some(*v as i64),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn bytes(&self, tag: u32) -> &'a [u8] {
        self.0
            .iter()
            .find_map(|(t, w)| match w {
                Wire::Bytes(b) if *t == tag => Some(*b),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Decodes one message; well-known wrapper types become their JSON form.
fn decode_value(name: &str, bytes: &[u8]) -> Result<Value, DecodeError> {
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let fields = Small::read(bytes)?;
            let (seconds, nanos) = (fields.number(1), fields.number(2));
            // Go's zero time is `null` in JSON.
            if seconds == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            return Ok(Value::String(rfc3339(
                seconds,
                nanos,
                name.ends_with("MicroTime"),
            )));
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            return Ok(Value::String(go_duration(Small::read(bytes)?.number(1))));
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            return Ok(str_field(Small::read(bytes)?.bytes(1)));
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            // type = 1: 0 for an int (intVal = 2), 1 for a string (strVal = 3).
            let fields = Small::read(bytes)?;
            return Ok(if fields.number(1) == 1 {
                str_field(fields.bytes(3))
            } else {
                Value::from(fields.number(2) as i32)
            });
        }
        "apimachinery.pkg.runtime.RawExtension"
        | "apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => {
            return Ok(serde_json::from_slice(Small::read(bytes)?.bytes(1)).unwrap_or(Value::Null));
        }
        _ => {}
    }
    let msg = message(name).ok_or_else(|| DecodeError::UnknownKind(name.to_owned()))?;
    let mut out = Map::new();
    let mut r = Reader(bytes);
    while let Some((tag, wire)) = r.field()? {
        let Some(field) = msg.fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        match (field.kind, wire) {
            (Kind::MapString | Kind::MapBytes | Kind::MapMessage(_), Wire::Bytes(entry)) => {
                let (mut key, mut value) = (String::new(), None);
                let mut e = Reader(entry);
                while let Some((t, w)) = e.field()? {
                    match (t, w) {
                        (1, Wire::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
                        (2, Wire::Bytes(v)) => value = Some(v),
                        _ => {}
                    }
                }
                let v = value.unwrap_or_default();
                let value = match field.kind {
                    Kind::MapString => str_field(v),
                    Kind::MapBytes => {
                        Value::String(base64::engine::general_purpose::STANDARD.encode(v))
                    }
                    Kind::MapMessage(m) => decode_value(m, v)?,
                    _ => unreachable!("map kinds only"),
                };
                let map = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = map {
                    m.insert(key, value);
                }
            }
            // Packed repeated numbers.
            (Kind::Int, Wire::Bytes(packed)) if field.repeated => {
                let mut p = Reader(packed);
                while !p.0.is_empty() {
                    push(&mut out, field, Value::from(p.varint()? as i64));
                }
            }
            (Kind::Message(m), Wire::Bytes(b)) if field.inline => {
                if let Value::Object(embedded) = decode_value(m, b)? {
                    out.extend(embedded);
                }
            }
            (kind, wire) => {
                let value = match (kind, wire) {
                    (Kind::String, Wire::Bytes(b)) => str_field(b),
                    (Kind::Bytes, Wire::Bytes(b)) => {
                        Value::String(base64::engine::general_purpose::STANDARD.encode(b))
                    }
                    (Kind::Message(m), Wire::Bytes(b)) => decode_value(m, b)?,
                    (Kind::Int, Wire::Varint(v)) => Value::from(v as i64),
                    (Kind::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
                    (Kind::Double, Wire::Fixed64(v)) => {
                        serde_json::Number::from_f64(f64::from_bits(v))
                            .map_or(Value::Null, Value::Number)
                    }
                    _ => return Err(DecodeError::Malformed("field has the wrong wire type")),
                };
                // Go marshals zero strings of plain fields; JSON's omitempty drops them.
                let empty = matches!(&value, Value::String(s) if s.is_empty()) || value.is_null();
                if field.repeated {
                    push(&mut out, field, value);
                } else if !empty {
                    out.insert(field.json.to_owned(), value);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, field: &Field, value: Value) {
    if let Value::Array(items) = out
        .entry(field.json)
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        items.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(tag: u32, data: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn int_field(tag: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3, out);
        varint(v, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut type_meta);
        bytes_field(2, kind.as_bytes(), &mut type_meta);
        let mut unknown = Vec::new();
        bytes_field(1, &type_meta, &mut unknown);
        bytes_field(2, raw, &mut unknown);
        let mut out = MAGIC.to_vec();
        out.extend(unknown);
        out
    }

    #[test]
    fn decodes_a_configmap() {
        // ObjectMeta{name = 1: "app", namespace = 3: "", creationTimestamp = 8: Time{}}
        let mut meta = Vec::new();
        bytes_field(1, b"app", &mut meta);
        bytes_field(3, b"", &mut meta);
        bytes_field(8, b"", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"a", &mut entry);
        bytes_field(2, b"1", &mut entry);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry, &mut cm);
        let v = decode_object(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}, "data": {"a": "1"}})
        );
    }

    #[test]
    fn inline_messages_are_embedded_as_go_embeds_them() {
        // IngressRule{host = 1, ingressRuleValue = 2: {http = 1: {paths = 1: [{path = 1}]}}}
        let mut path = Vec::new();
        bytes_field(1, b"/a", &mut path);
        let mut http = Vec::new();
        bytes_field(1, &path, &mut http);
        let mut value = Vec::new();
        bytes_field(1, &http, &mut value);
        let mut rule = Vec::new();
        bytes_field(1, b"x.example", &mut rule);
        bytes_field(2, &value, &mut rule);
        let mut spec = Vec::new();
        bytes_field(3, &rule, &mut spec);
        let mut ingress = Vec::new();
        bytes_field(2, &spec, &mut ingress);
        let v = decode_object(&envelope("networking.k8s.io/v1", "Ingress", &ingress)).unwrap();
        assert_eq!(
            v["spec"]["rules"],
            serde_json::json!([{"host": "x.example", "http": {"paths": [{"path": "/a"}]}}])
        );
        // Volume{name = 1, volumeSource = 2: {downwardAPI = 16: {}}}: the
        // embedded message's names are the parent's.
        let mut source = Vec::new();
        bytes_field(16, b"", &mut source);
        let mut volume = Vec::new();
        bytes_field(1, b"v", &mut volume);
        bytes_field(2, &source, &mut volume);
        assert_eq!(
            decode_value("api.core.v1.Volume", &volume).unwrap(),
            serde_json::json!({"name": "v", "downwardAPI": {}})
        );
    }

    #[test]
    fn json_names_follow_upstream_not_snake_case() {
        let spec = message("api.core.v1.PodSpec").unwrap();
        let names: Vec<&str> = spec.fields.iter().map(|f| f.json).collect();
        for n in [
            "hostIPC",
            "hostPID",
            "dnsPolicy",
            "terminationGracePeriodSeconds",
            "containers",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let node = message("api.core.v1.NodeSpec").unwrap();
        assert!(node.fields.iter().any(|f| f.json == "podCIDRs"));
    }

    #[test]
    fn wrapper_types() {
        let mut ios = Vec::new();
        int_field(1, 1, &mut ios);
        bytes_field(3, b"25%", &mut ios);
        assert_eq!(
            decode_value("apimachinery.pkg.util.intstr.IntOrString", &ios).unwrap(),
            "25%"
        );
        let mut t = Vec::new();
        int_field(1, 1_700_000_000, &mut t);
        assert_eq!(
            decode_value("apimachinery.pkg.apis.meta.v1.Time", &t).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn finds_messages_by_group() {
        assert_eq!(
            message_for("apps/v1", "Deployment"),
            Some("api.apps.v1.Deployment")
        );
        assert_eq!(
            message_for("rbac.authorization.k8s.io/v1", "Role"),
            Some("api.rbac.v1.Role")
        );
        assert_eq!(
            message_for("v1", "DeleteOptions"),
            Some("apimachinery.pkg.apis.meta.v1.DeleteOptions")
        );
        assert_eq!(message_for("v1", "Nope"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode_object(b"{}"), Err(DecodeError::NoMagic));
        assert!(decode_object(b"k8s\0\x0a\xff\xff").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes after the magic decode or fail, never panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut data = super::MAGIC.to_vec();
            data.extend(body);
            let _ = super::decode_object(&data);
        }
    }
}
