//! Waiting on conditions with deadlines, never on sleeps.

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::bail;
use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Polls `probe` until it returns `Ok(Some(value))`, for at most `timeout`. `Ok(None)` and
/// errors mean "not yet"; the last one is reported when the deadline passes.
pub async fn wait_for<T, F, Fut>(
    what: impl Display,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches one object until `condition` holds, for at most `timeout`.
pub async fn wait_until<K>(
    api: Api<K>,
    name: &str,
    timeout: Duration,
    condition: impl Condition<K>,
) -> anyhow::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api, name, condition)).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("timed out after {timeout:?} waiting for a condition on {name}"),
    }
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until pod `name` is Ready and not being deleted, and returns its IP.
pub async fn ready_pod_ip(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    wait_for(format!("{name} Ready"), timeout, || async {
        let Some(pod) = pods.get_opt(name).await? else {
            return Ok(None);
        };
        let usable = pod_ready(&pod) && pod.metadata.deletion_timestamp.is_none();
        Ok(pod.status.and_then(|s| s.pod_ip).filter(|_| usable))
    })
    .await
}
