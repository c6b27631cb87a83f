//! The one error type of the plugin and the one table that maps it to CNI error codes.

use serde_json::json;

/// Every failure the plugin can report. Each variant carries a message written for the
/// operator: what is wrong and what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("{0}")]
    UnsupportedField(String),
    #[error("{0}")]
    ContainerUnknown(String),
    #[error("{0}")]
    InvalidEnvironment(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    TryAgainLater(String),
    /// STATUS: the plugin cannot add attachments now (master missing or down).
    #[error("{0}")]
    NotAvailable(String),
    /// STATUS: no address left to hand out.
    #[error("{0}")]
    NoAddressesLeft(String),
    #[error("{0}")]
    MasterNotFound(String),
    #[error("{0}")]
    Netlink(String),
    #[error("{0}")]
    RangeExhausted(String),
    #[error("{0}")]
    IpamPlugin(String),
    #[error("{0}")]
    CheckFailed(String),
    #[error("{0}")]
    Netns(String),
    #[error("{0}")]
    PolicyRefused(String),
    /// A bug (a panic): the reference skeleton's code for internal errors.
    #[error("{0}")]
    Internal(String),
    /// A delegated IPAM plugin's own error, passed through as it answered (whereabouts' 11
    /// "try again later" must reach the runtime as 11).
    #[error("{msg}")]
    Delegated {
        code: u32,
        msg: String,
        details: String,
    },
}

/// Our own codes (100 and up); README lists them.
pub const CODE_MASTER_NOT_FOUND: u32 = 100;
pub const CODE_NETLINK: u32 = 101;
pub const CODE_RANGE_EXHAUSTED: u32 = 102;
pub const CODE_IPAM_PLUGIN: u32 = 103;
pub const CODE_CHECK_FAILED: u32 = 104;
pub const CODE_NETNS: u32 = 105;
pub const CODE_POLICY_REFUSED: u32 = 106;
pub const CODE_INTERNAL: u32 = 999;

impl Error {
    /// The CNI error code of this error (spec codes below 100, ours from 100).
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => 1,
            Error::UnsupportedField(_) => 2,
            Error::ContainerUnknown(_) => 3,
            Error::InvalidEnvironment(_) => 4,
            Error::Io(_) => 5,
            Error::Decode(_) => 6,
            Error::InvalidConfig(_) => 7,
            Error::TryAgainLater(_) => 11,
            Error::NotAvailable(_) => 50,
            Error::NoAddressesLeft(_) => 51,
            Error::MasterNotFound(_) => CODE_MASTER_NOT_FOUND,
            Error::Netlink(_) => CODE_NETLINK,
            Error::RangeExhausted(_) => CODE_RANGE_EXHAUSTED,
            Error::IpamPlugin(_) => CODE_IPAM_PLUGIN,
            Error::CheckFailed(_) => CODE_CHECK_FAILED,
            Error::Netns(_) => CODE_NETNS,
            Error::PolicyRefused(_) => CODE_POLICY_REFUSED,
            Error::Internal(_) => CODE_INTERNAL,
            Error::Delegated { code, .. } => *code,
        }
    }

    /// The short `details` line of the error JSON: which kind of failure this is.
    fn details(&self) -> &str {
        match self {
            Error::IncompatibleVersion(_) => "incompatible CNI version",
            Error::UnsupportedField(_) => "unsupported field in network configuration",
            Error::ContainerUnknown(_) => "container unknown or does not exist",
            Error::InvalidEnvironment(_) => "invalid necessary environment variables",
            Error::Io(_) => "I/O failure",
            Error::Decode(_) => "failed to decode content",
            Error::InvalidConfig(_) => "invalid network config",
            Error::TryAgainLater(_) => "try again later",
            Error::NotAvailable(_) => "plugin not available",
            Error::NoAddressesLeft(_) => "plugin not available: no addresses left",
            Error::MasterNotFound(_) => "master interface not usable",
            Error::Netlink(_) => "kernel refused a netlink request",
            Error::RangeExhausted(_) => "address range exhausted",
            Error::IpamPlugin(_) => "delegated IPAM plugin failed",
            Error::CheckFailed(_) => "attachment differs from its result",
            Error::Netns(_) => "network namespace unusable",
            Error::PolicyRefused(_) => "refused by node policy",
            Error::Internal(_) => "internal error",
            Error::Delegated { details, .. } => details,
        }
    }

    /// The error object the spec asks for on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": self.details(),
        })
    }

    /// Prefixes the message with where it happened, keeping the kind (and so the code).
    pub fn context(self, what: &str) -> Error {
        let wrap = |m: String| format!("{what}: {m}");
        match self {
            Error::IncompatibleVersion(m) => Error::IncompatibleVersion(wrap(m)),
            Error::UnsupportedField(m) => Error::UnsupportedField(wrap(m)),
            Error::ContainerUnknown(m) => Error::ContainerUnknown(wrap(m)),
            Error::InvalidEnvironment(m) => Error::InvalidEnvironment(wrap(m)),
            Error::Io(m) => Error::Io(wrap(m)),
            Error::Decode(m) => Error::Decode(wrap(m)),
            Error::InvalidConfig(m) => Error::InvalidConfig(wrap(m)),
            Error::TryAgainLater(m) => Error::TryAgainLater(wrap(m)),
            Error::NotAvailable(m) => Error::NotAvailable(wrap(m)),
            Error::NoAddressesLeft(m) => Error::NoAddressesLeft(wrap(m)),
            Error::MasterNotFound(m) => Error::MasterNotFound(wrap(m)),
            Error::Netlink(m) => Error::Netlink(wrap(m)),
            Error::RangeExhausted(m) => Error::RangeExhausted(wrap(m)),
            Error::IpamPlugin(m) => Error::IpamPlugin(wrap(m)),
            Error::CheckFailed(m) => Error::CheckFailed(wrap(m)),
            Error::Netns(m) => Error::Netns(wrap(m)),
            Error::PolicyRefused(m) => Error::PolicyRefused(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
            // The delegate's words reach the runtime unchanged.
            delegated @ Error::Delegated { .. } => delegated,
        }
    }

    /// An I/O error on a named path.
    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Error {
        Error::Io(format!("{what}: {err}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec_table() {
        assert_eq!(Error::IncompatibleVersion(String::new()).code(), 1);
        assert_eq!(Error::UnsupportedField(String::new()).code(), 2);
        assert_eq!(Error::ContainerUnknown(String::new()).code(), 3);
        assert_eq!(Error::InvalidEnvironment(String::new()).code(), 4);
        assert_eq!(Error::Io(String::new()).code(), 5);
        assert_eq!(Error::Decode(String::new()).code(), 6);
        assert_eq!(Error::InvalidConfig(String::new()).code(), 7);
        assert_eq!(Error::TryAgainLater(String::new()).code(), 11);
        assert_eq!(Error::NotAvailable(String::new()).code(), 50);
        assert_eq!(Error::NoAddressesLeft(String::new()).code(), 51);
        assert!(Error::MasterNotFound(String::new()).code() >= 100);
    }

    #[test]
    fn context_keeps_the_code() {
        let e = Error::InvalidConfig("bad".into()).context("ipam");
        assert_eq!(e.code(), 7);
        assert_eq!(e.to_string(), "ipam: bad");
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["msg"], "ipam: bad");
    }
}
