//! The one error type of the plugin and the one table that maps its kinds to CNI error
//! codes. An error is a kind (what the runtime is told: code and details), a message
//! written for the operator (what is wrong and what to change), and the error it came
//! from, when there was one.

use serde_json::json;

/// What kind of failure, as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    IncompatibleVersion,
    UnsupportedField,
    ContainerUnknown,
    InvalidEnvironment,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    /// STATUS: the plugin cannot add attachments now (master missing or down).
    NotAvailable,
    /// STATUS: no address left to hand out.
    NoAddressesLeft,
    MasterNotFound,
    Netlink,
    RangeExhausted,
    IpamPlugin,
    CheckFailed,
    Netns,
    PolicyRefused,
    /// A bug (a panic): the reference skeleton's code for internal errors.
    Internal,
}

impl Kind {
    /// Every kind, for the tables that list them (README's error table is held equal to
    /// it by a test); `code_and_details` below is the one place a kind gets its code.
    pub const ALL: [Kind; 18] = [
        Kind::IncompatibleVersion,
        Kind::UnsupportedField,
        Kind::ContainerUnknown,
        Kind::InvalidEnvironment,
        Kind::Io,
        Kind::Decode,
        Kind::InvalidConfig,
        Kind::TryAgainLater,
        Kind::NotAvailable,
        Kind::NoAddressesLeft,
        Kind::MasterNotFound,
        Kind::Netlink,
        Kind::RangeExhausted,
        Kind::IpamPlugin,
        Kind::CheckFailed,
        Kind::Netns,
        Kind::PolicyRefused,
        Kind::Internal,
    ];

    /// The one table: each kind's CNI code and the short `details` line of its error JSON.
    /// Spec codes below 100, ours from 100. A `match`, so a new kind without a row does
    /// not compile.
    fn code_and_details(self) -> (u32, &'static str) {
        match self {
            Kind::IncompatibleVersion => (1, "incompatible CNI version"),
            Kind::UnsupportedField => (2, "unsupported field in network configuration"),
            Kind::ContainerUnknown => (3, "container unknown or does not exist"),
            Kind::InvalidEnvironment => (4, "invalid necessary environment variables"),
            Kind::Io => (5, "I/O failure"),
            Kind::Decode => (6, "failed to decode content"),
            Kind::InvalidConfig => (7, "invalid network config"),
            Kind::TryAgainLater => (11, "try again later"),
            Kind::NotAvailable => (50, "plugin not available"),
            Kind::NoAddressesLeft => (51, "plugin not available: no addresses left"),
            Kind::MasterNotFound => (100, "master interface not usable"),
            Kind::Netlink => (101, "kernel refused a netlink request"),
            Kind::RangeExhausted => (102, "address range exhausted"),
            Kind::IpamPlugin => (103, "delegated IPAM plugin failed"),
            Kind::CheckFailed => (104, "attachment differs from its result"),
            Kind::Netns => (105, "network namespace unusable"),
            Kind::PolicyRefused => (106, "refused by node policy"),
            Kind::Internal => (999, "internal error"),
        }
    }

    pub fn code(self) -> u32 {
        self.code_and_details().0
    }

