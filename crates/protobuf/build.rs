//! Generates the table of Kubernetes protobuf messages the decoder walks.
//!
//! Message names, field tags and field kinds come from k8s-pb (prost code
//! generated from upstream's .proto files); the JSON name of each field comes
//! from k8s-openapi's serde code for the same type, since prost's snake_case
//! names cannot be turned back into upstream's camelCase reliably (podCIDRs,
//! hostIPC). Both are build-dependencies, so their sources are unpacked in
//! Cargo's registry before this script runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

struct Field {
    tag: u32,
    json: String,
    kind: String,
    repeated: bool,
    /// The prost name without underscores, lowercased, as `json_names` keys fields.
    key: String,
    /// The message of a message field.
    message: Option<String>,
    /// Go embeds the message's fields in the parent's JSON (`json:",inline"`):
    /// an IngressRule's `http`, a Volume's `hostPath`, a Probe's `exec`.
    inline: bool,
}

/// Where Cargo unpacked a build-dependency: `<CARGO_HOME>/registry/src/<index>/<name>-<version>`,
/// with the version pinned in the workspace's Cargo.lock. (`cargo metadata`
/// would need every package of the workspace downloaded, dev-dependencies
/// included, which a plain `cargo build` does not do.)
fn package_dir(name: &str) -> PathBuf {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let lock = manifest_dir
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.exists())
        .expect("the workspace's Cargo.lock");
    println!("cargo::rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap();
    let version = text
        .split("[[package]]")
        .find(|block| {
            block
                .lines()
                .any(|l| l.trim() == format!("name = {name:?}"))
        })
        .and_then(|block| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix("version = "))
        })
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("{name} is not in {}", lock.display()));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or CARGO_HOME")).join(".cargo")
        });
    let registries = cargo_home.join("registry").join("src");
    std::fs::read_dir(&registries)
        .unwrap_or_else(|e| panic!("reading {}: {e}", registries.display()))
        .flatten()
        .map(|index| index.path().join(format!("{name}-{version}")))
        .find(|dir| dir.join("Cargo.toml").exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} {version} is not unpacked under {}",
                registries.display()
            )
        })
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// k8s-openapi: for every type, its JSON field names keyed by the lowercase
/// form without underscores (which matches prost's names the same way).
fn json_names(root: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let src = root.join("src");
    let latest = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("v1_"))
        .max_by_key(|n| n[3..].parse::<u32>().unwrap_or(0))
        .expect("a k8s-openapi version directory");
    let base = src.join(&latest);
    let mut files = Vec::new();
    rs_files(&base, &mut files);
    let mut types = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(name) = text.lines().find_map(|l| {
            l.strip_prefix("pub struct ")
                .and_then(|r| r.split([' ', '{', '(']).next())
        }) else {
            continue;
        };
        let module: Vec<String> = file
            .parent()
            .unwrap()
            .strip_prefix(&base)
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some((json, rest)) = line
                .strip_prefix('"')
                .and_then(|l| l.split_once("\" => Field::Key_"))
            {
                let snake = rest.trim_end_matches(',');
                fields.insert(snake.replace('_', "").to_lowercase(), json.to_owned());
            }
        }
        types.insert(format!("{}.{name}", module.join(".")), fields);
    }
    types
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        let mut chars = part.chars();
        match chars.next() {
            Some(c) if i > 0 => {
                out.extend(c.to_uppercase());
                out.extend(chars);
            }
            Some(c) => {
                out.push(c);
                out.extend(chars);
            }
            None => {}
        }
    }
    out
}

/// A message field k8s-openapi's type lacks is embedded when every field of
/// its message is one of the parent's in k8s-openapi (which flattens Go's
/// inline structs); otherwise it stays a field of its own. An embedded
/// message k8s-openapi has no type for takes its JSON names from the parent
/// (a VolumeSource's `downwardAPI` is known only as a Volume's).
fn settle_inline(
    messages: &mut BTreeMap<String, Vec<Field>>,
    names: &BTreeMap<String, BTreeMap<String, String>>,
) {
    let keys: BTreeMap<String, Vec<String>> = messages
        .iter()
        .map(|(name, fields)| (name.clone(), fields.iter().map(|f| f.key.clone()).collect()))
        .collect();
    let mut renames: Vec<(String, &BTreeMap<String, String>)> = Vec::new();
    for (name, fields) in messages.iter_mut() {
        let Some(parent) = names.get(name) else {
            continue;
        };
        for f in fields.iter_mut().filter(|f| f.inline) {
            let sub = f.message.clone().unwrap_or_default();
            f.inline = keys
                .get(&sub)
                .is_some_and(|k| !k.is_empty() && k.iter().all(|k| parent.contains_key(k)));
            if f.inline && !names.contains_key(&sub) {
                renames.push((sub, parent));
            }
        }
    }
    for (sub, parent) in renames {
        for f in messages.get_mut(&sub).into_iter().flatten() {
            f.json.clone_from(&parent[&f.key]);
        }
    }
}

