//! `kubectl-ests`: installed on PATH it is run by `kubectl ests ...`.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Exactly one rustls crypto provider for the kube clients of the process.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return std::process::ExitCode::FAILURE;
    }
    let cli = kubectl_ests::Cli::parse();
    match kubectl_ests::run(cli, &mut std::io::stdout()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
