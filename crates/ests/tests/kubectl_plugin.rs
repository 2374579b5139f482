//! `kubectl ests` against a live set on the real control plane, with the controller running:
//! rollout status (done, partitioned, and timing out while paused), history with change
//! causes, undo to the previous and to a named revision, pause and resume, restart, and
//! scale-in of a chosen pod. The plugin runs through its library entry point, exactly as its
//! binary does, with a kubeconfig and a named context.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

/// Runs `kubectl ests <args>`; the result and what it printed.
async fn plugin(args: &[&str]) -> (anyhow::Result<()>, String) {
    let cli = match kubectl_ests::Cli::try_parse_from(
        std::iter::once("kubectl-ests").chain(args.iter().copied()),
    ) {
        Ok(cli) => cli,
        Err(e) => return (Err(anyhow::anyhow!("{e}")), String::new()),
    };
    let mut out = Vec::new();
    let result = kubectl_ests::cli::run_with(cli, &mut out, false).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    eprintln!("$ kubectl ests {}\n{text}", args.join(" "));
    (result, text)
}

struct Plugin {
    base: Vec<String>,
}

impl Plugin {
    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<&str> = self.base.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let (result, out) = plugin(&all).await;
        result.map_err(|e| e.context(format!("kubectl ests {}", args.join(" "))))?;
        Ok(out)
    }

    async fn fails(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = self.base.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        match plugin(&all).await {
            (Ok(()), out) => panic!("kubectl ests {} succeeded: {out}", args.join(" ")),
            (Err(e), _) => format!("{e:#}"),
        }
    }
}

/// Live pods of the set: name -> (image, uid).
async fn pods(env: &Env, ns: &str) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let image = p.spec.as_ref()?.containers.first()?.image.clone()?;
            Some((p.metadata.name?, (image, p.metadata.uid?)))
        })
        .collect())
}

async fn images(env: &Env, ns: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(pods(env, ns)
        .await?
        .into_iter()
        .map(|(n, (i, _))| (n, i))
        .collect())
}

fn expect(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, i)| (n.to_string(), i.to_string()))
        .collect()
}

fn image(tag: &str) -> serde_json::Value {
    json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": tag}]}}}})
}