/// The message a field's Rust type names, resolved against the module it is in.
fn message_type(ty: &str, module: &[String]) -> String {
    let std_names = ["String", "Vec", "Option", "BTreeMap", "Box"];
    let token = ty
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .rfind(|t| {
            let last = t.rsplit("::").next().unwrap_or_default();
            last.starts_with(|c: char| c.is_ascii_uppercase()) && !std_names.contains(&last)
        })
        .unwrap_or_else(|| panic!("no message type in {ty}"));
    let mut path: Vec<String> = module.to_vec();
    let mut rest = token.trim_start_matches("::");
    while let Some(r) = rest.strip_prefix("super::") {
        path.pop();
        rest = r;
    }
    if let Some(r) = rest.strip_prefix("crate::") {
        path.clear();
        rest = r;
    }
    path.extend(rest.split("::").map(str::to_owned));
    path.join(".")
}

fn main() {
    let pb = package_dir("k8s-pb");
    let openapi = package_dir("k8s-openapi");
    println!("cargo::rerun-if-changed=build.rs");
    let names = json_names(&openapi);
    let mut files = Vec::new();
    rs_files(&pb.join("src"), &mut files);
    let mut messages: BTreeMap<String, Vec<Field>> = BTreeMap::new();
    for file in files {
        let module: Vec<String> = file
            .parent()
            .unwrap()
            .strip_prefix(pb.join("src"))
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let text = std::fs::read_to_string(&file).unwrap();
        let mut current: Option<(String, Vec<Field>)> = None;
        let mut attr: Option<String> = None;
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let t = line.trim();
            if let Some(name) = t
                .strip_prefix("pub struct ")
                .and_then(|r| r.strip_suffix(" {"))
            {
                current = Some((name.to_owned(), Vec::new()));
            } else if line == "}" {
                if let Some((name, fields)) = current.take() {
                    messages.insert(format!("{}.{name}", module.join(".")), fields);
                }
            } else if let Some(a) = t
                .strip_prefix("#[prost(")
                .and_then(|r| r.strip_suffix(")]"))
            {
                attr = Some(a.to_owned());
            } else if let (Some(a), Some((msg, fields))) = (attr.as_ref(), current.as_mut())
                && let Some(decl) = t.strip_prefix("pub ")
            {
                let (field, ty_start) = decl.split_once(':').unwrap();
                let field = field.trim_start_matches("r#");
                let mut ty = ty_start.to_owned();
                // A type can span lines; it ends at a comma outside angle brackets.
                while !(ty.trim_end().ends_with(',')
                    && ty.matches('<').count() == ty.matches('>').count())
                {
                    ty.push_str(lines.next().unwrap().trim());
                }
                let tag: u32 = a
                    .split("tag = \"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap()
                    .parse()
                    .unwrap();
                let repeated = a.contains("repeated");
                let head = a.split(',').next().unwrap().trim();
                let kind = match head {
                    "string" => "Kind::String".to_owned(),
                    "int32" | "int64" => "Kind::Int".to_owned(),
                    "bool" => "Kind::Bool".to_owned(),
                    "double" => "Kind::Double".to_owned(),
                    h if h.starts_with("bytes") => "Kind::Bytes".to_owned(),
                    "message" => format!("Kind::Message({:?})", message_type(&ty, &module)),
                    h if h.starts_with("btree_map") => {
                        let value = a
                            .split("string, ")
                            .nth(1)
                            .and_then(|r| r.split('"').next())
                            .unwrap();
                        match value {
                            "string" => "Kind::MapString".to_owned(),
                            "bytes" => "Kind::MapBytes".to_owned(),
                            _ => format!("Kind::MapMessage({:?})", message_type(&ty, &module)),
                        }
                    }
                    other => panic!("unhandled prost field kind {other} in {msg}.{field}"),
                };
                let type_key = format!("{}.{msg}", module.join("."));
                let json = names
                    .get(&type_key)
                    .and_then(|n| n.get(&field.replace('_', "").to_lowercase()))
                    .cloned();
                let message = (head == "message").then(|| message_type(&ty, &module));
                fields.push(Field {
                    tag,
                    // Settled once every message is known; see `settle_inline`.
                    inline: json.is_none() && message.is_some() && names.contains_key(&type_key),
                    json: json.unwrap_or_else(|| lower_camel(field)),
                    kind,
                    repeated,
                    key: field.replace('_', "").to_lowercase(),
                    message,
                });
                attr = None;
            }
        }
    }
    settle_inline(&mut messages, &names);
    let mut out = String::from("pub(crate) static MESSAGES: &[Message] = &[\n");
    for (name, fields) in &messages {
        let _ = write!(out, "    Message {{ name: {name:?}, fields: &[");
        for f in fields {
            let _ = write!(
                out,
                "Field {{ tag: {}, json: {:?}, kind: {}, repeated: {}, inline: {} }}, ",
                f.tag, f.json, f.kind, f.repeated, f.inline
            );
        }
        out.push_str("] },\n");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("messages.rs");
    std::fs::write(dest, out).unwrap();
}
