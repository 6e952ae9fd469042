//! nftables documents in nft's JSON form, applied by `nft -j -f -` (the
//! `nftables` crate runs it): every document is one transaction, applied
//! whole or not at all. The documents are written here with serde_json
//! because the crate's typed schema cannot declare verdict maps, which the
//! proxy's rules are built on.

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::NetError;

/// One transaction on one `ip` table.
pub struct Batch {
    table: String,
    commands: Vec<Value>,
}

impl Batch {
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            commands: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    fn push(&mut self, verb: &str, kind: &str, mut body: Value) {
        body["family"] = json!("ip");
        body["table"] = json!(self.table);
        self.commands.push(json!({ verb: { kind: body } }));
    }

    /// Makes the table if missing (`add` of an existing table is a no-op).
    pub fn add_table(&mut self) {
        self.commands
            .push(json!({"add": {"table": {"family": "ip", "name": self.table}}}));
    }

    pub fn delete_table(&mut self) {
        self.commands
            .push(json!({"delete": {"table": {"family": "ip", "name": self.table}}}));
    }

    pub fn add_chain(&mut self, name: &str) {
        self.push("add", "chain", json!({"name": name}));
    }

    /// A chain hooked into netfilter: `kind` filter or nat, at `priority`.
    pub fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32) {
        self.push(
            "add",
            "chain",
            json!({"name": name, "type": kind, "hook": hook, "prio": priority, "policy": "accept"}),
        );
    }

    pub fn flush_chain(&mut self, name: &str) {
        self.push("flush", "chain", json!({"name": name}));
    }

    pub fn delete_chain(&mut self, name: &str) {
        self.push("delete", "chain", json!({"name": name}));
    }

    pub fn add_rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.push("add", "rule", json!({"chain": chain, "expr": expr}));
    }

    /// A set of `key` (nft type names, concatenated when several); with
    /// `timeout` seconds, elements the rules add expire.
    pub fn add_set(&mut self, name: &str, key: &[&str], timeout: Option<u32>) {
        let mut body = json!({"name": name, "type": set_type(key)});
        if let Some(t) = timeout {
            body["flags"] = json!(["timeout"]);
            body["timeout"] = json!(t);
        }
        self.push("add", "set", body);
    }

    pub fn delete_set(&mut self, name: &str) {
        self.push("delete", "set", json!({"name": name}));
    }

    /// A map from `key` to verdicts.
    pub fn add_verdict_map(&mut self, name: &str, key: &[&str]) {
        self.push(
            "add",
            "map",
            json!({"name": name, "type": set_type(key), "map": "verdict"}),
        );
    }

    pub fn add_elements(&mut self, set: &str, elements: Vec<Value>) {
        if !elements.is_empty() {
            self.push("add", "element", json!({"name": set, "elem": elements}));
        }
    }

    pub fn delete_elements(&mut self, set: &str, elements: Vec<Value>) {
        if !elements.is_empty() {
            self.push("delete", "element", json!({"name": set, "elem": elements}));
        }
    }

    /// Applies the whole batch as one transaction.
    pub async fn apply(self) -> Result<(), NetError> {
        if self.is_empty() {
            return Ok(());
        }
        let document = json!({"nftables": self.commands}).to_string();
        let args: [&str; 0] = [];
        nftables::helper::apply_ruleset_raw_async(&document, nftables::helper::DEFAULT_NFT, args)
            .await?;
        Ok(())
    }
}

fn set_type(key: &[&str]) -> Value {
    match key {
        [one] => json!(one),
        many => json!(many),
    }
}

/// Whether an `ip` table of that name exists.
pub async fn table_exists(name: &str) -> Result<bool, NetError> {
    let args = ["list", "tables", "ip"];
    let out = nftables::helper::get_current_ruleset_raw_async(nftables::helper::DEFAULT_NFT, args)
        .await?;
    let doc: Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["table"]["name"] == name))
}

/// Deletes an `ip` table if it exists.
pub async fn delete_table(name: &str) -> Result<(), NetError> {
    if table_exists(name).await? {
        let mut batch = Batch::new(name);
        batch.delete_table();
        batch.apply().await?;
    }
    Ok(())
}

pub fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

pub fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

pub fn concat(parts: Vec<Value>) -> Value {
    json!({"concat": parts})
}

pub fn prefix(net: &Ipv4Net) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

pub fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

pub fn eq(left: Value, right: Value) -> Value {
    matches("==", left, right)
}

pub fn ne(left: Value, right: Value) -> Value {
    matches("!=", left, right)
}

pub fn jump(chain: &str) -> Value {
    json!({"jump": {"target": chain}})
}

pub fn goto(chain: &str) -> Value {
    json!({"goto": {"target": chain}})
}

/// `fib <which> type`: the kind of address the source or destination is.
pub fn fib_type(which: &str) -> Value {
    json!({"fib": {"result": "type", "flags": [which]}})
}

pub fn ct_state_new() -> Value {
    matches("in", json!({"ct": {"key": "state"}}), json!("new"))
}

/// Writes a sysctl of this process's network namespace.
pub fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let file = format!("/proc/sys/{path}");
    std::fs::write(&file, value).map_err(|e| NetError::Io(file, e))
}
