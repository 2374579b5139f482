//! Clients for kubeconfig contexts.

use std::path::PathBuf;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where to find a cluster: a kubeconfig (else `$KUBECONFIG` or `~/.kube/config`) and a
/// context in it (else its current context), or in-cluster configuration when there is no
/// kubeconfig at all.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// A client and the namespace to work in.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    /// The context's name, for messages.
    pub name: String,
}

/// Connects to `target`.
pub async fn connect(target: &Target) -> anyhow::Result<Cluster> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match &target.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| {
                    format!("loading context {:?} of {}", target.context, path.display())
                })?
        }
        None => match Kubeconfig::read() {
            Ok(kubeconfig) => Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("loading kubeconfig context {:?}", target.context))?,
            Err(read) if target.context.is_none() => Config::incluster().map_err(|e| {
                anyhow::anyhow!("no kubeconfig ({read}) and not in a cluster ({e})")
            })?,
            Err(read) => return Err(read).context("reading the kubeconfig"),
        },
    };
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let name = target
        .context
        .clone()
        .unwrap_or_else(|| "current context".into());
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Cluster {
        client,
        namespace,
        name,
    })
}
