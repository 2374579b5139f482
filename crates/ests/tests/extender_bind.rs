//! IP range mode with the extender binding: a first-time pod gets its address from the
//! chosen node's blocks at bind — before it runs, so it never starts with another address —
//! and keeps it when re-created; a node takes no more range-mode pods than its blocks and
//! the pool allow.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ests_api::{IPBlock, keys};
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

/// Starts `ests extender --bind` and restarts kube-scheduler with it, once per binary (two
/// tests restarting the scheduler at once would both bind its port); returns its port.
async fn binding_extender(env: &Env) -> anyhow::Result<u16> {
    static PORT: tokio::sync::OnceCell<u16> = tokio::sync::OnceCell::const_new();
    PORT.get_or_try_init(|| start_extender(env.plane, true))
        .await
        .copied()
}

#[tokio::test]
async fn range_mode_pods_get_their_address_at_bind_and_keep_it() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    start_controller(
        env.plane,
        "ests-controller",
        &["--leader-election=false", "--extender-binds"],
    )
    .await?;
    binding_extender(&env).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "ext-bind";
    let nodes: Vec<NodeSpec> = ["bind-a", "bind-b", "bind-c"]
        .into_iter()
        .map(|name| {
            let mut node = NodeSpec::new(name).owned_by(ns);
            node.labels.insert("ests.test/owner".into(), ns.into());
            node
        })
        .collect();
    create_nodes(&env.client, &nodes).await?;
    let sets = namespace(&env, ns).await?;
    // Two blocks of 6 usable addresses: 12 addresses for 14 pods.
    apply(
        &env,
        ns,
        &json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
            "metadata": {"name": "bind-pool"},
            "spec": {"cidrs": ["10.41.0.0/28"], "ipv4BlockPrefixLength": 29}
        }),
    )
    .await?;
    let mut set = simple_set("ranged", 14, "Parallel", 14);
    set["metadata"]["annotations"] = json!({
        keys::STATIC_IP_ENABLE: "true",
        keys::STATIC_IP_POOL: "bind-pool",
        keys::STATIC_IP_RELEASE_POLICY: "Never",
    });
    set["spec"]["template"]["spec"]["tolerations"] = json!([
        {"key": "ests.test/owner", "operator": "Equal", "value": ns, "effect": "NoSchedule"}
    ]);
    set["spec"]["template"]["spec"]["nodeSelector"] = json!({"ests.test/owner": ns});
    apply(&env, ns, &set).await?;

    let first = wait_for("12 pods Running with Bound records", T, || async {
        let (pods, records) = (
            running_pods(&env, ns, "app=ranged").await?,
            bound_records(&env, ns).await?,
        );
        Ok((pods.len() == 12 && records.len() == 12).then_some((pods, records)))
    })
    .await?;
    let (pods, records) = first;
    let pool: IpNet = "10.41.0.0/28".parse()?;
    let mut seen = BTreeSet::new();
    for (name, (uid, node, ip)) in &pods {
        // The first pod of the identity runs with the record's address: allocated at bind,
        // before it started — not learnt afterwards, not re-created for it.
        assert_eq!(
            records.get(name),
            Some(&(uid.clone(), node.clone(), ip.clone())),
            "{name}: record bound to the pod that runs with its address"
        );
        let addr: IpAddr = ip.parse()?;
        assert!(pool.contains(&addr), "{name}: {addr} from the pool");
        assert!(seen.insert(addr), "{addr} handed out twice");
    }
    // Every address is on a block of its pod's node.
    let blocks: Vec<IPBlock> = Api::<IPBlock>::all(env.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.pool == "bind-pool")
        .collect();
    for (name, (_, node, ip)) in &pods {
        let block = blocks
            .iter()
            .find(|b| b.spec.allocations.contains_key(ip))
            .unwrap_or_else(|| panic!("{name}: {ip} on no block"));
        assert_eq!(block.spec.node.as_deref(), Some(node.as_str()), "{name}");
    }
    // The managed resource routed them to the extender's bind.
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let one = api.get(pods.keys().next().expect("a pod")).await?;
    let requests = one.spec.as_ref().and_then(|s| {
        s.containers[0]
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get(keys::STATIC_IP_RESOURCE)
            .cloned()
    });
    assert_eq!(requests.map(|q| q.0), Some("1".to_string()));

    // The two left over wait: no node has an address for them.
    let pending: Vec<String> = api
        .list(&ListParams::default().labels("app=ranged"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pending.len(), 2, "pending: {pending:?}");
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    wait_for("the scheduler says why", T, || async {
        let said = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("no address of StaticIPPool bind-pool"))
            });
        Ok(said.then_some(()))
    })
    .await?;

    // Every running pod is re-created: each comes back on its node with its address.
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=ranged"),
    )
    .await?;
    let again = wait_for("12 pods back", T, || async {
        let now = running_pods(&env, ns, "app=ranged").await?;
        let fresh = now.len() == 12
            && now
                .iter()
                .all(|(n, (uid, _, _))| pods.get(n).is_none_or(|(old, _, _)| old != uid));
        Ok(fresh.then_some(now))
    })
    .await?;
    let homes: BTreeSet<(String, String)> = pods
        .values()
        .map(|(_, node, ip)| (node.clone(), ip.clone()))
        .collect();
    let back: BTreeSet<(String, String)> = again
        .values()
        .map(|(_, node, ip)| (node.clone(), ip.clone()))
        .collect();
    assert_eq!(back, homes, "the same addresses on the same nodes");
    for (name, (_, node, ip)) in &again {
        if let Some((_, old_node, old_ip)) = pods.get(name) {
            assert_eq!((node, ip), (old_node, old_ip), "{name} kept its address");
        }
    }

    // An ordinary pod is still bound by the default binder.
    ordinary_pod_is_bound(
        &api,
        json!({"tolerations": [{"key": "ests.test/owner", "operator": "Equal", "value": ns, "effect": "NoSchedule"}]}),
    )
    .await?;
    sets.delete("ranged", &DeleteParams::default()).await?;
    checker.finish()
}

/// POSTs `body` to the extender on loopback `port` over plain HTTP; returns the response body.
async fn post(port: u16, path: &str, body: &serde_json::Value) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await??;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(response))
}

#[tokio::test]
async fn bind_refuses_a_pod_the_schedulers_bind_entry_does_not_manage() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let port = binding_extender(&env).await?;
    let ns = "ext-bind-refuse";
    namespace(&env, ns).await?;
    create_nodes(&env.client, &[NodeSpec::new("bind-refuse").owned_by(ns)]).await?;
    // Left alone by the scheduler: only a direct call could place it.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "app", "image": "app:v1"}]}
    }))?;
    let uid = pods.create(&PostParams::default(), &pod).await?.uid();
    let answer = post(
        port,
        "/bind",
        &json!({"podName": "plain", "podNamespace": ns, "podUID": uid, "node": "bind-refuse"}),
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    let error = answer["Error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not request jke.jdcloud.com/static-ip"),
        "{answer}"
    );
    let pod = pods.get("plain").await?;
    assert_eq!(pod.spec.and_then(|s| s.node_name), None, "not bound");
    pods.delete("plain", &DeleteParams::default()).await?;
    Ok(())
}
