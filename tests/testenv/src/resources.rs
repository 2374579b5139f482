//! Applying manifests: YAML documents, the ests CRDs and admission policies, namespaces.

use std::time::Duration;

use anyhow::{Context, bail};
use ests_api::{crd, policy};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::runtime::wait::conditions;
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::wait::wait_until;

/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "ests-testenv";

/// Parses a multi-document YAML string into JSON values, skipping empty documents.
pub fn parse_documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// An Api for the kind of `object`, namespaced to `namespace` (or the object's own) when
/// the kind is namespaced.
pub async fn api_for(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
) -> anyhow::Result<Api<DynamicObject>> {
    let api_version = object["apiVersion"]
        .as_str()
        .context("object has no apiVersion")?;
    let kind = object["kind"].as_str().context("object has no kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    Ok(match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .or(namespace)
                .unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    })
}

/// Creates `object` (namespaced objects without a namespace in `namespace`), for real or as
/// a server-side dry run; returns the API server's refusal message, or None if it was
/// accepted.
pub async fn create_refusal(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Option<String>> {
    let api = api_for(client, object, namespace).await?;
    let object: DynamicObject = serde_json::from_value(object.clone())?;
    let params = PostParams {
        dry_run,
        field_manager: None,
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) => Ok(Some(status.message.clone())),
        Err(e) => Err(e.into()),
    }
}

/// Server-side applies every document of `yaml`; namespaced objects without a namespace go
/// to `namespace`. With `dry_run` nothing is persisted.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for doc in parse_documents(yaml)? {
        applied.push(apply_value(client, &doc, namespace, dry_run).await?);
    }
    Ok(applied)
}

/// Server-side applies one object.
pub async fn apply_value(
    client: &Client,
    object: &Value,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<DynamicObject> {
    let api = api_for(client, object, namespace).await?;
    let name = object["metadata"]["name"]
        .as_str()
        .context("object has no metadata.name")?;
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    Ok(api.patch(name, &params, &Patch::Apply(object)).await?)
}

/// Installs the ests CRDs with server-side apply and waits until they are Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crd::all() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
    }
    for crd in crd::all() {
        let name = crd.name_any();
        wait_until(
            api.clone(),
            &name,
            Duration::from_secs(60),
            conditions::is_crd_established(),
        )
        .await
        .with_context(|| format!("CRD {name} not established"))?;
    }
    Ok(())
}

/// Installs the ests ValidatingAdmissionPolicies and their bindings.
pub async fn install_policies(client: &Client, ests_namespace: &str) -> anyhow::Result<()> {
    let (policies, bindings) = policy::all(ests_namespace);
    for policy in policies {
        apply_value(client, &serde_json::to_value(&policy)?, None, false).await?;
    }
    for binding in bindings {
        apply_value(client, &serde_json::to_value(&binding)?, None, false).await?;
    }
    Ok(())
}

/// Creates a namespace (it may exist already).
pub async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Binds ClusterRole `role` to `user` with a ClusterRoleBinding named `name`.
pub async fn bind_cluster_role(
    client: &Client,
    name: &str,
    role: &str,
    user: &str,
) -> anyhow::Result<()> {
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    });
    apply_value(client, &binding, None, false).await?;
    Ok(())
}

/// The message of an API error, or a description of what was not an API error.
pub fn api_error_message<T: std::fmt::Debug>(
    result: Result<T, kube::Error>,
) -> anyhow::Result<String> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status.message.clone()),
        Err(other) => bail!("expected an API error, got {other}"),
        Ok(value) => bail!("expected the API server to refuse, but it accepted: {value:?}"),
    }
}
