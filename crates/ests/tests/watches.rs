//! `ests controller` runs the set controller, the StaticIP manager and node migration in one
//! process; they share one watch per kind (`ests_runtime::Reflectors`), where each used to
//! open its own (18 watches, three of them of every pod in the cluster).

mod support;

use std::time::Duration;

use ests_testenv::{ApiProxy, LogsOnFailure, cluster_lock, wait_for};
use support::*;

const T: Duration = Duration::from_secs(60);

/// What the three need: sets, pods, revisions, claims, records, pools, blocks, nodes and
/// migrations.
const KINDS: usize = 9;

#[tokio::test]
async fn ests_controller_opens_one_watch_per_kind() -> anyhow::Result<()> {
    let _exclusive = cluster_lock().await;
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let proxy = ApiProxy::start(env.plane, CONTROLLER_USER, CONTROLLER_GROUPS).await?;
    start_ests_with(
        env.plane,
        "watch-counted",
        "controller",
        &proxy.kubeconfig,
        &["--leader-election=false"],
    )?;
    wait_for("the controller's watches", T, || async {
        let watches = proxy.watches();
        Ok((watches.len() >= KINDS).then_some(()))
    })
    .await?;
    // A second watcher of a kind would start with the first: an observation window for
    // something that must not happen (there is no event to wait for).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let watches = proxy.most_open_watches();
    assert_eq!(watches.len(), KINDS, "kinds watched: {watches:#?}");
    for (path, n) in &watches {
        // A watch the API server ended and the watcher opened again is not a second one.
        assert_eq!(
            *n,
            1,
            "{path} had {n} watches open at once: {watches:#?} (requests: {:#?})",
            proxy.watches()
        );
    }
    Ok(())
}
