//! Finalizers that kube-runtime's `finalizer` helper cannot express.
//!
//! That helper adds its finalizer to every object it is given and removes it as soon as one
//! cleanup pass succeeds. It has no way to say "cleanup is under way, keep the finalizer
//! and look again later" without failing the reconcile (a deleted StaticIPPool waits,
//! normally, until no record holds an address of it), nor to take a finalizer off an object
//! that is not being deleted (a set whose static IPs are off). These writes are made here,
//! once, conditionally on the resourceVersion the decision was made from.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::KubeError;

/// Whether `object` carries `finalizer`.
pub fn has<K: Resource>(object: &K, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// Adds (`present`) or removes `finalizer` on `object`, at the resourceVersion it was read
/// at. `Ok(false)` when the object changed or is gone since: the caller judges it again
/// from the change's watch event (or a requeue).
pub async fn set<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
    present: bool,
) -> Result<bool, KubeError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        finalizers.push(finalizer.into());
    }
    let name = object.name_any();
    let patch = json!({"metadata": {
        "resourceVersion": object.resource_version(),
        "finalizers": finalizers,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(false),
        Err(e) => Err(KubeError::new(
            format!(
                "{} the finalizer {finalizer} of {} {name}",
                if present { "adding" } else { "removing" },
                K::kind(&Default::default())
            ),
            e,
        )),
    }
}
