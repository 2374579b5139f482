//! `ests-cni`: ests's CNI IPAM plugin.
//!
//! Chained as the `ipam` of a main plugin (bridge, ptp, macvlan, ipvlan), it gives a pod's
//! sandbox its addresses: a static-IP pod its StaticIP record's, a first-time IP-range-mode
//! pod the ones the scheduler extender's bind wrote, any other pod a free address of the
//! node's pod range that no record keeps. It decides nothing itself: each call becomes one
//! request to the node agent (`ests node`) over a unix socket ([`protocol`]), which answers
//! from its watch caches with the pure decision of `ests_core::cni`. The plugin is stateless,
//! so concurrent calls (the runtime runs them in parallel) meet only in the agent.
//!
//! Config (the `ipam` section; see [`config`]):
//!
//! ```json
//! {"type": "ests-cni", "agentSocket": "/run/ests/cni.sock", "timeoutSeconds": 30,
//!  "routes": [{"dst": "0.0.0.0/0"}]}
//! ```
//!
//! The pod comes from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
//!
//! Errors are the CNI spec's (JSON on stdout, nothing else there; logs go to stderr): 4 for
//! a bad environment (no pod named on ADD), 7 for a bad config, 11 "try again later" when the
//! agent is not there (yet) or asks to wait, 50 from STATUS when the agent cannot serve ADDs;
//! the plugin's own codes are [`CODE_REFUSED`], [`CODE_CHECK_FAILED`] and
//! [`CODE_AGENT_ERROR`].
//!
//! # The CNI types: `rscni-plugin`
//!
//! The spec's types and the plugin skeleton (reading `CNI_*` and stdin, version
//! negotiation, VERSION, writing the result or the error JSON) come from `rscni-plugin`
//! 0.5 (with `rscni-types` 0.2). Chosen over the alternatives because:
//!
//! - `cni-plugin` (0.2.1, 2021) is archived and unmaintained, knows only spec 0.4.0/1.0.0
//!   and has no STATUS or GC.
//! - `rscni-plugin` is maintained (renamed from `rscni` in 2026), covers exactly the
//!   versions runtimes send (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0, refusing 0.1/0.2 whose
//!   result layout it does not produce), all six verbs, the 0.3.x/0.4.0 result layout
//!   (`ips[].version`), every error code of the spec as a typed enum, and writes stdout
//!   once and flushes it. It depends only on serde, serde_json and ipnet. The GC field bug
//!   of `rscni` 0.2.1 (`container_id` on the wire instead of the spec's `containerID`) is
//!   fixed in `rscni-types` 0.2.0, which tests the spec's spelling; our tests run real GC
//!   requests from libcni's `cnitool` through it.
//! - Writing the ~300 lines of serde ourselves was the fallback; the crate's types and
//!   negotiation are what we would have written, and tested against more of the spec.
//!
//! What we add: the `ipam` section and `CNI_ARGS` parsing ([`config`]), the agent protocol
//! ([`protocol`]) and its client, and the mapping of the agent's answers to CNI errors.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod conflist;
pub mod protocol;

use rscni_plugin::cni::Cni;
use rscni_plugin::error::Error;
use rscni_plugin::types::{Args, CNIResult, IpConfig};

use crate::client::CallError;
use crate::config::{IpamConfig, ipam_config, pod_args};
use crate::protocol::{
    AttachmentId, Command, Failure, FailureKind, PROTOCOL_VERSION, Request, Response, Success,
};

/// The plugin's `type` in a network config (its binary's name in the CNI bin directory).
pub const PLUGIN_TYPE: &str = "ests-cni";

/// The CNI spec versions ests-cni speaks (those `rscni-plugin` negotiates).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error code: the agent refused the pod its addresses (another node's block, another
/// workload's record); kubelet keeps the pod ContainerCreating with this message in its
/// events.
pub const CODE_REFUSED: u32 = 100;
/// CNI error code: CHECK found the reservation missing or not the record's.
pub const CODE_CHECK_FAILED: u32 = 101;
/// CNI error code: the agent failed otherwise, or answered what this plugin cannot read.
pub const CODE_AGENT_ERROR: u32 = 102;

/// What the binary prints on stderr when run by hand (`--help`, `version`, no
/// `CNI_COMMAND`): stdout stays the protocol's.
pub const ABOUT: &str = concat!(
    "ests-cni ",
    env!("CARGO_PKG_VERSION"),
    ": ests's CNI IPAM plugin. Run by a container runtime (CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION,\n",
    "network config on stdin); asks the ests node agent over the unix socket in ipam.agentSocket\n",
    "(default /run/ests/cni.sock) for the pod named in CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID).\n",
    "ipam keys: agentSocket, timeoutSeconds (1-300, default 30), routes."
);

/// The plugin: every verb is one exchange with the agent.
#[derive(Debug, Default)]
pub struct EstsCni;

