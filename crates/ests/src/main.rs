//! `ests`: one binary whose subcommands run the ests components and tools.
#![forbid(unsafe_code)]

mod manifests;

use clap::{Parser, Subcommand};

/// Enhanced StatefulSet for Kubernetes: parallel and batched rollouts, static pod IPs and
/// node migration.
#[derive(Parser)]
#[command(name = "ests", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions generated from the API types, or write them and
    /// the ValidatingAdmissionPolicies to a config directory.
    Crd(manifests::CrdArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => manifests::run(&args),
    }
}
