//! Helm (v3, built by `tests/harness/build-bins.sh` next to the control plane) for chart
//! tests: lint, template, install and uninstall, each bounded by a deadline; and
//! kubeconfigs that authenticate as a ServiceAccount with a TokenRequest token, so a process
//! gets exactly the RBAC a chart granted that account.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::bins;

/// The `helm` binary, with its cache, config and data directories kept out of `$HOME`.
#[derive(Debug, Clone)]
pub struct Helm {
    bin: PathBuf,
    home: PathBuf,
}

/// Values for one helm invocation: `-f` files and `--set` pairs.
#[derive(Debug, Clone, Default)]
pub struct Values {
    pub files: Vec<PathBuf>,
    pub set: Vec<(String, String)>,
}

impl Values {
    /// No values beyond the chart's defaults.
    pub fn none() -> Self {
        Self::default()
    }

    /// One values file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            files: vec![path.into()],
            set: Vec::new(),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for file in &self.files {
            args.push("-f".into());
            args.push(file.display().to_string());
        }
        for (key, value) in &self.set {
            args.push("--set".into());
            args.push(format!("{key}={value}"));
        }
        args
    }
}

impl Helm {
    /// Helm from the harness's binary directory (`$ESTS_BIN_DIR` or the built cache).
    pub fn locate() -> anyhow::Result<Self> {
        let bin = bins::locate()?.join("helm");
        if !bin.is_file() {
            bail!(
                "{} is missing; run tests/harness/build-bins.sh",
                bin.display()
            );
        }
        // One directory for every run: these commands keep nothing there (no repositories, no
        // plugins), so nothing accumulates.
        let home = std::env::temp_dir().join("ests-helm-home");
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        Ok(Self { bin, home })
    }

    /// Runs helm with `args`, killing it after `timeout`; returns its standard output, or an
    /// error carrying its standard error.
    pub async fn run(&self, args: &[String], timeout: Duration) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(args)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .kill_on_drop(true);
        let shown = format!("helm {}", args.join(" "));
        let output = tokio::time::timeout(timeout, command.output())
            .await
            .with_context(|| format!("{shown}: no answer within {timeout:?}"))?
            .with_context(|| format!("running {shown}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "{shown} failed with {}:\n{}\n{stdout}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    /// `helm lint --strict` of `chart` with `values`; returns the report.
    pub async fn lint(&self, chart: &Path, values: &Values) -> anyhow::Result<String> {
        let mut args = vec![
            "lint".into(),
            "--strict".into(),
            chart.display().to_string(),
        ];
        args.extend(values.args());
        self.run(&args, Duration::from_secs(60)).await
    }

    /// `helm template` of `chart` as release `release` in `namespace`; returns the manifests.
    pub async fn template(
        &self,
        chart: &Path,
        release: &str,
        namespace: &str,
        values: &Values,
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "template".into(),
            release.into(),
            chart.display().to_string(),
            "--namespace".into(),
            namespace.into(),
        ];
        args.extend(values.args());
        self.run(&args, Duration::from_secs(60)).await
    }

    /// `helm install --wait` (creating the namespace) into the cluster of `kubeconfig`.
    pub async fn install(
        &self,
        kubeconfig: &Path,
        chart: &Path,
        release: &str,
        namespace: &str,
        values: &Values,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "install".into(),
            release.into(),
            chart.display().to_string(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--create-namespace".into(),
            "--wait".into(),
            "--timeout".into(),
            format!("{}s", timeout.as_secs()),
        ];
        args.extend(values.args());
        self.run(&args, timeout + Duration::from_secs(30)).await
    }

    /// `helm upgrade --reuse-values --wait` of an installed release.
    pub async fn upgrade(
        &self,
        kubeconfig: &Path,
        chart: &Path,
        release: &str,
        namespace: &str,
        values: &Values,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "upgrade".into(),
            release.into(),
            chart.display().to_string(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--reuse-values".into(),
            "--wait".into(),
            "--timeout".into(),
            format!("{}s", timeout.as_secs()),
        ];
        args.extend(values.args());
        self.run(&args, timeout + Duration::from_secs(30)).await
    }

    /// `helm uninstall --wait`.
    pub async fn uninstall(
        &self,
        kubeconfig: &Path,
        release: &str,
        namespace: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let args = vec![
            "uninstall".into(),
            release.into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--wait".into(),
            "--timeout".into(),
            format!("{}s", timeout.as_secs()),
        ];
        self.run(&args, timeout + Duration::from_secs(30)).await
    }
}

/// Writes a kubeconfig at `path` that authenticates as ServiceAccount `namespace/name` with
/// a token from the TokenRequest API (valid for an hour), asked for by `admin`.
pub async fn service_account_kubeconfig(
    admin: &Client,
    server: &str,
    ca: &Path,
    namespace: &str,
    name: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let account = accounts
        .get(name)
        .await
        .with_context(|| format!("reading ServiceAccount {namespace}/{name}"))?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(&account.name_any(), &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for {namespace}/{name}"))?
        .status
        .and_then(|s| s.token)
        .with_context(|| format!("the token request for {namespace}/{name} has no status"))?;
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ests\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: {name}\n  user:\n    token: {token}\n\
         contexts:\n- name: ests\n  context:\n    cluster: ests\n    user: {name}\n    namespace: {namespace}\ncurrent-context: ests\n",
        ca.display(),
    );
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
}
