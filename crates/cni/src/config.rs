//! What the plugin reads besides the CNI's own fields: its section of the network config
//! (`ipam`) and the pod the runtime names in `CNI_ARGS`.
//!
//! Everything here is parsed, never trusted: a bad value is an error naming it (CNI code 7
//! for the config, 4 for the environment), never a panic — `tests::parsing_never_panics`
//! throws arbitrary input at both.

use std::path::PathBuf;
use std::time::Duration;

use rscni_plugin::types::{Ipam, NetConf, Route};
use serde::{Deserialize, Serialize};

use crate::protocol::{DEFAULT_AGENT_SOCKET, Pod};

/// How long one exchange with the agent may take unless the config says otherwise: the
/// agent blocks an ADD for at most ~10 s while its caches sync, and kubelet gives a sandbox
/// minutes, so this only bounds an agent that hangs.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
/// Longest timeout a config may ask for (kubelet's runtime request timeout is 2 minutes).
pub const MAX_TIMEOUT_SECONDS: u64 = 300;

/// The plugin's section of the network config: `{"type": "ests-cni", ...}` under `ipam`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The node agent's unix socket (`agentSocket`, absolute).
    pub agent_socket: PathBuf,
    /// Bound on one exchange with the agent (`timeoutSeconds`, 1 to 300).
    pub timeout: Duration,
    /// Routes the ADD result carries (`routes`, as host-local takes them).
    pub routes: Vec<Route>,
}

/// Why the config cannot be used (CNI code 7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the network config has no ipam section")]
    NoIpam,
    #[error("ipam: {0}")]
    Invalid(String),
    #[error("ipam.agentSocket must be an absolute path, not {0:?}")]
    RelativeSocket(String),
    #[error("ipam.timeoutSeconds must be 1 to {MAX_TIMEOUT_SECONDS}, not {0}")]
    Timeout(u64),
}

/// The keys of the section, both ways: read by the plugin, written by
/// [`IpamConfig::section`] (so a section ests writes is always one the plugin reads).
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
}

/// The `ipam` section of `conf`.
pub fn ipam_config(conf: &NetConf) -> Result<IpamConfig, ConfigError> {
    let ipam = conf.ipam.as_ref().ok_or(ConfigError::NoIpam)?;
    let custom = serde_json::Value::Object(
        ipam.custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let raw: RawIpam =
        serde_json::from_value(custom).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    checked(raw)
}

impl IpamConfig {
    /// A section for `agent_socket` (and optionally a timeout and routes), held to the
    /// rules the plugin reads a section by.
    pub fn new(
        agent_socket: &str,
        timeout_seconds: Option<u64>,
        routes: Vec<Route>,
    ) -> Result<Self, ConfigError> {
        checked(RawIpam {
            agent_socket: Some(agent_socket.to_string()),
            timeout_seconds,
            routes,
        })
    }

    /// The section as the network config carries it under `ipam`, `type` included.
    pub fn section(&self) -> Ipam {
        let raw = RawIpam {
            agent_socket: Some(self.agent_socket.display().to_string()),
            timeout_seconds: Some(self.timeout.as_secs()),
            routes: self.routes.clone(),
        };
        let custom = match serde_json::to_value(raw) {
            Ok(serde_json::Value::Object(fields)) => fields.into_iter().collect(),
            // A struct of strings, numbers and routes always serialises to an object.
            _ => Default::default(),
        };
        Ipam {
            r#type: crate::PLUGIN_TYPE.to_string(),
            custom,
        }
    }
}

/// The rules of a section: an absolute socket (default [`DEFAULT_AGENT_SOCKET`]), a
/// timeout of 1 to [`MAX_TIMEOUT_SECONDS`].
fn checked(raw: RawIpam) -> Result<IpamConfig, ConfigError> {
    let socket = raw
        .agent_socket
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_string());
    if !socket.starts_with('/') {
        return Err(ConfigError::RelativeSocket(socket));
    }
    let seconds = raw.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&seconds) {
        return Err(ConfigError::Timeout(seconds));
    }
    Ok(IpamConfig {
        agent_socket: PathBuf::from(socket),
        timeout: Duration::from_secs(seconds),
        routes: raw.routes,
    })
}

/// Why `CNI_ARGS` cannot be used (CNI code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("CNI_ARGS: {0:?} is not KEY=VALUE")]
    NotAPair(String),
    #[error(
        "CNI_ARGS lacks {0} (the runtime names the pod with K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID)"
    )]
    Missing(&'static str),
}

