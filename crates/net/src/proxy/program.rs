//! Turning models into nft transactions: the whole table from nothing, or
//! only what changed between two models, either way one transaction.

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use std::sync::Arc;

use super::model::{CLUSTER_IPS, Elements, Model, Rules, frame};
use crate::nft::Batch;

/// The table replaced whole by `model`, atomically: adding then deleting
/// the table inside the transaction removes whatever was there.
pub fn full(table: &str, service_cidr: &Ipv4Net, model: &Model) -> Batch {
    let mut batch = Batch::new(table);
    batch.add_table();
    batch.delete_table();
    batch.add_table();
    frame(&mut batch, service_cidr);
    let none = Rules::default();
    let pairs: Vec<(&Rules, &Rules)> = model
        .services
        .values()
        .map(|(_, r)| (&none, &**r))
        .collect();
    changes(&mut batch, &pairs);
    batch
}

/// What turns the rules of `old` into those of `new`: only Services whose
/// rules are not the very ones they were are looked at.
pub fn incremental(table: &str, old: &Model, new: &Model) -> Batch {
    let none = Rules::default();
    let mut pairs: Vec<(&Rules, &Rules)> = Vec::new();
    for (id, (_, rules)) in &new.services {
        match old.services.get(id) {
            Some((_, before)) if Arc::ptr_eq(before, rules) => {}
            Some((_, before)) => pairs.push((before, rules)),
            None => pairs.push((&none, rules)),
        }
    }
    for (id, (_, before)) in &old.services {
        if !new.services.contains_key(id) {
            pairs.push((before, &none));
        }
    }
    let mut batch = Batch::new(table);
    changes(&mut batch, &pairs);
    batch
}

/// The commands for each (old, new) pair, phase by phase across all of
/// them, so that an element one Service gives up and another takes is
/// deleted before it is added, and a chain is emptied before it goes.
fn changes(batch: &mut Batch, pairs: &[(&Rules, &Rules)]) {
    for (old, new) in pairs {
        for (set, timeout) in &new.affinity {
            if !old.affinity.contains_key(set) {
                batch.add_set(set, &["ipv4_addr"], Some(*timeout));
            }
        }
    }
    let changed = |old: &Rules, new: &Rules| -> Vec<String> {
        new.chains
            .iter()
            .filter(|(name, rules)| old.chains.get(*name) != Some(rules))
            .map(|(name, _)| name.clone())
            .collect()
    };
    let removed = |old: &Rules, new: &Rules| -> Vec<String> {
        old.chains
            .keys()
            .filter(|name| !new.chains.contains_key(*name))
            .cloned()
            .collect()
    };
    for (old, new) in pairs {
        for name in changed(old, new) {
            if old.chains.contains_key(&name) {
                batch.flush_chain(&name);
            } else {
                batch.add_chain(&name);
            }
        }
        // Emptied first, so no rule refers to them when they go.
        for name in removed(old, new) {
            batch.flush_chain(&name);
        }
    }
    for (old, new) in pairs {
        for name in changed(old, new) {
            for rule in &new.chains[&name] {
                batch.add_rule(&name, rule.clone());
            }
        }
    }
    let empty = Elements::new();
    for (old, new) in pairs {
        for (map, before) in &old.maps {
            let after = new.maps.get(map).unwrap_or(&empty);
            let stale: Vec<Value> = before
                .iter()
                .filter(|(k, v)| after.get(*k) != Some(v))
                .map(|(_, (key, _))| key.clone())
                .collect();
            batch.delete_elements(map, stale);
        }
        let gone: Vec<Value> = old
            .cluster_ips
            .difference(&new.cluster_ips)
            .map(|ip| json!(ip.to_string()))
            .collect();
        batch.delete_elements(CLUSTER_IPS, gone);
    }
    for (old, new) in pairs {
        for (map, after) in &new.maps {
            let before = old.maps.get(map).unwrap_or(&empty);
            let fresh: Vec<Value> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .map(|(_, (key, verdict))| json!([key, verdict]))
                .collect();
            batch.add_elements(map, fresh);
        }
        let added: Vec<Value> = new
            .cluster_ips
            .difference(&old.cluster_ips)
            .map(|ip| json!(ip.to_string()))
            .collect();
        batch.add_elements(CLUSTER_IPS, added);
    }
    for (old, new) in pairs {
        for name in removed(old, new) {
            batch.delete_chain(&name);
        }
        for set in old.affinity.keys() {
            if !new.affinity.contains_key(set) {
                batch.delete_set(set);
            }
        }
    }
}
