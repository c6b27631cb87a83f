//! The network configuration's common keys, as the CNI spec defines them for every plugin
//! (the reference's `types.NetConf`): decoded and validated before a plugin touches
//! anything. A plugin's own keys live with the plugin, in a config that embeds this one.

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::error::{Error, Kind, Result};
use super::result::Dns;
use super::version::Version;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRuntimeConfig {
    mac: Option<String>,
    ips: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    ipam: Option<Value>,
    #[serde(default)]
    runtime_config: RawRuntimeConfig,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Value>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Value>,
}

/// Runtime-requested addresses (the `ips` capability) and MAC (the `mac` capability).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    pub mac: Option<[u8; 6]>,
    pub ips: Vec<IpNetwork>,
}

/// An attachment the runtime says is still valid (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The validated common keys of a network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    /// The config's `dns`: what the result reports, as the reference macvlan does.
    pub dns: Dns,
    /// The `ipam` object as given; the ipam module reads it.
    pub ipam: Value,
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
    pub valid_attachments: Vec<Attachment>,
    /// The whole config as received, for delegated IPAM plugins.
    pub raw: Value,
}

impl NetConf {
    /// Decodes and validates the common keys. Only the version is checked first, so an
    /// unknown version is reported as such (code 1) whatever else is wrong.
    pub fn from_value(raw_value: &Value) -> Result<NetConf> {
        let version = Version::parse(raw_value.get("cniVersion").and_then(Value::as_str))?;
        let raw = RawNetConf::deserialize(raw_value)
            .map_err(|e| Error::new(Kind::Decode, format!("network config: {e}")))?;
        let name = raw
            .name
            .ok_or_else(|| Error::new(Kind::InvalidConfig, "network config has no \"name\""))?;
        validate_network_name(&name)?;
        Ok(NetConf {
            version,
            name,
            plugin_type: raw.plugin_type.unwrap_or_default(),
            dns: raw_value.get("dns").map(Dns::from_json).unwrap_or_default(),
            ipam: raw.ipam.unwrap_or(Value::Null),
            runtime_config: raw.runtime_config.validate()?,
            prev_result: raw.prev_result,
            valid_attachments: [raw.valid_attachments, raw.attachments]
                .iter()
                .flatten()
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|a| {
                    Some(Attachment {
                        container_id: a.get("containerID")?.as_str()?.to_owned(),
                        ifname: a.get("ifname")?.as_str()?.to_owned(),
                    })
                })
                .collect(),
            raw: raw_value.clone(),
        })
    }

    /// `ipam.type`, empty when there is no IPAM.
    pub fn ipam_type(&self) -> &str {
        self.ipam.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

impl RawRuntimeConfig {
    fn validate(self) -> Result<RuntimeConfig> {
        Ok(RuntimeConfig {
            mac: self
                .mac
                .as_deref()
                .map(|m| parse_mac(m, "runtimeConfig.mac"))
                .transpose()?,
            ips: self
                .ips
                .unwrap_or_default()
                .iter()
                .map(|s| parse_requested_ip(s))
                .collect::<Result<_>>()?,
        })
    }
}

/// Decodes stdin into the JSON object every verb reads (once per invocation).
pub fn decode(bytes: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            Kind::Decode,
            format!("network config on stdin is not valid JSON: {e}"),
        )
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(Error::new(
            Kind::Decode,
            "network config on stdin must be a JSON object",
        ))
    }
}

/// The network name becomes a directory name in the address store: it follows the spec's
/// rule (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`), which also rules out `/` and `..`.
pub fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(Kind::InvalidConfig, format!(
            "network name {name:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-' (it names a directory in the address store)"
        )))
    }
}

/// A unicast MAC in `aa:bb:cc:dd:ee:ff` form.
pub fn parse_mac(s: &str, what: &str) -> Result<[u8; 6]> {
    let bad = || {
        Error::new(
            Kind::InvalidConfig,
            format!("{what} {s:?} is not a unicast MAC address like 02:00:00:00:00:01"),
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// A runtime-requested address: `198.51.100.7/24` or a bare `198.51.100.7`.
fn parse_requested_ip(s: &str) -> Result<IpNetwork> {
    s.parse::<IpNetwork>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNetwork::from))
        .map_err(|_| {
            Error::new(
                Kind::InvalidConfig,
                format!("runtimeConfig.ips: {s:?} is not an IP address"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:AB:cd:00:00:01", "mac").unwrap(),
            [0x02, 0xab, 0xcd, 0, 0, 1]
        );
        assert!(parse_mac("02:ab:cd:00:00", "mac").is_err());
        assert!(parse_mac("02:ab:cd:00:00:0g", "mac").is_err());
        assert!(parse_mac("01:00:5e:00:00:01", "mac").is_err());
    }

    #[test]
    fn valid_attachments_are_read_from_either_key() {
        let v = serde_json::json!({"cniVersion":"1.1.0","name":"n",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"net1"},{"bad":1}],
            "cni.dev/attachments":[{"containerID":"b","ifname":"net2"}]});
        let c = NetConf::from_value(&v).unwrap();
        assert_eq!(
            c.valid_attachments,
            vec![
                Attachment {
                    container_id: "a".into(),
                    ifname: "net1".into()
                },
                Attachment {
                    container_id: "b".into(),
                    ifname: "net2".into()
                },
            ]
        );
    }
}
