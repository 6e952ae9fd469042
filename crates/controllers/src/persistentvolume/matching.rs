//! Which volume a claim gets, as upstream's findBestMatchForClaim: a volume
//! reserved for the claim (its claimRef names it) first, then of the
//! available ones that fit the smallest, among those with the fewest access
//! modes. A claim whose class binds on its first consumer takes only a
//! volume reserved for it: the scheduler picks the others, for a node.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kubox_scheduler::{bound_to, capacity, class_of, may_take, request, volume_class};

/// The best volume of `volumes` for the claim, if one fits.
pub fn best<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    delay_binding: bool,
) -> Option<&'a PersistentVolume> {
    volumes
        .into_iter()
        .filter(|pv| may_take(pv, claim))
        .filter(|pv| !delay_binding || bound_to(pv, claim))
        .min_by_key(|pv| {
            let modes = pv.spec.as_ref().and_then(|s| s.access_modes.as_ref());
            (
                !bound_to(pv, claim),
                modes.map_or(0, Vec::len),
                capacity(pv),
                pv.metadata.name.clone(),
            )
        })
}

/// Why a volume the claim names by `spec.volumeName` cannot serve it, in
/// upstream's words (checkVolumeSatisfyClaim).
pub fn mismatch(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> Option<String> {
    let name = pv.metadata.name.as_deref().unwrap_or_default();
    let (spec, wanted) = (pv.spec.clone().unwrap_or_default(), claim.spec.clone());
    let wanted = wanted.unwrap_or_default();
    let mode = |m: Option<String>| m.unwrap_or_else(|| "Filesystem".into());
    let modes = spec.access_modes.unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_some() {
        Some(format!("the volume is marked for deletion {name:?}"))
    } else if capacity(pv) < request(claim) {
        Some("requested PV is too small".into())
    } else if volume_class(pv) != class_of(claim) {
        Some("storageClassName does not match".into())
    } else if mode(spec.volume_mode) != mode(wanted.volume_mode) {
        Some("incompatible volumeMode".into())
    } else if !wanted
        .access_modes
        .iter()
        .flatten()
        .all(|m| modes.contains(m))
    {
        Some("incompatible accessMode".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn claim(extra: Value) -> PersistentVolumeClaim {
        let mut c = json!({"metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "resources": {"requests": {"storage": "2Gi"}}}});
        merge(&mut c, extra);
        serde_json::from_value(c).unwrap()
    }

    fn pv(name: &str, size: &str, extra: Value) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": ""},
            "status": {"phase": "Available"}});
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn pick<'a>(claim: &PersistentVolumeClaim, pvs: &'a [PersistentVolume]) -> Option<&'a str> {
        best(claim, pvs, false).and_then(|pv| pv.metadata.name.as_deref())
    }

    #[test]
    fn the_smallest_volume_that_fits_wins() {
        let pvs = [
            pv("big", "10Gi", json!({})),
            pv("small", "1Gi", json!({})),
            pv("fits", "3Gi", json!({})),
            pv(
                "just",
                "2Gi",
                json!({"spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}}),
            ),
        ];
        // The fewest access modes first, then the smallest size.
        assert_eq!(pick(&claim(json!({})), &pvs), Some("fits"));
        let many = claim(json!({"spec": {"accessModes": ["ReadOnlyMany"]}}));
        assert_eq!(pick(&many, &pvs), Some("just"));
        let huge = claim(json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}}));
        assert_eq!(pick(&huge, &pvs), None);
    }

    #[test]
    fn class_selector_mode_and_phase_must_agree() {
        let fast = [pv(
            "fast",
            "5Gi",
            json!({"spec": {"storageClassName": "fast"}}),
        )];
        assert_eq!(pick(&claim(json!({})), &fast), None);
        let labelled = [pv(
            "a",
            "5Gi",
            json!({"metadata": {"labels": {"tier": "db"}}}),
        )];
        let select =
            |tier: &str| claim(json!({"spec": {"selector": {"matchLabels": {"tier": tier}}}}));
        assert_eq!(pick(&select("db"), &labelled), Some("a"));
        assert_eq!(pick(&select("web"), &labelled), None);
        let block = [pv("b", "5Gi", json!({"spec": {"volumeMode": "Block"}}))];
        assert_eq!(pick(&claim(json!({})), &block), None);
        let released = [pv("r", "5Gi", json!({"status": {"phase": "Released"}}))];
        assert_eq!(pick(&claim(json!({})), &released), None);
    }

    #[test]
    fn volumes_reserved_for_the_claim_win_and_others_are_left_alone() {
        let reserved = json!({"spec": {"claimRef": {"namespace": "ns", "name": "data"}}});
        let other = json!({"spec": {"claimRef": {"namespace": "ns", "name": "other"}}});
        let pvs = [
            pv("free", "2Gi", json!({})),
            pv("mine", "8Gi", reserved.clone()),
            pv("theirs", "2Gi", other),
        ];
        assert_eq!(pick(&claim(json!({})), &pvs), Some("mine"));
        // A reservation for an older claim of the same name does not count.
        let stale = [pv(
            "old",
            "2Gi",
            json!({"spec": {"claimRef": {"namespace": "ns",
            "name": "data", "uid": "u0"}}}),
        )];
        assert_eq!(pick(&claim(json!({})), &stale), None);
        // Binding on first consumer: only what is reserved.
        assert_eq!(best(&claim(json!({})), &pvs[..1], true), None);
        assert!(best(&claim(json!({})), &pvs, true).is_some());
    }

    #[test]
    fn a_named_volume_must_satisfy_the_claim() {
        let c = claim(json!({}));
        assert_eq!(mismatch(&pv("a", "2Gi", json!({})), &c), None);
        assert_eq!(
            mismatch(&pv("a", "1Gi", json!({})), &c).as_deref(),
            Some("requested PV is too small")
        );
        let fast = pv("a", "2Gi", json!({"spec": {"storageClassName": "fast"}}));
        assert_eq!(
            mismatch(&fast, &c).as_deref(),
            Some("storageClassName does not match")
        );
        let block = pv("a", "2Gi", json!({"spec": {"volumeMode": "Block"}}));
        assert_eq!(
            mismatch(&block, &c).as_deref(),
            Some("incompatible volumeMode")
        );
        let rox = pv(
            "a",
            "2Gi",
            json!({"spec": {"accessModes": ["ReadOnlyMany"]}}),
        );
        assert_eq!(
            mismatch(&rox, &c).as_deref(),
            Some("incompatible accessMode")
        );
    }
}
