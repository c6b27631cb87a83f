//! The node's policy: which master interfaces and address ranges attachments may use, and
//! which directories beyond the defaults the paths of a config may lead into.
//! NetworkAttachmentDefinitions are namespaced and any namespace admin may write one, while
//! the plugin runs as root on the node; the policy file (installed by the DaemonSet from a
//! ConfigMap) lets the cluster admin bound what such a config can reach. No file: every
//! master and range is allowed, and paths only the default directories.
//!
//! The same file holds the node's other settings the agent reconciles: `hostAccess`, the
//! shims through which the node's own processes reach its pods (see `host_access`).

use std::net::IpAddr;
use std::path::{Component, PathBuf};

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::cni::{Error, Kind, Result};
use crate::sys::confine::{Readable, Roots};
use crate::sys::netlink::MacvlanMode;

pub const DEFAULT_POLICY_FILE: &str = "/etc/cni/ros-macvlan/policy.json";

/// Where `logFile` may lead with no policy; the plugin creates it (mode 0750) when needed.
pub const DEFAULT_LOG_DIRS: &[&str] = &["/var/log/ros-macvlan"];
/// Where host-local's `dataDir` may lead with no policy: they hold the reference plugin's
/// default, /var/lib/cni/networks.
pub const DEFAULT_DATA_DIRS: &[&str] = &["/var/lib/cni", "/run/cni"];
const LOG_DIR_MODE: u32 = 0o750;
/// As the reference host-local creates its store.
pub const DATA_DIR_MODE: u32 = 0o755;
/// Where `agentSocket` may lead: the node agent's own directory (its socket and the
/// plugin's membership records), only root's.
pub const DEFAULT_AGENT_DIRS: &[&str] = &["/run/ros-macvlan"];
pub const AGENT_DIR_MODE: u32 = 0o700;

/// The agent's directory, as the directory of a socket the operator named (the agent's
/// `--socket`, doctor's): trusted, not confined, since no tenant's config named it.
pub fn agent_dir(agent_socket: &std::path::Path) -> crate::sys::confine::ConfinedPath {
    let dir = agent_socket.parent().unwrap_or(std::path::Path::new("/"));
    crate::sys::confine::ConfinedPath::trusted("agent socket", dir, AGENT_DIR_MODE)
}
/// The files host-local's `resolvConf` may name with no policy: the node's own resolver
/// configuration, where Debian, systemd-resolved and most distributions keep it.
pub const DEFAULT_RESOLV_CONF_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/run/systemd/resolve/resolv.conf",
    "/run/systemd/resolve/stub-resolv.conf",
];
/// The modes a config may ask for with no policy. `passthru` hands the whole master to one
/// pod (its MAC, its traffic): only the node's admin can allow it, on a dedicated interface.
pub const DEFAULT_MODES: &[MacvlanMode] =
    &[MacvlanMode::Bridge, MacvlanMode::Private, MacvlanMode::Vepa];

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Allowed master interface names; a trailing `*` matches a prefix (`enp*`).
    masters: Option<Vec<String>>,
    /// Prefixes every address handed to a pod must lie in.
    ranges: Option<Vec<IpNetwork>>,
    /// The macvlan modes allowed (replacing DEFAULT_MODES): `passthru` must be listed here.
    modes: Option<Vec<String>>,
    /// Directories host-local's `resolvConf` may name a file in, besides the node's own
    /// DEFAULT_RESOLV_CONF_FILES.
    resolv_conf_dirs: Option<Vec<PathBuf>>,
    /// Directories `logFile` may lead into besides DEFAULT_LOG_DIRS.
    log_dirs: Option<Vec<PathBuf>>,
    /// Directories host-local's `dataDir` may lead into besides DEFAULT_DATA_DIRS.
    data_dirs: Option<Vec<PathBuf>>,
    /// Host access the node agent keeps in place (`ros-macvlan host-access`, one per master).
    #[serde(default)]
    host_access: Vec<crate::node::host_access::Spec>,
    /// How many Zenoh relays (routers of the node) one pod may have; 1 when not said.
    zenoh_relays_per_pod: Option<usize>,
    /// How many one Kubernetes namespace may have; half the routers when not said.
    zenoh_relays_per_namespace: Option<usize>,
    #[serde(skip)]
    path: PathBuf,
}

impl Policy {
    /// The node's policy; ROS_MACVLAN_POLICY_FILE names another file. A file that exists but
    /// cannot be read or parsed refuses everything: a broken policy must not mean no policy.
    pub fn load() -> Result<Option<Policy>> {
        Policy::read(&policy_file())
    }

