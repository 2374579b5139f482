//! `POST /bind`: the scheduler's chosen node for a range-mode static-IP pod becomes final
//! here. The scheduler filters the next pod before this pod's bind finishes, so nothing is
//! taken from the filter's answer: the pod and its record are read live, the addresses come
//! from the node's blocks by compare-and-swap (`ests_staticip::Ipam`), the record is written
//! only if unchanged since read, the pod gets its address annotations (the CNI reads them),
//! and only then is the Binding created. Any failure answers with `Error`, which makes the
//! scheduler forget the placement and try the pod again.
//!
//! Only pods carrying the managed resource `jke.jdcloud.com/static-ip` are sent here (the
//! bind extender's `managedResources`); a pod without it is refused, so no other caller can
//! place a pod of its choosing past taints and affinity.

use ests_api::StaticIP;
use ests_core::extender::{BindStep, bind_step};
use ests_core::pin::{CniAnnotation, address_annotations};
use ests_staticip::Ipam;
use ests_staticip::ipam::Assignment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::wire::{ExtenderBindingArgs, ExtenderBindingResult};
use ests_runtime::Answer;

/// Why a pod was not bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("pod {0} no longer exists")]
    PodGone(String),
    #[error("pod {name} was re-created (UID {found}, the scheduler placed {wanted})")]
    Recreated {
        name: String,
        found: String,
        wanted: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("allocating for pod {pod} on node {node}: {source}")]
    Allocation {
        pod: String,
        node: String,
        #[source]
        source: ests_staticip::ipam::IpamError,
    },
    #[error("the StaticIP of pod {0} kept changing while it was being bound")]
    Contended(String),
    #[error(transparent)]
    Kube(#[from] ests_runtime::KubeError),
}

/// How many times a bind re-reads a record that changed under it.
const ATTEMPTS: usize = 4;

/// Binds pods, allocating for range-mode static-IP pods first.
pub struct Binder {
    pub client: Client,
    pub ipam: Ipam,
    pub cni: Vec<CniAnnotation>,
}

impl Binder {
    /// The answer to a bind call: 200 with an empty `Error` when bound, 200 with the reason
    /// otherwise (the scheduler retries the pod), 400 for a body that is not
    /// ExtenderBindingArgs.
    pub async fn answer(&self, body: &[u8]) -> Answer {
        let args: ExtenderBindingArgs = match serde_json::from_slice(body) {
            Ok(args) => args,
            Err(e) => return Answer::bad_request(format!("not ExtenderBindingArgs: {e}")),
        };
        let (error, result) = match self.bind(&args).await {
            Ok(()) => (String::new(), "ok"),
            Err(e) => {
                tracing::warn!(namespace = %args.pod_namespace, pod = %args.pod_name, node = %args.node, error = %e, "not bound");
                (e.to_string(), "error")
            }
        };
        Answer::ok(&ExtenderBindingResult { error }, result)
    }

    async fn bind(&self, args: &ExtenderBindingArgs) -> Result<(), BindError> {
        let (ns, name, node) = (&args.pod_namespace, &args.pod_name, &args.node);
        let shown = format!("{ns}/{name}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let records: Api<StaticIP> = Api::namespaced(self.client.clone(), ns);
        let kube = |context: String| {
            move |source| BindError::Kube(ests_runtime::KubeError::new(context, source))
        };
        let mut settled = false;
        for _ in 0..ATTEMPTS {
            let pod = pods
                .get_opt(name)
                .await
                .map_err(kube(format!("reading pod {shown}")))?
                .ok_or_else(|| BindError::PodGone(shown.clone()))?;
            let uid = pod.uid().unwrap_or_default();
            if !args.pod_uid.is_empty() && uid != args.pod_uid {
                return Err(BindError::Recreated {
                    name: shown,
                    found: uid,
                    wanted: args.pod_uid.clone(),
                });
            }
            let record = if ests_core::static_ip::PodFacts::of(&pod)
                .stamped_record
                .is_some()
            {
                records
                    .get_opt(name)
                    .await
                    .map_err(kube(format!("reading StaticIP {shown}")))?
            } else {
                None
            };
            match bind_step(&pod, record.as_ref(), node) {
                BindStep::Bind => {
                    settled = true;
                    break;
                }
                BindStep::Refuse(why) => return Err(BindError::Refused(why)),
                BindStep::Allocate => {
                    let Some(record) = record else { continue };
                    match self.ipam.assign_to_record(&record, node).await {
                        Ok(Assignment::Written(written)) => {
                            tracing::info!(namespace = %ns, pod = %name, %node, ips = ?written.spec.ips, "allocated at bind");
                        }
                        Ok(Assignment::Changed(_)) => {}
                        Err(source) => {
                            return Err(BindError::Allocation {
                                pod: shown,
                                node: node.clone(),
                                source,
                            });
                        }
                    }
                    // Plan again from the record as it is now.
                }
                BindStep::Annotate(ips) => {
                    let wanted = address_annotations(&ips, Some(node), &self.cni);
                    let missing = wanted
                        .iter()
                        .any(|(k, v)| pod.annotations().get(k) != Some(v));
                    if missing {
                        // The UID makes the patch conditional on this very pod.
                        let patch = json!({"metadata": {"uid": uid, "annotations": wanted}});
                        pods.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map_err(kube(format!("annotating pod {shown} with its addresses")))?;
                    }
                    settled = true;
                    break;
                }
            }
        }
        if !settled {
            return Err(BindError::Contended(shown));
        }
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": args.pod_uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        pods.create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(kube(format!("binding pod {shown} to node {node}")))?;
        tracing::debug!(namespace = %ns, pod = %name, %node, "bound");
        Ok(())
    }
}
