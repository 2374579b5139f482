//! The IP-mode annotation rules as a real kube-apiserver applies them: every case of
//! `crates/api/testdata/ip-mode-annotations.yaml` is sent (a dry-run create, or a dry-run
//! update of a set created with the case's old annotations) to an API server with the ests
//! CRDs and ValidatingAdmissionPolicies and no webhook, so only the policy's CEL judges the
//! annotations. The API server must admit exactly what the case says, and so must the Rust
//! checks (the webhook's `set_admission`, the controller's `static_ip::settings`); a refusal
//! names the rule the Rust checks name first.

mod support;

use std::collections::BTreeMap;

use ests_api::EnhancedStatefulSet;
use ests_core::static_ip::settings;
use ests_core::validate::set_admission;
use ests_testenv::LogsOnFailure;
use ests_testenv::resources::create_refusal;
use kube::api::PostParams;
use serde_json::json;
use support::*;

/// The case's set: a valid one but for its annotations.
fn set_with(name: &str, annotations: &BTreeMap<String, String>) -> serde_json::Value {
    let mut set = simple_set(name, 1, "Parallel", 1);
    set["metadata"]["annotations"] = json!(annotations);
    set
}

#[tokio::test]
async fn the_policy_admits_exactly_what_the_rust_checks_admit() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "ip-mode-policy";
    let sets = namespace(&env, ns).await?;
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let mut wrong = Vec::new();
    for (i, case) in ests_api::policy::ip_mode::cases()
        .map_err(anyhow::Error::msg)?
        .iter()
        .enumerate()
    {
        let name = format!("case-{i}");
        let new = set_with(&name, &case.annotations);
        let (refusal, old) = match &case.old {
            None => (
                create_refusal(&env.client, &new, Some(ns), true).await?,
                None,
            ),
            Some(old) => {
                let created = sets
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(set_with(&name, old))?,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: creating the old set: {e}", case.name))?;
                let mut updated = created.clone();
                updated.metadata.annotations = Some(case.annotations.clone());
                let refusal = match sets.replace(&name, &dry_run, &updated).await {
                    Ok(_) => None,
                    Err(kube::Error::Api(status)) => Some(status.message),
                    Err(e) => return Err(e.into()),
                };
                (refusal, Some(created))
            }
        };
        let typed: EnhancedStatefulSet = serde_json::from_value(new)?;
        let problems = set_admission(&typed, old.as_ref());
        let controller = settings(&typed);
        let rust_allows = problems.is_empty() && controller.is_ok();
        let api_allows = refusal.is_none();
        if api_allows != case.allowed || rust_allows != case.allowed {
            wrong.push(format!(
                "{}: want allowed={}, the API server says {refusal:?}, the webhook {problems:?}, the controller {controller:?}",
                case.name, case.allowed
            ));
        } else if let (Some(refusal), Some(first)) = (&refusal, problems.first())
            && !refusal.contains(first.as_str())
        {
            wrong.push(format!(
                "{}: the API server refuses with {refusal:?}, the webhook first with {first:?}",
                case.name
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    Ok(())
}
