//! What the plugin and the node agent (`ests node`) say to each other over the agent's unix
//! socket. The agent implements the server side with these same types.
//!
//! One exchange per connection: the plugin writes one JSON [`Request`] and shuts its
//! writing half down; the agent reads to end of stream (at most [`MAX_MESSAGE_BYTES`]),
//! writes one JSON [`Response`] and closes. No framing beyond the stream's end, so either
//! side can be written in any language with a JSON library, and a half-written message is
//! a parse error, never a wrong answer.
//!
//! Versioned: every request carries [`PROTOCOL_VERSION`]. An agent that does not speak the
//! version answers [`FailureKind::UnsupportedVersion`] (it never guesses); a later version
//! adds fields with defaults, so an older agent's answers still parse.

use std::io::{Read, Write};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The version of this protocol the plugin speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where the agent listens unless the network config says otherwise (`ipam.agentSocket`):
/// under `/run`, which only root can write, so no other user can stand in for the agent.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/ests/cni.sock";

/// Largest message either side reads: far above any real one (a GC lists every attachment
/// of a node, ~100 bytes each), small enough that a confused peer cannot exhaust memory.
pub const MAX_MESSAGE_BYTES: u64 = 4 << 20;

/// A request from the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

/// What the plugin asks: one per CNI verb that needs the agent (VERSION never does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "UPPERCASE")]
pub enum Command {
    /// Addresses for a sandbox interface; repeated ADDs answer the same.
    Add(Attach),
    /// Forget a sandbox interface's attachment; succeeds when there is none.
    Del(Attach),
    /// Whether the attachment's reservation is there and still right.
    Check(Attach),
    /// Whether the agent can serve ADDs (its caches have synced).
    Status { network: String },
    /// Forget every attachment of `network` not in `valid`.
    Gc {
        network: String,
        valid: Vec<AttachmentId>,
    },
}

/// A sandbox interface, as the runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentId {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// An ADD, DEL or CHECK: the attachment, the network it is on, and the pod as the runtime
/// says (`K8S_POD_*`), which ADD needs and DEL may lack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attach {
    /// The network's name (the config's `name`).
    pub network: String,
    #[serde(flatten)]
    pub id: AttachmentId,
    /// `CNI_NETNS`, when given (DEL may lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

/// A pod, by namespace, name and UID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    Ok(Success),
    Error(Failure),
}

/// A success: for ADD, the addresses (and nothing for the other commands).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Success {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpEntry>,
}

/// One address handed out: in CIDR notation with the prefix length of its network, and the
/// gateway of that network if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpEntry {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A failure, by what the plugin tells the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub kind: FailureKind,
    /// For people (the runtime logs it, kubelet puts it in the pod's events).
    pub message: String,
}

/// Why a request failed, which decides the CNI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureKind {
    /// Waiting can help (caches syncing, a bind or a DEL to come): CNI code 11.
    TryAgainLater,
    /// The pod may not have the addresses it would need (another node's block, another
    /// workload's record): a plugin error code (100).
    Refused,
    /// CHECK: the reservation is missing or wrong (101).
    CheckFailed,
    /// STATUS: the agent cannot serve ADDs (50).
    NotReady,
    /// The request was malformed (7, the config or arguments it came from).
    BadRequest,
    /// The agent does not speak the request's protocol version (1).
    UnsupportedVersion,
    /// Anything else on the agent's side (102).
    Internal,
    /// A kind this plugin does not know (a newer agent's): treated like [`Self::Internal`].
    #[serde(other)]
    Unknown,
}

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("reading the message: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the message: {0}")]
    Write(#[source] std::io::Error),
    #[error("the message is longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("the message is not valid JSON of the expected shape: {0}")]
    Parse(#[source] serde_json::Error),
}

/// Reads one message: everything up to the end of the stream.
pub fn read_message<T: DeserializeOwned>(reader: impl Read) -> Result<T, WireError> {
    let mut buf = Vec::new();
    reader
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(WireError::Read)?;
    if buf.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLong);
    }
    serde_json::from_slice(&buf).map_err(WireError::Parse)
}

/// Writes one message (the caller then ends the stream: shuts down or closes it).
pub fn write_message<T: Serialize>(mut writer: impl Write, message: &T) -> Result<(), WireError> {
    let bytes =
        serde_json::to_vec(message).map_err(|e| WireError::Write(std::io::Error::other(e)))?;
    writer.write_all(&bytes).map_err(WireError::Write)?;
    writer.flush().map_err(WireError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let request = Request {
            version: PROTOCOL_VERSION,
            command: Command::Add(Attach {
                network: "estsnet".into(),
                id: AttachmentId {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                },
                netns: Some("/var/run/netns/a".into()),
                pod: Some(Pod {
                    namespace: "ns".into(),
                    name: "web-0".into(),
                    uid: "u1".into(),
                }),
            }),
        };
        let wire = serde_json::to_value(&request).expect("serializes");
        assert_eq!(
            wire,
            json!({"version": 1, "command": "ADD", "network": "estsnet", "containerID": "c1",
                   "ifname": "eth0", "netns": "/var/run/netns/a",
                   "pod": {"namespace": "ns", "name": "web-0", "uid": "u1"}})
        );
        assert_eq!(
            serde_json::from_value::<Request>(wire).expect("parses"),
            request
        );
        let gc = json!({"version": 1, "command": "GC", "network": "n",
                        "valid": [{"containerID": "c1", "ifname": "eth0"}]});
        assert!(matches!(
            serde_json::from_value::<Request>(gc)
                .expect("parses")
                .command,
            Command::Gc { .. }
        ));
    }

    #[test]
    fn responses_parse_and_unknown_kinds_are_tolerated() {
        let ok: Response = serde_json::from_value(
            json!({"result": "ok", "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}]}),
        )
        .expect("parses");
        assert_eq!(
            ok,
            Response::Ok(Success {
                ips: vec![IpEntry {
                    address: "10.0.0.5/24".parse().expect("cidr"),
                    gateway: Some("10.0.0.1".parse().expect("ip")),
                }]
            })
        );
        let newer: Response = serde_json::from_value(
            json!({"result": "error", "kind": "somethingNew", "message": "m"}),
        )
        .expect("parses");
        assert_eq!(
            newer,
            Response::Error(Failure {
                kind: FailureKind::Unknown,
                message: "m".into()
            })
        );
    }

    #[test]
    fn messages_are_bounded() {
        let long = vec![b' '; (MAX_MESSAGE_BYTES + 1) as usize];
        assert!(matches!(
            read_message::<Response>(&long[..]),
            Err(WireError::TooLong)
        ));
        assert!(matches!(
            read_message::<Response>(&b"{\"result\":"[..]),
            Err(WireError::Parse(_))
        ));
    }
}
