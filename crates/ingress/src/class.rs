//! Which Ingresses are this controller's: by IngressClass, as upstream's
//! controllers decide.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressClassSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

/// The `spec.controller` of the IngressClasses kubox serves.
pub const CONTROLLER: &str = "kubox.io/ingress-controller";
/// The IngressClass made at startup.
pub const CLASS: &str = "kubox";
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation from before `spec.ingressClassName`.
const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";

/// The classes served, worked out from the IngressClasses that exist.
#[derive(Clone, Debug, Default)]
pub struct Classes {
    names: HashSet<String>,
    /// One of ours is marked default, so Ingresses naming no class are ours.
    default: bool,
}

impl Classes {
    /// Ours are the IngressClasses naming our controller, and the `extra`
    /// names (`nginx`, so the seeds' manifests work unchanged) whether or
    /// not an IngressClass of that name exists.
    pub fn new<'a>(classes: impl IntoIterator<Item = &'a IngressClass>, extra: &[String]) -> Self {
        let mut names: HashSet<String> = extra.iter().cloned().collect();
        let mut default = false;
        for class in classes {
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            if controller == Some(CONTROLLER) {
                names.insert(class.name_any());
                default |=
                    class.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true");
            }
        }
        Self { names, default }
    }

    pub fn serves(&self, ingress: &Ingress) -> bool {
        let named = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .or_else(|| ingress.annotations().get(LEGACY_CLASS).map(String::as_str));
        match named {
            Some(class) => self.names.contains(class),
            None => self.default,
        }
    }
}

/// Creates the `kubox` IngressClass, marked default, unless it exists (an
/// administrator's changes to it stay).
pub async fn ensure(client: kube::Client) -> Result<(), kube::Error> {
    let api: Api<IngressClass> = Api::all(client);
    let class = IngressClass {
        metadata: ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(DEFAULT_CLASS.into(), "true".into())])),
            ..Default::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(CONTROLLER.into()),
            ..Default::default()
        }),
    };
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, controller: &str, default: bool) -> IngressClass {
        let annotations = if default {
            json!({DEFAULT_CLASS: "true"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"controller": controller},
        }))
        .unwrap()
    }

    fn ingress(class: Option<&str>, legacy: Option<&str>) -> Ingress {
        let annotations = legacy.map_or(json!({}), |c| json!({LEGACY_CLASS: c}));
        serde_json::from_value(json!({
            "metadata": {"name": "i", "annotations": annotations},
            "spec": {"ingressClassName": class},
        }))
        .unwrap()
    }

    #[test]
    fn classes_naming_our_controller_and_the_extra_names_are_ours() {
        let classes = [
            class("kubox", CONTROLLER, false),
            class("other", "example.com/other", false),
        ];
        let ours = Classes::new(&classes, &["nginx".into()]);
        assert!(ours.serves(&ingress(Some("kubox"), None)));
        assert!(ours.serves(&ingress(Some("nginx"), None)));
        assert!(ours.serves(&ingress(None, Some("nginx"))));
        assert!(!ours.serves(&ingress(Some("other"), None)));
        assert!(!ours.serves(&ingress(Some("missing"), None)));
        assert!(!ours.serves(&ingress(None, None)), "no default class");
    }

    #[test]
    fn ingresses_without_a_class_are_ours_when_our_class_is_default() {
        let classes = [class("kubox", CONTROLLER, true)];
        assert!(Classes::new(&classes, &[]).serves(&ingress(None, None)));
        let theirs = [class("other", "example.com/other", true)];
        assert!(!Classes::new(&theirs, &[]).serves(&ingress(None, None)));
    }
}
