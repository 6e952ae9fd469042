//! StorageObjectInUseProtection, as upstream's: every new claim gets the
//! finalizer `kubernetes.io/pvc-protection` and every new volume
//! `kubernetes.io/pv-protection`, so that deleting one a pod still uses,
//! or one still bound, leaves it Terminating until the protection
//! controllers see it free and remove the finalizer.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{AdmissionPlugin, Attributes, Operation, Reads};
use crate::status::ApiResult;

pub const CLAIM_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const VOLUME_FINALIZER: &str = "kubernetes.io/pv-protection";

pub struct StorageObjectInUseProtection;

#[async_trait]
impl AdmissionPlugin for StorageObjectInUseProtection {
    fn name(&self) -> &'static str {
        "StorageObjectInUseProtection"
    }

    async fn mutate(
        &self,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        _reads: &Reads<'_>,
    ) -> ApiResult<()> {
        let rt = attrs.resource;
        if attrs.operation != Operation::Create
            || attrs.subresource.is_some()
            || !rt.group.is_empty()
        {
            return Ok(());
        }
        let finalizer = match rt.plural {
            "persistentvolumeclaims" => CLAIM_FINALIZER,
            "persistentvolumes" => VOLUME_FINALIZER,
            _ => return Ok(()),
        };
        add_finalizer(obj, finalizer);
        Ok(())
    }
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(finalizer.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_is_added_once() {
        let mut claim = json!({"metadata": {"name": "data"}});
        add_finalizer(&mut claim, CLAIM_FINALIZER);
        add_finalizer(&mut claim, CLAIM_FINALIZER);
        assert_eq!(claim["metadata"]["finalizers"], json!([CLAIM_FINALIZER]));
        let mut volume = json!({"metadata": {"name": "pv", "finalizers": ["example.com/keep"]}});
        add_finalizer(&mut volume, VOLUME_FINALIZER);
        assert_eq!(
            volume["metadata"]["finalizers"],
            json!(["example.com/keep", VOLUME_FINALIZER])
        );
    }
}
