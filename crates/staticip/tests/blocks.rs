//! Two allocators racing on one IPBlock of the real API server never hand out an address
//! twice: every write carries the resourceVersion it read, and the loser retries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ests_api::IPBlock;
use ests_core::allocator::{AllocError, Holder, allocate_in, release_in};
use ests_staticip::blocks::ApiBlockStore;
use ests_testenv::resources::{apply_value, install_crds};
use ests_testenv::{InvariantChecker, LogsOnFailure, shared};
use kube::api::Api;
use serde_json::json;

fn holder(allocator: usize, n: usize) -> Holder {
    Holder {
        namespace: "race".into(),
        name: format!("a{allocator}-{n}"),
        uid: format!("uid-a{allocator}-{n}"),
    }
}

#[tokio::test]
async fn two_allocators_racing_on_one_block_never_duplicate() -> anyhow::Result<()> {
    let plane = shared().await?;
    let _logs = LogsOnFailure(plane);
    let client = plane.client().await?;
    install_crds(&client).await?;
    let checker = InvariantChecker::start(client.clone()).await?;
    let block = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "IPBlock",
        "metadata": {"name": "race-10-50-0-0-26"},
        "spec": {"pool": "race", "cidr": "10.50.0.0/26", "node": "node-a"}
    });
    apply_value(&client, &block, None, false).await?;

    // Two allocators with their own connections, as two processes would have; together
    // they ask for more addresses (2 x 40) than the block has (62).
    let mut tasks = Vec::new();
    for allocator in 0..2 {
        let store = ApiBlockStore::new(plane.client().await?, vec![]);
        tasks.push(tokio::spawn(async move {
            let mut got: Vec<(Holder, IpAddr)> = Vec::new();
            let mut full = 0;
            for n in 0..40 {
                let h = holder(allocator, n);
                match allocate_in(&store, "race-10-50-0-0-26", &h).await {
                    Ok(ip) => got.push((h, ip)),
                    Err(AllocError::BlockFull(_)) => full += 1,
                    Err(e) => return Err(anyhow::anyhow!("allocator {allocator}: {e}")),
                }
            }
            anyhow::Ok((got, full))
        }));
    }
    let mut handed_out: Vec<(Holder, IpAddr)> = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (got, full) = task.await??;
        handed_out.extend(got);
        refused += full;
    }
    let distinct: BTreeSet<IpAddr> = handed_out.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(handed_out.len(), 62, "every usable address handed out once");
    assert_eq!(distinct.len(), 62, "no address handed out twice");
    assert_eq!(refused, 18);
    assert!(
        !distinct.contains(&"10.50.0.0".parse::<IpAddr>()?)
            && !distinct.contains(&"10.50.0.63".parse::<IpAddr>()?)
    );

    // The block object is the truth: it says exactly what was handed out.
    let api: Api<IPBlock> = Api::all(client.clone());
    let stored = api.get("race-10-50-0-0-26").await?;
    assert_eq!(stored.spec.allocations.len(), 62);
    for (h, ip) in &handed_out {
        let a = &stored.spec.allocations[&ip.to_string()];
        assert_eq!((&a.name, &a.uid), (&h.name, &h.uid));
    }

    // Releases race too; afterwards the block is empty.
    let store = ApiBlockStore::new(client.clone(), vec![]);
    let (first, second) = handed_out.split_at(31);
    let other = ApiBlockStore::new(plane.client().await?, vec![]);
    let (a, b) = futures::join!(
        async {
            for (h, ip) in first {
                release_in(&store, "race-10-50-0-0-26", *ip, h).await?;
            }
            anyhow::Ok(())
        },
        async {
            for (h, ip) in second {
                release_in(&other, "race-10-50-0-0-26", *ip, h).await?;
            }
            anyhow::Ok(())
        }
    );
    a?;
    b?;
    assert!(
        api.get("race-10-50-0-0-26")
            .await?
            .spec
            .allocations
            .is_empty()
    );
    checker.finish()
}
