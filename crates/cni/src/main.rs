//! The `ests-cni` binary: a CNI plugin takes no flags (its input is `CNI_*` and stdin), so
//! anything on the command line (`--help`, `version`) prints what it is on stderr, leaving
//! stdout to the protocol.

use std::process::ExitCode;

use rscni_plugin::cni::Plugin;

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 && std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!("{}", ests_cni::ABOUT);
        eprintln!(
            "CNI protocol versions supported: {}",
            ests_cni::SUPPORTED_VERSIONS.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    // Without CNI_COMMAND the skeleton prints ABOUT on stderr and succeeds; with one it
    // writes the result or the error JSON on stdout itself.
    match Plugin::default()
        .msg(ests_cni::ABOUT)
        .run(&ests_cni::EstsCni)
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ests-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
