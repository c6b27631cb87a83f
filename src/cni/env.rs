//! The CNI environment: read once, validated the way the spec and libcni's skel do.

use super::error::{Error, Kind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(Error::new(
                    Kind::InvalidEnvironment,
                    format!(
                    "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, VERSION, GC or STATUS"
                ),
                ))
            }
        })
    }

    /// The verb as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// The variables the spec requires for this verb (beyond CNI_COMMAND).
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Version | Command::Gc | Command::Status => &[],
        }
    }
}

/// The validated CNI environment of one invocation.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: Vec<String>,
    /// A test-only fault to inject into ADD (`ROS_MACVLAN_TEST_FAULT=kill@<step>` or
    /// `panic@<step>`), read here with the rest of the environment so that nothing deeper
    /// reads the process environment. Unset outside the crash tests.
    pub test_fault: Option<String>,
}

impl CniEnv {
    /// CNI_ARGS as received (pairs in order, repeats kept), for a delegated plugin.
    pub fn args_string(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Builds the environment from a lookup function (the process environment in main,
    /// a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv> {
        let command = match get("CNI_COMMAND") {
            Some(c) if !c.is_empty() => Command::parse(&c)?,
            _ => {
                return Err(Error::new(
                    Kind::InvalidEnvironment,
                    "required environment variable CNI_COMMAND is missing",
                ))
            }
        };
        let value = |k: &str| get(k).unwrap_or_default();
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| value(k).is_empty())
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                Kind::InvalidEnvironment,
                format!(
                    "required environment variables missing for {}: {}",
                    command.as_str(),
                    missing.join(", ")
                ),
            ));
        }
        let env = CniEnv {
            command,
            container_id: value("CNI_CONTAINERID"),
            netns: value("CNI_NETNS"),
            ifname: value("CNI_IFNAME"),
            args: parse_cni_args(&value("CNI_ARGS"))?,
            path: value("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            test_fault: get("ROS_MACVLAN_TEST_FAULT").filter(|f| !f.is_empty()),
        };
        if command.required().contains(&"CNI_CONTAINERID") {
            validate_container_id(&env.container_id)?;
            validate_ifname(&env.ifname)?;
        }
        Ok(env)
    }

    /// The last value of a CNI_ARGS key (runtimes may repeat a key; the last one wins).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `K1=V1;K2=V2`. A pair without `=` is refused: the spec defines no other form.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    Error::new(
                        Kind::InvalidEnvironment,
                        format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// The spec's container ID rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`. It also keeps the ID safe
/// to use in file names and file contents.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(Error::new(Kind::InvalidEnvironment, format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// `CNI_IFNAME` must be a Linux interface name (sys::netlink::ifname_problem).
pub fn validate_ifname(name: &str) -> Result<()> {
    match crate::sys::netlink::ifname_problem(name) {
        None => Ok(()),
        Some(p) => Err(Error::new(
            Kind::InvalidEnvironment,
            format!("CNI_IFNAME {name:?} is not a valid interface name: {p}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn full_add_env_parses() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path, vec!["/opt/cni/bin"]);
    }

    #[test]
    fn missing_variable_is_named() {
        let e = env(&ADD[..3]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_IFNAME"), "{e}");
        assert!(e.to_string().contains("CNI_PATH"), "{e}");
    }

    #[test]
    fn del_does_not_need_netns() {
        let mut v: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        v[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(env(&v).unwrap().command, Command::Del);
    }

    #[test]
    fn unknown_command_is_code_4() {
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code(), 4);
        assert_eq!(env(&[]).unwrap_err().code(), 4);
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("net1").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code(), 4, "{bad:?}");
        }
    }

    #[test]
    fn container_id_rules() {
        assert!(validate_container_id("a1_b.c-d").is_ok());
        for bad in ["", "-a", "../x", "a/b", "a\nb", "a b", "a\r"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code(), 4, "{bad:?}");
        }
    }

    #[test]
    fn cni_args_last_key_wins() {
        let mut v = ADD.to_vec();
        v.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=a;K8S_POD_NAME=b"));
        let e = env(&v).unwrap();
        assert_eq!(e.arg("K8S_POD_NAME"), Some("b"));
        assert_eq!(e.arg("MAC"), None);
        assert!(parse_cni_args("novalue").is_err());
    }
}