/// The pod `CNI_ARGS` names (`IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;
/// K8S_POD_UID=..;...`, as containerd and CRI-O send it): None when it names none (no
/// `K8S_POD_*` key at all). Unknown keys are ignored, as the convention's `IgnoreUnknown`
/// asks; a pair without `=` is an error, as libcni's parser makes it.
pub fn pod_args(cni_args: Option<&str>) -> Result<Option<Pod>, ArgsError> {
    let mut namespace = None;
    let mut name = None;
    let mut uid = None;
    for pair in cni_args.unwrap_or_default().split(';') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ArgsError::NotAPair(pair.to_string()))?;
        let slot = match key {
            "K8S_POD_NAMESPACE" => &mut namespace,
            "K8S_POD_NAME" => &mut name,
            "K8S_POD_UID" => &mut uid,
            _ => continue,
        };
        *slot = Some(value.to_string()).filter(|v| !v.is_empty());
    }
    if namespace.is_none() && name.is_none() && uid.is_none() {
        return Ok(None);
    }
    Ok(Some(Pod {
        namespace: namespace.ok_or(ArgsError::Missing("K8S_POD_NAMESPACE"))?,
        name: name.ok_or(ArgsError::Missing("K8S_POD_NAME"))?,
        uid: uid.ok_or(ArgsError::Missing("K8S_POD_UID"))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn conf(ipam: serde_json::Value) -> NetConf {
        serde_json::from_value(
            json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "ipam": ipam}),
        )
        .expect("conf")
    }

    #[test]
    fn ipam_config_defaults_and_bounds() {
        let default = ipam_config(&conf(json!({"type": "ests-cni"}))).expect("valid");
        assert_eq!(default.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(
            default.timeout,
            Duration::from_secs(DEFAULT_TIMEOUT_SECONDS)
        );
        let set = ipam_config(&conf(
            json!({"type": "ests-cni", "agentSocket": "/tmp/a.sock",
            "timeoutSeconds": 5, "routes": [{"dst": "0.0.0.0/0"}]}),
        ))
        .expect("valid");
        assert_eq!(set.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(set.routes.len(), 1);
        for (ipam, expected) in [
            (
                json!({"type": "ests-cni", "agentSocket": "a.sock"}),
                ConfigError::RelativeSocket("a.sock".into()),
            ),
            (
                json!({"type": "ests-cni", "timeoutSeconds": 0}),
                ConfigError::Timeout(0),
            ),
            (
                json!({"type": "ests-cni", "timeoutSeconds": 301}),
                ConfigError::Timeout(301),
            ),
        ] {
            assert_eq!(ipam_config(&conf(ipam)), Err(expected));
        }
        assert!(matches!(
            ipam_config(&conf(json!({"type": "ests-cni", "agentSocket": 7}))),
            Err(ConfigError::Invalid(_))
        ));
        let none: NetConf =
            serde_json::from_value(json!({"cniVersion": "1.1.0", "name": "n", "type": "x"}))
                .expect("conf");
        assert_eq!(ipam_config(&none), Err(ConfigError::NoIpam));
    }

    #[test]
    fn pod_args_as_runtimes_send_them() {
        let containerd = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1";
        assert_eq!(
            pod_args(Some(containerd)),
            Ok(Some(Pod {
                namespace: "ns".into(),
                name: "web-0".into(),
                uid: "u1".into()
            }))
        );
        assert_eq!(pod_args(None), Ok(None));
        assert_eq!(pod_args(Some("IgnoreUnknown=1")), Ok(None));
        assert_eq!(pod_args(Some("a=b;;c=d;")), Ok(None));
        assert_eq!(
            pod_args(Some("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0")),
            Err(ArgsError::Missing("K8S_POD_UID"))
        );
        assert_eq!(
            pod_args(Some("K8S_POD_NAMESPACE=ns;junk")),
            Err(ArgsError::NotAPair("junk".into()))
        );
        // A value may hold `=`; only the first splits.
        assert_eq!(
            pod_args(Some("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a=b;K8S_POD_UID=u"))
                .map(|p| p.map(|p| p.name)),
            Ok(Some("a=b".into()))
        );
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            "[ -~]{0,12}".prop_map(serde_json::Value::from),
            Just(json!("/run/x.sock")),
            Just(json!("0.0.0.0/0")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("agentSocket".to_string()),
                        Just("timeoutSeconds".to_string()),
                        Just("routes".to_string()),
                        Just("dst".to_string()),
                        Just("gw".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary bytes on stdin, arbitrary ipam sections and arbitrary CNI_ARGS: each
        /// parses or is an error, and never panics.
        #[test]
        fn parsing_never_panics(
            stdin in proptest::collection::vec(any::<u8>(), 0..256),
            ipam in json_value(),
            args in "[ -~]{0,64}",
            k8s in proptest::collection::vec(
                (prop_oneof![Just("K8S_POD_NAMESPACE"), Just("K8S_POD_NAME"), Just("K8S_POD_UID"), Just("IgnoreUnknown")],
                 "[ -~&&[^;]]{0,8}"), 0..4),
        ) {
            let _ = serde_json::from_slice::<NetConf>(&stdin);
            let conf = serde_json::from_value::<NetConf>(
                json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "ipam": ipam})
            );
            if let Ok(ipam) = conf.as_ref().map_err(|e| e.to_string()).and_then(|c| ipam_config(c).map_err(|e| e.to_string())) {
                prop_assert!(ipam.agent_socket.is_absolute());
                prop_assert!(ipam.timeout.as_secs() >= 1);
            }
            let _ = pod_args(Some(&args));
            let joined: Vec<String> = k8s.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if let Ok(Some(pod)) = pod_args(Some(&joined.join(";"))) {
                prop_assert!(!pod.namespace.is_empty() && !pod.name.is_empty() && !pod.uid.is_empty());
            }
        }
    }
}
