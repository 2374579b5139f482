//! The network config list that chains `ests-cni` as the `ipam` of a main plugin — what
//! `ests node install-cni` writes into a node's CNI config directory.
//!
//! Built from the plugin's own types ([`IpamConfig::section`], rscni's `NetConf` and
//! `NetConfList`), and read back before it is handed out the way the runtime and the plugin
//! read it (libcni's list, each plugin given the list's `name` and `cniVersion`, the ipam
//! section through [`ipam_config`]): a list that the plugin would refuse, or read otherwise
//! than it was asked to, is never written.

use rscni_plugin::types::{NetConf, NetConfList};
use serde_json::Value;

use crate::config::{ConfigError, IpamConfig, ipam_config};
use crate::{PLUGIN_TYPE, SUPPORTED_VERSIONS};

/// The CNI version a list declares unless told otherwise: the newest that Debian's and the
/// older reference plugins (1.1) take, which every version of ests-cni speaks too.
pub const DEFAULT_CNI_VERSION: &str = "1.0.0";

/// What the list is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflistSpec {
    /// The list's `cniVersion`.
    pub cni_version: String,
    /// The network's name (the list's `name`).
    pub network: String,
    /// The main plugin's config (bridge, ptp, macvlan, ipvlan, ...) without an `ipam`:
    /// ests-cni becomes its ipam.
    pub main_plugin: Value,
    /// ests-cni's section.
    pub ipam: IpamConfig,
    /// Plugins chained after the main one (portmap, bandwidth, tuning, ...).
    pub extra_plugins: Vec<Value>,
}

/// Why no list can be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConflistError {
    #[error("cniVersion {0:?} is not one ests-cni speaks ({versions})", versions = SUPPORTED_VERSIONS.join(", "))]
    Version(String),
    #[error("network name: {0}")]
    Name(String),
    #[error("the {which} is not a plugin config (a JSON object with a \"type\"): {message}")]
    NotAPlugin { which: String, message: String },
    #[error(
        "the main plugin has an ipam section of its own (type {0:?}); ests-cni is its ipam: leave \"ipam\" out"
    )]
    OwnIpam(String),
    #[error(
        "the main plugin cannot be {PLUGIN_TYPE} itself: it is an IPAM plugin, chained as a main plugin's ipam"
    )]
    PluginAsMain,
    #[error("the list as written does not read back: {0}")]
    ReadBack(String),
    #[error("ipam: {0}")]
    Ipam(#[from] ConfigError),
}

fn plugin(which: &str, value: &Value) -> Result<NetConf, ConflistError> {
    let not_a_plugin = |message: String| ConflistError::NotAPlugin {
        which: which.to_string(),
        message,
    };
    if !value.is_object() {
        return Err(not_a_plugin(format!("{value} is not an object")));
    }
    let conf: NetConf =
        serde_json::from_value(value.clone()).map_err(|e| not_a_plugin(e.to_string()))?;
    if conf.r#type.is_empty() {
        return Err(not_a_plugin("its \"type\" is empty".into()));
    }
    Ok(conf)
}

/// A plugin's config as a list holds it: without the `name` rscni's type writes empty (the
/// runtime gives each plugin the list's).
fn plugin_value(conf: &NetConf) -> Result<Value, ConflistError> {
    let mut value =
        serde_json::to_value(conf).map_err(|e| ConflistError::ReadBack(e.to_string()))?;
    if let Some(fields) = value.as_object_mut()
        && fields.get("name").is_some_and(|n| n == "")
    {
        fields.remove("name");
    }
    Ok(value)
}

