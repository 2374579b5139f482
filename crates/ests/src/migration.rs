//! Node migration: the manager's flags (run inside `ests controller`) and
//! `ests migrate-node`, which creates a NodeMigration and can follow it to the end.

use std::time::Duration;

use anyhow::Context;
use ests_migration::Settings;
use ests_migration::auto::AutoSettings;
use ests_migration::hooks::Hook;
use kube::Client;
use kubectl_ests::migrate_node::MigrateRequest;

#[derive(clap::Args, Debug, Clone)]
pub struct MigrationArgs {
    /// Run the node-migration manager in this process (under the same lease).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ESTS_NODE_MIGRATION")]
    pub node_migration: bool,

    /// Hook that fences a NotReady node (powers it off, cuts it off). A command, run as
    /// `COMMAND fence SOURCE TARGET` with ESTS_SOURCE_NODE, ESTS_TARGET_NODE, ESTS_MIGRATION
    /// and ESTS_CIDRS set, exit status 0 meaning fenced; or an https:// URL, sent a POST of
    /// {"verb","migration","sourceNode","targetNode","cidrs"}, 2xx meaning fenced (see
    /// --hook-bearer-token-file, --hook-ca-file). Given up after 60 s, asked again 5 s after a
    /// no. Without it, only an operator's spec.confirmFenced fences.
    #[arg(long, env = "ESTS_FENCE_COMMAND", value_parser = Hook::parse)]
    pub fence_command: Option<Hook>,

    /// Hook that moves the source's IP blocks' routes to the target: a command run as
    /// `COMMAND network SOURCE TARGET` (ESTS_CIDRS lists the CIDRs), exit 0 meaning moved, or
    /// an https:// URL as for --fence-command (verb "network"). It must succeed before any
    /// address moves. Default: nothing to move.
    #[arg(long, env = "ESTS_NETWORK_COMMAND", value_parser = Hook::parse)]
    pub network_command: Option<Hook>,

    /// Hook that names (and may create) a replacement node when the migration names none and
    /// no node is labelled jke.jdcloud.com/replacement-for=SOURCE: a command run as
    /// `COMMAND provision SOURCE`, or an https:// URL as for --fence-command (verb
    /// "provision"); its output (the answer's body) is the node's name. Default: none.
    #[arg(long, env = "ESTS_PROVISION_COMMAND", value_parser = Hook::parse)]
    pub provision_command: Option<Hook>,

    /// File holding the bearer token the URL hooks send (a mounted Secret; read at every
    /// call, so a rotated token is used at once).
    #[arg(long, env = "ESTS_HOOK_BEARER_TOKEN_FILE", value_name = "PATH")]
    pub hook_bearer_token_file: Option<std::path::PathBuf>,

    /// PEM CA bundle the URL hooks' servers must chain to (then the public web roots are not
    /// trusted). Default: the public web roots.
    #[arg(long, env = "ESTS_HOOK_CA_FILE", value_name = "PATH")]
    pub hook_ca_file: Option<std::path::PathBuf>,

    /// Automatic mode: migrate a node that has been NotReady for this many seconds (the
    /// migration still waits for fencing). Off by default.
    #[arg(long, env = "ESTS_AUTO_MIGRATE_AFTER_SECONDS")]
    pub auto_migrate_after_seconds: Option<u64>,

    /// Unfinished migrations allowed at once before automatic mode starts another.
    #[arg(long, default_value_t = 1, env = "ESTS_MAX_MIGRATIONS")]
    pub max_migrations: usize,
}

impl MigrationArgs {
    pub fn settings(&self) -> Settings {
        let hook = |h: &Option<Hook>| {
            h.clone().map(|h| {
                h.with_http_auth(
                    self.hook_bearer_token_file.clone(),
                    self.hook_ca_file.clone(),
                )
            })
        };
        Settings {
            fence: hook(&self.fence_command),
            network: hook(&self.network_command),
            provision: hook(&self.provision_command),
            auto: self.auto_migrate_after_seconds.map(|s| AutoSettings {
                after: Duration::from_secs(s),
                max_active: self.max_migrations.max(1),
            }),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct MigrateNodeArgs {
    /// The node to move away from.
    pub source: String,

    /// The node to move to. Default: a node labelled jke.jdcloud.com/replacement-for=SOURCE.
    #[arg(long = "to")]
    pub target: Option<String>,

    /// Confirm that SOURCE is powered off or cut off, so its pods may be released without
    /// the fencing hook. Never for a node that may still run its pods.
    #[arg(long)]
    pub confirm_fenced: bool,

    /// Why (shown in events).
    #[arg(long)]
    pub reason: Option<String>,

    /// Follow the migration and print its progress until it completes.
    #[arg(long)]
    pub wait: bool,

    /// Give up waiting after this many seconds (exit status 1).
    #[arg(long, default_value_t = 1800)]
    pub timeout_seconds: u64,
}

/// `ests migrate-node`: the same function as `kubectl ests migrate-node`.
pub async fn migrate_node(args: MigrateNodeArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let request = MigrateRequest {
        source: args.source,
        target: args.target,
        confirm_fenced: args.confirm_fenced,
        reason: args.reason,
        wait: args.wait,
        timeout: Duration::from_secs(args.timeout_seconds),
    };
    kubectl_ests::migrate_node::run(client, &request, &mut std::io::stdout()).await
}