    /// The policy in `path`, as `load` reads it.
    pub fn read(path: &std::path::Path) -> Result<Option<Policy>> {
        let path = path.to_owned();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    Kind::PolicyRefused,
                    format!(
                        "node policy {} cannot be read ({e}); fix or remove it",
                        path.display()
                    ),
                ))
            }
        };
        Policy::parse(&bytes, path).map(Some)
    }

    /// The policy file's contents, read from `path`: the one parser of what a node's admin
    /// (or a broken ConfigMap) writes there.
    pub fn parse(bytes: &[u8], path: PathBuf) -> Result<Policy> {
        let mut policy: Policy = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(Kind::PolicyRefused, format!(
                "node policy {} is invalid ({e}); it takes {{\"masters\": [...], \"ranges\": [...], \"modes\": [...], \"logDirs\": [...], \"dataDirs\": [...], \"resolvConfDirs\": [...], \"hostAccess\": [...]}}",
                path.display()
            ))
        })?;
        policy.path = path;
        policy.check_dirs()?;
        policy.allowed_modes()?;
        Ok(policy)
    }

    /// The modes this policy allows; an unknown name in the list refuses the policy.
    fn allowed_modes(&self) -> Result<Vec<MacvlanMode>> {
        match &self.modes {
            None => Ok(DEFAULT_MODES.to_vec()),
            Some(names) => names
                .iter()
                .map(|n| {
                    MacvlanMode::parse(n).map_err(|e| {
                        Error::new(
                            Kind::PolicyRefused,
                            format!("node policy {}: modes: {e}", self.path.display()),
                        )
                    })
                })
                .collect(),
        }
    }

    /// Whether `name` is listed in `masters` by its exact name (not by a prefix): the
    /// node's admin vouching for one interface.
    pub fn names_master(&self, name: &str) -> bool {
        self.masters.iter().flatten().any(|m| m == name)
    }

    /// The file this policy was read from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn host_access(&self) -> &[crate::node::host_access::Spec] {
        &self.host_access
    }

    /// `zenohRelaysPerPod`, when the policy says it.
    pub fn zenoh_relays_per_pod(&self) -> Option<usize> {
        self.zenoh_relays_per_pod
    }

    /// `zenohRelaysPerNamespace`, when the policy says it.
    pub fn zenoh_relays_per_namespace(&self) -> Option<usize> {
        self.zenoh_relays_per_namespace
    }

    /// The directories listed must say plainly where they are.
    fn check_dirs(&self) -> Result<()> {
        let mut dirs = self
            .log_dirs
            .iter()
            .chain(&self.data_dirs)
            .chain(&self.resolv_conf_dirs)
            .flatten();
        match dirs.find(|d| !d.is_absolute() || d.components().any(|c| c == Component::ParentDir)) {
            Some(bad) => Err(Error::new(Kind::PolicyRefused, format!(
                "node policy {} lists the directory {:?}: directories must be absolute paths without '..'",
                self.path.display(),
                bad.display()
            ))),
            None => Ok(()),
        }
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
            Err(Error::new(Kind::PolicyRefused, format!(
                "master {master} is not allowed by node policy {} (allowed: {}); ask the cluster admin or use an allowed master",
                self.path.display(),
                allowed.join(", ")
            )))
        }
    }

    pub fn check_address(&self, ip: IpAddr) -> Result<()> {
        if let Some(h) = self
            .host_access
            .iter()
            .find(|h| IpAddr::V4(h.address.ip()) == ip)
        {
            return Err(Error::new(Kind::PolicyRefused, format!(
                "address {ip} is the host-access shim's on {} (node policy {}); leave it out of the attachment's range",
                h.master,
                self.path.display()
            )));
        }
        let Some(allowed) = &self.ranges else {
            return Ok(());
        };
        if allowed.iter().any(|r| r.contains(ip)) {
            Ok(())
        } else {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            Err(Error::new(
                Kind::PolicyRefused,
                format!(
                    "address {ip} is outside the ranges node policy {} allows ({})",
                    self.path.display(),
                    list.join(", ")
                ),
            ))
        }
    }
}

/// Whether the node allows `mode`: DEFAULT_MODES, or the policy's `modes`.
pub fn check_mode(policy: Option<&Policy>, mode: MacvlanMode) -> Result<()> {
    let allowed = match policy {
        Some(p) => p.allowed_modes()?,
        None => DEFAULT_MODES.to_vec(),
    };
    if allowed.contains(&mode) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
    let file = policy.map_or_else(policy_file, |p| p.path.clone());
    let why = if mode == MacvlanMode::Passthru {
        " (passthru hands the whole master, its MAC and all its traffic, to one pod)"
    } else {
        ""
    };
    Err(Error::new(Kind::PolicyRefused, format!(
        "mode {} is not allowed on this node{why}; allowed: {}. To allow it on a dedicated interface, the cluster admin lists \"{}\" under \"modes\" in the node policy {}",
        mode.as_str(),
        names.join(", "),
        mode.as_str(),
        file.display()
    )))
}