    pub fn details(self) -> &'static str {
        self.code_and_details().1
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure to report to the runtime.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Error {
    kind: Kind,
    msg: String,
    /// A delegated plugin's own code and details, passed through as it answered them
    /// (whereabouts' 11 "try again later" must reach the runtime as 11).
    delegated: Option<(u32, String)>,
    #[source]
    source: Option<Source>,
}

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
            delegated: None,
            source: None,
        }
    }

    /// Keeps the error this one came from (for logs and callers; the runtime sees `msg`).
    pub fn with_source(mut self, source: impl Into<Source>) -> Error {
        self.source = Some(source.into());
        self
    }

    /// A delegated IPAM plugin's error object, passed through unchanged.
    pub fn delegated(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Error {
        Error {
            delegated: Some((code, details.into())),
            ..Error::new(Kind::IpamPlugin, msg)
        }
    }

    /// An I/O error on a named path.
    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Error {
        Error::new(Kind::Io, format!("{what}: {err}")).with_source(err)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The CNI error code: the kind's, or the delegated plugin's own.
    pub fn code(&self) -> u32 {
        self.delegated
            .as_ref()
            .map_or_else(|| self.kind.code(), |(code, _)| *code)
    }

    fn details(&self) -> &str {
        self.delegated
            .as_ref()
            .map_or_else(|| self.kind.details(), |(_, details)| details)
    }

    /// The error object the spec asks for on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.msg,
            "details": self.details(),
        })
    }

    /// Every failure a teardown met, as one error: the first's kind and code (what the
    /// runtime is told, and why it retries), every message in the order met.
    pub fn all(mut failures: Vec<Error>) -> Result<()> {
        if failures.len() <= 1 {
            return failures.pop().map_or(Ok(()), Err);
        }
        let msg = failures
            .iter()
            .map(|e| e.msg.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let first = failures.remove(0);
        Err(Error {
            msg: format!("{} failures: {msg}", failures.len() + 1),
            ..first
        })
    }

    /// Prefixes the message with where it happened, keeping the kind (and so the code). A
    /// delegated plugin's words reach the runtime unchanged.
    pub fn context(mut self, what: &str) -> Error {
        if self.delegated.is_none() {
            self.msg = format!("{what}: {}", self.msg);
        }
        self
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The one place netlink failures get their CNI code: a socket that cannot be opened in the
/// namespace is the namespace's problem (105); anything the kernel refused or never
/// answered is netlink's (101).
impl From<crate::sys::netlink::Error> for Error {
    fn from(e: crate::sys::netlink::Error) -> Error {
        use crate::sys::netlink::Error as Netlink;
        let kind = match e {
            Netlink::Socket { .. } | Netlink::Namespace(_) => Kind::Netns,
            Netlink::Refused { .. } | Netlink::Timeout { .. } | Netlink::Connection { .. } => {
                Kind::Netlink
            }
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

/// A namespace that is gone means nothing is left for the runtime to clean up (code 3);
/// any other namespace trouble is 105.
impl From<crate::sys::netns::Error> for Error {
    fn from(e: crate::sys::netns::Error) -> Error {
        let kind = match e {
            crate::sys::netns::Error::Missing { .. } => Kind::ContainerUnknown,
            _ => Kind::Netns,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

/// A path the config names that is refused (outside the allowed directories, a symlink or
/// a non-directory on its way, not a regular file) is the config's fault (code 7); the
/// node's I/O trouble on it is 5.
impl From<crate::sys::confine::Error> for Error {
    fn from(e: crate::sys::confine::Error) -> Error {
        use crate::sys::confine::Error as Confine;
        let kind = match e {
            Confine::Io { .. } => Kind::Io,
            Confine::Outside { .. }
            | Confine::NoFileName { .. }
            | Confine::Symlink { .. }
            | Confine::NotADirectory { .. }
            | Confine::NotARegularFile { .. }
            | Confine::NotReadable { .. }
            | Confine::TooLarge { .. } => Kind::InvalidConfig,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_and_codes_are_distinct() {
        for kind in Kind::ALL {
            assert_eq!(Kind::ALL.iter().filter(|k| **k == kind).count(), 1);
            let same_code = Kind::ALL.iter().filter(|k| k.code() == kind.code());
            assert_eq!(same_code.count(), 1, "{kind:?} shares its code");
        }
    }

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Kind::IncompatibleVersion.code(), 1);
        assert_eq!(Kind::InvalidConfig.code(), 7);
        assert_eq!(Kind::TryAgainLater.code(), 11);
        assert_eq!(Kind::NotAvailable.code(), 50);
        assert_eq!(Kind::NoAddressesLeft.code(), 51);
        assert_eq!(Kind::Internal.code(), 999);
    }

    /// The error table of docs/protocol.md lists exactly the kinds' codes.
    #[test]
    fn docs_list_the_same_codes() {
        let doc = include_str!("../../docs/protocol.md");
        let section = doc
            .split("\n## Errors")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("docs/protocol.md has an Errors section");
        let mut listed: Vec<u32> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        listed.sort();
        let mut ours: Vec<u32> = Kind::ALL.iter().map(|k| k.code()).collect();
        ours.sort();
        assert_eq!(listed, ours);
    }

    #[test]
    fn a_teardown_reports_every_failure_with_the_first_ones_code() {
        assert!(Error::all(Vec::new()).is_ok());
        let one = Error::all(vec![Error::new(Kind::Netlink, "a")]).unwrap_err();
        assert_eq!((one.code(), one.to_string().as_str()), (101, "a"));
        let all = Error::all(vec![
            Error::new(Kind::Netlink, "retire: busy"),
            Error::new(Kind::Io, "release: disk full"),
        ])
        .unwrap_err();
        assert_eq!(all.code(), 101);
        assert_eq!(
            all.to_string(),
            "2 failures: retire: busy; release: disk full"
        );
    }

    #[test]
    fn context_keeps_the_code_and_the_source() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = Error::io("open x", io).context("ipam");
        assert_eq!(e.code(), 5);
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::new(Kind::InvalidConfig, "bad").context("ipam");
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["msg"], "ipam: bad");
        assert_eq!(j["details"], "invalid network config");
    }

    /// A path the config names that leads where it may not is refused with code 7 and a
    /// message naming the key, the allowed directories and how to widen them; it keeps the
    /// error it came from. (The store's errors: ipam::store's tests.)
    #[test]
    fn confined_path_errors_reach_the_runtime_as_before() {
        use crate::sys::confine::Roots;

        let roots = Roots::new(
            vec!["/var/lib/cni".into(), "/run/cni".into()],
            0o750,
            "ask the cluster admin",
        );
        let e = Error::from(roots.confine("ipam.dataDir", "/etc/x").unwrap_err());
        assert!(std::error::Error::source(&e).is_some());
        let j = e.to_json("1.0.0");
        assert_eq!(
            (j["code"].as_u64(), j["msg"].as_str(), j["details"].as_str()),
            (
                Some(7),
                Some(
                    "ipam.dataDir \"/etc/x\" is outside the allowed directories; allowed \
                     directories: /var/lib/cni, /run/cni; use a path below one of them, or ask \
                     the cluster admin"
                ),
                Some("invalid network config")
            )
        );
    }

    #[test]
    fn a_delegated_error_passes_through_unchanged() {
        let e = Error::delegated(11, "leader election", "retry").context("ipam");
        let j = e.to_json("1.0.0");
        assert_eq!(
            (j["code"].as_u64(), j["msg"].as_str(), j["details"].as_str()),
            (Some(11), Some("leader election"), Some("retry"))
        );
    }
}
