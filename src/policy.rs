//! The node's policy: which master interfaces and address ranges attachments may use.
//! NetworkAttachmentDefinitions are namespaced and any namespace admin may write one, while
//! the plugin runs as root on the node; the policy file (installed by the DaemonSet from a
//! ConfigMap) lets the cluster admin bound what such a config can reach. No file: everything
//! is allowed.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::cni::{Error, Result};

pub const DEFAULT_POLICY_FILE: &str = "/etc/cni/ros-macvlan/policy.json";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Allowed master interface names; a trailing `*` matches a prefix (`enp*`).
    masters: Option<Vec<String>>,
    /// Prefixes every address handed to a pod must lie in.
    ranges: Option<Vec<IpNetwork>>,
    #[serde(skip)]
    path: PathBuf,
}

impl Policy {
    /// The node's policy; ROS_MACVLAN_POLICY_FILE names another file. A file that exists but
    /// cannot be read or parsed refuses everything: a broken policy must not mean no policy.
    pub fn load() -> Result<Option<Policy>> {
        let path = std::env::var_os("ROS_MACVLAN_POLICY_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_FILE));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::PolicyRefused(format!(
                    "node policy {} cannot be read ({e}); fix or remove it",
                    path.display()
                )))
            }
        };
        Policy::parse(&bytes, path).map(Some)
    }

    /// The policy file's contents, read from `path`: the one parser of what a node's admin
    /// (or a broken ConfigMap) writes there.
    pub fn parse(bytes: &[u8], path: PathBuf) -> Result<Policy> {
        let mut policy: Policy = serde_json::from_slice(bytes).map_err(|e| {
            Error::PolicyRefused(format!(
                "node policy {} is invalid ({e}); it takes {{\"masters\": [...], \"ranges\": [...]}}",
                path.display()
            ))
        })?;
        policy.path = path;
        Ok(policy)
    }

    pub fn check_master(&self, master: &str) -> Result<()> {
        let Some(allowed) = &self.masters else {
            return Ok(());
        };
        let ok = allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => master.starts_with(prefix),
            None => a == master,
        });
        if ok {
            Ok(())
        } else {
            Err(Error::PolicyRefused(format!(
                "master {master} is not allowed by node policy {} (allowed: {}); ask the cluster admin or use an allowed master",
                self.path.display(),
                allowed.join(", ")
            )))
        }
    }

    pub fn check_address(&self, ip: IpAddr) -> Result<()> {
        let Some(allowed) = &self.ranges else {
            return Ok(());
        };
        if allowed.iter().any(|r| r.contains(ip)) {
            Ok(())
        } else {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            Err(Error::PolicyRefused(format!(
                "address {ip} is outside the ranges node policy {} allows ({})",
                self.path.display(),
                list.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        Policy::parse(json.as_bytes(), PathBuf::from("policy.json")).unwrap()
    }

    #[test]
    fn masters_match_exactly_or_by_prefix() {
        let p = policy(r#"{"masters": ["eth0", "enp*"]}"#);
        assert!(p.check_master("eth0").is_ok());
        assert!(p.check_master("enp3s0").is_ok());
        let e = p.check_master("wlan0").unwrap_err();
        assert_eq!(e.code(), 106);
        assert!(e.to_string().contains("node policy"), "{e}");
    }

    #[test]
    fn ranges_bound_addresses() {
        let p = policy(r#"{"ranges": ["198.51.100.0/25"]}"#);
        assert!(p.check_address("198.51.100.7".parse().unwrap()).is_ok());
        assert_eq!(
            p.check_address("198.51.100.200".parse().unwrap())
                .unwrap_err()
                .code(),
            106
        );
        assert!(policy("{}")
            .check_address("203.0.113.1".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Policy::parse(br#"{"master": ["eth0"]}"#, PathBuf::from("/p.json")).unwrap_err();
        assert_eq!(e.code(), 106);
        assert!(e.to_string().contains("/p.json"), "{e}");
    }
}