/// The policy file: ROS_MACVLAN_POLICY_FILE, or the default.
pub fn policy_file() -> PathBuf {
    std::env::var_os("ROS_MACVLAN_POLICY_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_FILE))
}

/// The directories the paths of a config may lead into on this node.
#[derive(Debug, Clone)]
pub struct AllowedDirs {
    /// For `logFile`.
    pub logs: Roots,
    /// For host-local's `ipam.dataDir`.
    pub data: Roots,
    /// For `agentSocket`: the agent's directory only; the node policy does not widen it.
    pub agent: Roots,
    /// For host-local's `resolvConf`.
    pub resolv_conf: Readable,
}

impl AllowedDirs {
    /// The defaults, widened by what `policy` lists.
    pub fn new(policy: Option<&Policy>) -> AllowedDirs {
        let file = policy.map_or_else(policy_file, |p| p.path.clone());
        let roots = |defaults: &[&str], extra: Option<&Vec<PathBuf>>, key: &str, mode| {
            let dirs = defaults
                .iter()
                .map(PathBuf::from)
                .chain(extra.into_iter().flatten().cloned())
                .collect();
            let hint = format!(
                "have the cluster admin list another under \"{key}\" in the node policy {}",
                file.display()
            );
            Roots::new(dirs, mode, hint)
        };
        AllowedDirs {
            logs: roots(
                DEFAULT_LOG_DIRS,
                policy.and_then(|p| p.log_dirs.as_ref()),
                "logDirs",
                LOG_DIR_MODE,
            ),
            data: roots(
                DEFAULT_DATA_DIRS,
                policy.and_then(|p| p.data_dirs.as_ref()),
                "dataDirs",
                DATA_DIR_MODE,
            ),
            agent: Roots::new(
                DEFAULT_AGENT_DIRS.iter().map(PathBuf::from).collect(),
                AGENT_DIR_MODE,
                "point it at the node agent's socket (ros-macvlan agent --socket)",
            ),
            resolv_conf: Readable::new(
                DEFAULT_RESOLV_CONF_FILES
                    .iter()
                    .map(PathBuf::from)
                    .collect(),
                roots(
                    &[],
                    policy.and_then(|p| p.resolv_conf_dirs.as_ref()),
                    "resolvConfDirs",
                    DATA_DIR_MODE,
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
    fn listed_dirs_widen_the_defaults() {
        let p = policy(r#"{"logDirs": ["/srv/logs"], "dataDirs": ["/srv/ipam"]}"#);
        let a = AllowedDirs::new(Some(&p));
        assert_eq!(
            a.logs.dirs(),
            [Path::new("/var/log/ros-macvlan"), Path::new("/srv/logs")]
        );
        assert_eq!(
            a.data.dirs(),
            [
                Path::new("/var/lib/cni"),
                Path::new("/run/cni"),
                Path::new("/srv/ipam")
            ]
        );
        let e = a.data.confine("ipam.dataDir", "/etc/x").unwrap_err();
        assert!(
            e.to_string().contains("/var/lib/cni, /run/cni, /srv/ipam")
                && e.to_string().contains("\"dataDirs\""),
            "{e}"
        );
        assert_eq!(
            AllowedDirs::new(None).logs.dirs(),
            [Path::new("/var/log/ros-macvlan")]
        );
        assert!(p.check_dirs().is_ok());
        for bad in [
            r#"{"logDirs": ["logs"]}"#,
            r#"{"dataDirs": ["/var/lib/cni/../.."]}"#,
        ] {
            let refused = Policy::parse(bad.as_bytes(), PathBuf::from("policy.json"));
            assert_eq!(refused.unwrap_err().code(), 106, "{bad}");
        }
    }

    #[test]
    fn the_host_access_shims_address_is_never_a_pods() {
        let p = policy(
            r#"{"hostAccess": [{"master": "eth0", "address": "198.51.100.3/24", "podRanges": ["198.51.100.160/27"]}]}"#,
        );
        assert_eq!(p.host_access().len(), 1);
        let e = p
            .check_address("198.51.100.3".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("shim"), "{e}");
        assert!(p.check_address("198.51.100.4".parse().unwrap()).is_ok());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Policy::parse(br#"{"master": ["eth0"]}"#, PathBuf::from("/p.json")).unwrap_err();
        assert_eq!(e.code(), 106);
        assert!(e.to_string().contains("/p.json"), "{e}");
    }
}