fn config_of(args: &Args) -> Result<IpamConfig, Error> {
    ipam_config(args.config()).map_err(|e| Error::InvalidNetworkConfig(e.to_string()))
}

fn attachment_of(args: &Args) -> Result<AttachmentId, Error> {
    // rscni checks both are present and well-formed for ADD, DEL and CHECK before calling.
    let container_id = args
        .container_id()
        .ok_or_else(|| Error::missing_env(&["CNI_CONTAINERID"]))?;
    let ifname = args
        .ifname()
        .ok_or_else(|| Error::missing_env(&["CNI_IFNAME"]))?;
    Ok(AttachmentId {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

fn attach(args: &Args, need_pod: bool) -> Result<protocol::Attach, Error> {
    let pod = pod_args(args.args()).map_err(|e| Error::InvalidEnvValue(e.to_string()))?;
    if need_pod && pod.is_none() {
        return Err(Error::InvalidEnvValue(
            "CNI_ARGS names no pod: ADD needs K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID"
                .into(),
        ));
    }
    Ok(protocol::Attach {
        network: args.config().name.clone(),
        id: attachment_of(args)?,
        netns: args.netns().map(|p| p.to_string_lossy().into_owned()),
        pod,
    })
}

/// Sends `command` to the agent; the agent's failure or the call's becomes the CNI error.
/// `unavailable` makes the error for an agent that is not there.
fn ask(
    config: &IpamConfig,
    command: Command,
    unavailable: fn(String) -> Error,
) -> Result<Success, Error> {
    let request = Request {
        version: PROTOCOL_VERSION,
        command,
    };
    match client::call(&config.agent_socket, config.timeout, &request) {
        Ok(Response::Ok(success)) => Ok(success),
        Ok(Response::Error(failure)) => Err(failure_error(failure)),
        Err(e @ (CallError::Absent { .. } | CallError::TimedOut { .. })) => {
            Err(unavailable(e.to_string()))
        }
        Err(e) => Err(Error::Custom(
            CODE_AGENT_ERROR,
            "ests node agent error".into(),
            e.to_string(),
        )),
    }
}

/// The CNI error for the agent's answer.
pub fn failure_error(failure: Failure) -> Error {
    let Failure { kind, message } = failure;
    match kind {
        FailureKind::TryAgainLater => Error::TryAgainLater(message),
        FailureKind::Refused => Error::Custom(CODE_REFUSED, "address refused".into(), message),
        FailureKind::CheckFailed => {
            Error::Custom(CODE_CHECK_FAILED, "address check failed".into(), message)
        }
        FailureKind::NotReady => Error::PluginNotAvailable(message),
        FailureKind::BadRequest => Error::InvalidNetworkConfig(message),
        FailureKind::UnsupportedVersion => Error::IncompatibleVersion(message),
        FailureKind::Internal | FailureKind::Unknown => {
            Error::Custom(CODE_AGENT_ERROR, "ests node agent error".into(), message)
        }
    }
}

impl Cni for EstsCni {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let config = config_of(&args)?;
        let request = attach(&args, true)?;
        let success = ask(&config, Command::Add(request), Error::TryAgainLater)?;
        // containerd fails the sandbox later ("failed to find network info") if eth0 has no
        // address: say so here, with the reason.
        if success.ips.is_empty() {
            return Err(Error::Custom(
                CODE_AGENT_ERROR,
                "ests node agent error".into(),
                "the agent answered ADD with no address".into(),
            ));
        }
        Ok(CNIResult {
            interfaces: Vec::new(),
            ips: success
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    // An IPAM result names no interface: the main plugin assigns them.
                    interface: None,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: config.routes,
            dns: None,
        })
    }

    fn del(&self, args: Args) -> Result<(), Error> {
        let config = config_of(&args)?;
        let request = attach(&args, false)?;
        // An agent that is not there cannot forget the attachment: the error makes the
        // runtime retry, so the address is not lost to a leaked attachment.
        ask(&config, Command::Del(request), Error::TryAgainLater).map(drop)
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        let config = config_of(&args)?;
        let request = attach(&args, false)?;
        ask(&config, Command::Check(request), Error::TryAgainLater).map(drop)
    }

    fn status(&self, args: Args) -> Result<(), Error> {
        let config = config_of(&args)?;
        let network = args.config().name.clone();
        ask(
            &config,
            Command::Status { network },
            Error::PluginNotAvailable,
        )
        .map(drop)
    }

    fn gc(&self, args: Args) -> Result<(), Error> {
        let config = config_of(&args)?;
        // Without the runtime's list nothing can be told stale (`cnitool gc` sends none).
        let Some(valid) = args.config().valid_attachments.as_ref() else {
            return Ok(());
        };
        let valid = valid
            .iter()
            .map(|a| AttachmentId {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect();
        let network = args.config().name.clone();
        ask(
            &config,
            Command::Gc { network, valid },
            Error::TryAgainLater,
        )
        .map(drop)
    }
}
