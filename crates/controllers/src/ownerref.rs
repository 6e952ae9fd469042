//! Controller references: who controls an object, and upstream's
//! ControllerRefManager, which adopts orphans a controller's selector
//! matches and releases children it no longer matches.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::{Error, is_not_found, is_reason};

/// The reference a controller puts on what it creates: `controller` and
/// `blockOwnerDeletion` set, so foreground deletion waits for the child.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owner reference marked as the object's controller.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The object in `store` that `reference` (from an object in `namespace`)
/// names, if it is of kind `K` and still the same object (same UID).
pub fn resolve<K: Resource<DynamicType = ()> + Clone>(
    store: &kube::runtime::reflector::Store<K>,
    namespace: &str,
    reference: &OwnerReference,
) -> Option<Arc<K>> {
    if reference.kind != K::kind(&()) {
        return None;
    }
    let found =
        store.get(&kube::runtime::reflector::ObjectRef::new(&reference.name).within(namespace))?;
    (found.meta().uid.as_deref() == Some(reference.uid.as_str())).then_some(found)
}

/// Adopts and releases the children of one controller, as upstream's
/// ClaimObject: a child the controller controls stays if the selector
/// matches and is released otherwise (unless the controller is going
/// away); an orphan the selector matches is adopted, unless it or the
/// controller is being deleted. Before the first adoption the controller is
/// read afresh, so a controller deleted meanwhile adopts nothing.
pub struct Claimer<'a, C: Resource<DynamicType = ()>> {
    controller: &'a C,
    selector: &'a Selector,
    fresh: OnceCell<Result<(), String>>,
    controllers: Api<C>,
}

impl<'a, C> Claimer<'a, C>
where
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    pub fn new(controller: &'a C, selector: &'a Selector, controllers: Api<C>) -> Self {
        Self {
            controller,
            selector,
            fresh: OnceCell::new(),
            controllers,
        }
    }

    async fn can_adopt(&self) -> Result<(), String> {
        self.fresh
            .get_or_init(|| async {
                let name = self.controller.name_any();
                let fresh = self.controllers.get(&name).await.map_err(|e| {
                    format!(
                        "can't recheck DeletionTimestamp: {}",
                        crate::api_message(&e)
                    )
                })?;
                if fresh.meta().uid != self.controller.meta().uid {
                    return Err(format!(
                        "original {} {}/{} is gone: got uid {}, wanted {}",
                        C::kind(&()),
                        self.controller.namespace().unwrap_or_default(),
                        name,
                        fresh.meta().uid.as_deref().unwrap_or_default(),
                        self.controller.meta().uid.as_deref().unwrap_or_default()
                    ));
                }
                match &fresh.meta().deletion_timestamp {
                    Some(t) => Err(format!(
                        "{}/{} has just been deleted at {}",
                        fresh.namespace().unwrap_or_default(),
                        name,
                        t.0
                    )),
                    None => Ok(()),
                }
            })
            .await
            .clone()
    }

    /// The children of `candidates` (objects in the controller's namespace)
    /// the controller keeps, after adopting and releasing.
    pub async fn claim<K>(
        &self,
        candidates: Vec<Arc<K>>,
        api: &Api<K>,
    ) -> Result<Vec<Arc<K>>, Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let controller_uid = self.controller.meta().uid.clone().unwrap_or_default();
        let controller_deleting = self.controller.meta().deletion_timestamp.is_some();
        let mut claimed = Vec::new();
        let mut failure = None;
        for child in candidates {
            let matches = self.selector.matches(crate::pods::labels(child.meta()));
            let child_uid = child.meta().uid.clone().unwrap_or_default();
            let name = child.name_any();
            match controller_of(child.meta()) {
                Some(r) if r.uid != controller_uid => {}
                Some(_) if matches => claimed.push(child),
                Some(_) if controller_deleting => {}
                Some(_) => {
                    let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": controller_uid}], "uid": child_uid}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) || is_reason(&e, "Invalid") => {}
                        Err(e) => failure = Some(Error::from(e)),
                    }
                }
                None if controller_deleting
                    || !matches
                    || child.meta().deletion_timestamp.is_some() => {}
                None => {
                    if let Err(why) = self.can_adopt().await {
                        failure = Some(Error::Failed(format!(
                            "can't adopt {} {}/{} ({child_uid}): {why}",
                            K::kind(&()),
                            child.namespace().unwrap_or_default(),
                            name
                        )));
                        continue;
                    }
                    let reference = controller_ref(self.controller);
                    let patch =
                        json!({"metadata": {"ownerReferences": [reference], "uid": child_uid}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
                        .await
                    {
                        Ok(_) => claimed.push(child),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => failure = Some(Error::from(e)),
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(claimed),
        }
    }
}