/// The list as `spec` says, as the text of a `.conflist` file: pretty JSON with its keys
/// sorted, so the same spec always gives the same bytes (the installer compares them to
/// leave an unchanged file alone).
pub fn conflist(spec: &ConflistSpec) -> Result<String, ConflistError> {
    if !SUPPORTED_VERSIONS.contains(&spec.cni_version.as_str()) {
        return Err(ConflistError::Version(spec.cni_version.clone()));
    }
    NetConf {
        name: spec.network.clone(),
        ..NetConf::default()
    }
    .validate_name()
    .map_err(|e| ConflistError::Name(e.to_string()))?;
    let mut main = plugin("main plugin", &spec.main_plugin)?;
    if main.r#type == PLUGIN_TYPE {
        return Err(ConflistError::PluginAsMain);
    }
    if let Some(own) = &main.ipam {
        return Err(ConflistError::OwnIpam(own.r#type.clone()));
    }
    main.ipam = Some(spec.ipam.section());
    let mut plugins = vec![plugin_value(&main)?];
    for (i, extra) in spec.extra_plugins.iter().enumerate() {
        plugins.push(plugin_value(&plugin(
            &format!("extra plugin #{}", i + 1),
            extra,
        )?)?);
    }
    // Only the keys a list needs: libcni gives every plugin the list's name and version.
    let list = serde_json::json!({
        "cniVersion": spec.cni_version,
        "name": spec.network,
        "plugins": plugins,
    });
    let text = serde_json::to_string_pretty(&sorted(list))
        .map_err(|e| ConflistError::ReadBack(e.to_string()))?;
    let back = ipam_as_plugin_reads(&text)?;
    if back != spec.ipam {
        return Err(ConflistError::ReadBack(format!(
            "ests-cni would read {back:?}, not {:?}",
            spec.ipam
        )));
    }
    Ok(text + "\n")
}

/// Reads `text` as the runtime reads a `.conflist` and gives ests-cni's section as the
/// plugin reads it from the main plugin's config (the first plugin of the list, handed the
/// list's `name` and `cniVersion` as libcni hands them).
pub fn ipam_as_plugin_reads(text: &str) -> Result<IpamConfig, ConflistError> {
    let list: NetConfList =
        serde_json::from_str(text).map_err(|e| ConflistError::ReadBack(e.to_string()))?;
    let mut main = list
        .plugins
        .first()
        .cloned()
        .ok_or_else(|| ConflistError::ReadBack("the list has no plugin".into()))?;
    main.name = list.name;
    main.cni_version = list.cni_version;
    main.validate_name()
        .map_err(|e| ConflistError::ReadBack(e.to_string()))?;
    if let Some(ipam) = &main.ipam
        && ipam.r#type != PLUGIN_TYPE
    {
        return Err(ConflistError::ReadBack(format!(
            "the main plugin's ipam is {:?}, not {PLUGIN_TYPE}",
            ipam.r#type
        )));
    }
    Ok(ipam_config(&main)?)
}

/// `value` with every object's keys in order (serde_json keeps insertion order when built
/// with `preserve_order`, and rscni's maps are hash maps, whose order changes per process).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(fields) => {
            let mut fields: Vec<(String, Value)> = fields.into_iter().collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(fields.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn bridge() -> Value {
        json!({"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true})
    }

    fn spec() -> ConflistSpec {
        ConflistSpec {
            cni_version: DEFAULT_CNI_VERSION.into(),
            network: "ests".into(),
            main_plugin: bridge(),
            ipam: IpamConfig::new(
                "/run/ests/cni.sock",
                Some(10),
                vec![serde_json::from_value(json!({"dst": "0.0.0.0/0"})).expect("a route")],
            )
            .expect("a valid section"),
            extra_plugins: vec![json!({"type": "portmap", "capabilities": {"portMappings": true}})],
        }
    }

    #[test]
    fn the_list_chains_ests_cni_under_the_main_plugin_and_the_plugin_reads_it_back() {
        let text = conflist(&spec()).expect("a list");
        let list: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(list["name"], json!("ests"));
        assert_eq!(list["cniVersion"], json!("1.0.0"));
        let plugins = list["plugins"].as_array().expect("plugins");
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0]["type"], json!("bridge"));
        assert_eq!(plugins[0]["bridge"], json!("cni0"));
        assert_eq!(plugins[0]["isGateway"], json!(true));
        assert_eq!(
            plugins[0]["ipam"],
            json!({"type": "ests-cni", "agentSocket": "/run/ests/cni.sock",
                   "timeoutSeconds": 10, "routes": [{"dst": "0.0.0.0/0"}]})
        );
        assert_eq!(plugins[1]["type"], json!("portmap"));
        assert!(plugins[1].get("ipam").is_none());
        // As the plugin reads it: the same section it was asked for.
        let read = ipam_as_plugin_reads(&text).expect("the plugin reads it");
        assert_eq!(read, spec().ipam);
        assert_eq!(read.timeout, Duration::from_secs(10));
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn the_same_spec_always_gives_the_same_bytes() {
        let first = conflist(&spec()).expect("a list");
        for _ in 0..20 {
            assert_eq!(conflist(&spec()).expect("a list"), first);
        }
        let mut other = spec();
        other.network = "other".into();
        assert_ne!(conflist(&other).expect("a list"), first);
    }

    #[test]
    fn a_list_the_plugin_would_refuse_is_never_made() {
        let cases: Vec<(ConflistSpec, &str)> = vec![
            (
                ConflistSpec {
                    cni_version: "0.2.0".into(),
                    ..spec()
                },
                "cniVersion \"0.2.0\"",
            ),
            (
                ConflistSpec {
                    network: "no spaces".into(),
                    ..spec()
                },
                "network name",
            ),
            (
                ConflistSpec {
                    network: String::new(),
                    ..spec()
                },
                "network name",
            ),
            (
                ConflistSpec {
                    main_plugin: json!("bridge"),
                    ..spec()
                },
                "the main plugin is not a plugin config",
            ),
            (
                ConflistSpec {
                    main_plugin: json!({"bridge": "cni0"}),
                    ..spec()
                },
                "the main plugin is not a plugin config",
            ),
            (
                ConflistSpec {
                    main_plugin: json!({"type": "bridge", "ipam": {"type": "host-local"}}),
                    ..spec()
                },
                "ipam section of its own (type \"host-local\")",
            ),
            (
                ConflistSpec {
                    main_plugin: json!({"type": "ests-cni"}),
                    ..spec()
                },
                "cannot be ests-cni itself",
            ),
            (
                ConflistSpec {
                    extra_plugins: vec![json!({"type": ""})],
                    ..spec()
                },
                "the extra plugin #1 is not a plugin config",
            ),
        ];
        for (bad, expected) in cases {
            let refused = conflist(&bad).expect_err("refused");
            assert!(
                refused.to_string().contains(expected),
                "{refused} does not say {expected:?}"
            );
        }
        // The section's own rules are the plugin's.
        assert_eq!(
            IpamConfig::new("relative.sock", None, vec![]),
            Err(ConfigError::RelativeSocket("relative.sock".into()))
        );
        assert_eq!(
            IpamConfig::new("/run/a.sock", Some(0), vec![]),
            Err(ConfigError::Timeout(0))
        );
    }

    #[test]
    fn a_list_without_ests_cni_does_not_read_as_its_section() {
        let host_local = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
        assert_eq!(
            ipam_as_plugin_reads(host_local),
            Err(ConflistError::Ipam(ConfigError::NoIpam))
        );
        let other = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local"}}]}"#;
        assert!(matches!(
            ipam_as_plugin_reads(other),
            Err(ConflistError::ReadBack(m)) if m.contains("host-local")
        ));
        assert!(matches!(
            ipam_as_plugin_reads("{}"),
            Err(ConflistError::ReadBack(_))
        ));
    }
}