#[tokio::test]
async fn rollout_commands_and_scale_in_drive_a_live_set() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "plugin-rollout";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let kubeconfig = env.plane.kubeconfig.display().to_string();
    let kubectl = Plugin {
        base: ["--kubeconfig", &kubeconfig, "--context", "ests", "-n", ns]
            .map(String::from)
            .to_vec(),
    };
    apply(&env, ns, &simple_set("web", 4, "Parallel", 2)).await?;
    let out = kubectl
        .ok(&["rollout", "status", "web", "--timeout", "120s"])
        .await?;
    assert!(out.contains("roll out complete: 4 pods"), "{out}");
    assert_eq!(images(&env, ns).await?.len(), 4);

    // A partitioned update: status is done when the pods at or above the partition are.
    let mut update = image("app:v2");
    update["spec"]["updateStrategy"] = json!({"rollingUpdate": {"partition": 2}});
    patch(&sets, "web", update).await?;
    let out = kubectl
        .ok(&["rollout", "status", "web", "--timeout", "120s"])
        .await?;
    assert!(
        out.contains("partitioned roll out complete: 2 new pods"),
        "{out}"
    );
    assert_eq!(
        images(&env, ns).await?,
        expect(&[
            ("web-0", "app:v1"),
            ("web-1", "app:v1"),
            ("web-2", "app:v2"),
            ("web-3", "app:v2")
        ])
    );
    let history = kubectl.ok(&["rollout", "history", "web"]).await?;
    let revisions: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions.len(), 2, "{history}");
    assert!(
        revisions[0].contains("current") && revisions[1].contains("update"),
        "{history}"
    );

    // Paused: a new template starts no update, so status times out (non-zero).
    let out = kubectl.ok(&["rollout", "pause", "web"]).await?;
    assert!(out.contains("paused"), "{out}");
    assert!(
        sets.get("web")
            .await?
            .spec
            .rolling_update()
            .is_some_and(|r| r.paused)
    );
    let mut update = image("app:v3");
    update["spec"]["updateStrategy"] = json!({"rollingUpdate": {"partition": 0}});
    patch(&sets, "web", update).await?;
    let err = kubectl
        .fails(&["rollout", "status", "web", "--timeout", "5s"])
        .await;
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains("(paused)"), "{err}");
    assert!(
        images(&env, ns).await?.iter().all(|(_, i)| i != "app:v3"),
        "no pod updated while paused"
    );
    let err = kubectl.fails(&["rollout", "pause", "web"]).await;
    assert!(err.contains("already paused"), "{err}");
    kubectl.ok(&["rollout", "resume", "web"]).await?;
    kubectl
        .ok(&["rollout", "status", "web", "--timeout", "120s"])
        .await?;
    assert!(images(&env, ns).await?.iter().all(|(_, i)| i == "app:v3"));

    // Undo goes to the previous template, then to a named revision.
    let out = kubectl.ok(&["rollout", "undo", "web"]).await?;
    assert!(out.contains("rolled back to revision 2"), "{out}");
    kubectl
        .ok(&["rollout", "status", "web", "--timeout", "120s"])
        .await?;
    assert!(images(&env, ns).await?.iter().all(|(_, i)| i == "app:v2"));
    let history = kubectl.ok(&["rollout", "history", "web"]).await?;
    let newest = history.lines().last().unwrap_or_default();
    assert!(
        newest.contains("update") && newest.contains("kubectl ests rollout undo --to-revision 2"),
        "{history}"
    );
    let one = kubectl
        .ok(&["rollout", "history", "web", "--revision", "1"])
        .await?;
    assert!(one.contains("app:v1"), "{one}");
    kubectl
        .ok(&["rollout", "undo", "web", "--to-revision", "1"])
        .await?;
    kubectl
        .ok(&["rollout", "status", "web", "--timeout", "120s"])
        .await?;
    assert!(images(&env, ns).await?.iter().all(|(_, i)| i == "app:v1"));
    let err = kubectl
        .fails(&["rollout", "undo", "web", "--to-revision", "99"])
        .await;
    assert!(
        err.contains("unable to find the specified revision 99"),
        "{err}"
    );

    // Restart replaces every pod.
    let before = pods(&env, ns).await?;
    let out = kubectl.ok(&["rollout", "restart", "web"]).await?;
    assert!(out.contains("restarted"), "{out}");
    let set = sets.get("web").await?;
    assert!(
        set.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .is_some_and(|a| a.contains_key(kubectl_ests::rollout::RESTARTED_AT))
    );
    kubectl
        .ok(&["rollout", "status", "web", "--timeout", "120s"])
        .await?;
    let after = pods(&env, ns).await?;
    assert_eq!(after.len(), 4);
    for (name, (_, uid)) in &after {
        assert_ne!(
            Some(uid),
            before.get(name).map(|(_, u)| u),
            "{name} was re-created"
        );
    }
    let history = kubectl.ok(&["rollout", "history", "web"]).await?;
    assert!(
        history
            .lines()
            .last()
            .unwrap_or_default()
            .contains("kubectl ests rollout restart"),
        "{history}"
    );

    // Scale in a chosen pod.
    let out = kubectl.ok(&["scale-in", "web", "web-1"]).await?;
    assert!(out.contains("removed ordinals [1]"), "{out}");
    wait_for("web-1 gone and the others kept", T, || async {
        let names: Vec<String> = pods(&env, ns).await?.into_keys().collect();
        Ok((names == names_of(&[0, 2, 3])).then_some(()))
    })
    .await?;
    let set = sets.get("web").await?;
    assert_eq!(set.spec.replicas, 3);
    assert_eq!(
        serde_json::to_value(&set.spec.reserve_ordinals)?,
        json!([1])
    );
    let err = kubectl.fails(&["scale-in", "web", "web-1"]).await;
    assert!(err.contains("is not one of the set's identities"), "{err}");
    wait_status(&sets, "web", "3 ready", T, |s| s.ready_replicas == 3).await?;

    // Karmada ranges sized from the live set: 3 replicas plus 1 reserved ordinal each.
    let policy = kubectl
        .ok(&[
            "karmada-ranges",
            "web",
            "--cluster",
            "m1",
            "--cluster",
            "m2",
            "-o",
            "json",
        ])
        .await?;
    let policy: serde_json::Value = serde_json::from_str(&policy)?;
    assert_eq!(
        kubectl_ests::ranges::starts_of(&policy),
        vec![("m1".to_string(), 0), ("m2".to_string(), 4)]
    );
    assert_eq!(policy["metadata"]["namespace"], ns);
    checker.finish()
}

fn names_of(ordinals: &[i32]) -> Vec<String> {
    names("web", ordinals.iter().copied())
}
