//! CNI spec versions: which we speak and how a result is shaped for each.

use super::error::{Error, Kind, Result};

pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The version the plugin answers in when a request names none it could use.
pub const LATEST: &str = "1.1.0";

/// A config without `cniVersion` is a 0.1.0 config (what Multus passes for a NAD without one).
pub const IMPLIED: &str = "0.1.0";

/// The shape of the result object, which changed twice in the spec's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResultShape {
    /// 0.1.0 and 0.2.0: `ip4` / `ip6` objects.
    Legacy,
    /// 0.3.x and 0.4.0: `interfaces`, `ips[]` with `version`.
    Current03,
    /// 1.0.0: `ips[]` without `version`.
    V1,
    /// 1.1.0: 1.0 plus interface `mtu` and route `scope`.
    V11,
}

/// A version the plugin supports, as the config asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(&'static str);

impl Version {
    /// Validates the config's `cniVersion` (absent means 0.1.0).
    pub fn parse(requested: Option<&str>) -> Result<Version> {
        let requested = requested.unwrap_or(IMPLIED);
        SUPPORTED
            .iter()
            .find(|v| **v == requested)
            .map(|v| Version(v))
            .ok_or_else(|| {
                Error::new(
                    Kind::IncompatibleVersion,
                    format!(
                        "cniVersion {requested:?} is not supported; use one of {}",
                        SUPPORTED.join(", ")
                    ),
                )
            })
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    pub fn shape(&self) -> ResultShape {
        match self.0 {
            "0.1.0" | "0.2.0" => ResultShape::Legacy,
            "0.3.0" | "0.3.1" | "0.4.0" => ResultShape::Current03,
            "1.0.0" => ResultShape::V1,
            _ => ResultShape::V11,
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn supports_check(&self) -> bool {
        self.0 == "0.4.0" || self.0.starts_with('1')
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn supports_gc_and_status(&self) -> bool {
        self.0 == "1.1.0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_version_is_legacy() {
        let v = Version::parse(None).unwrap();
        assert_eq!(v.as_str(), "0.1.0");
        assert_eq!(v.shape(), ResultShape::Legacy);
    }

    #[test]
    fn shapes_per_version() {
        let shape = |s| Version::parse(Some(s)).unwrap().shape();
        assert_eq!(shape("0.2.0"), ResultShape::Legacy);
        assert_eq!(shape("0.3.1"), ResultShape::Current03);
        assert_eq!(shape("0.4.0"), ResultShape::Current03);
        assert_eq!(shape("1.0.0"), ResultShape::V1);
        assert_eq!(shape("1.1.0"), ResultShape::V11);
    }

    #[test]
    fn unknown_version_is_code_1() {
        let e = Version::parse(Some("9.9.9")).unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_string().contains("9.9.9"));
    }

    #[test]
    fn check_needs_0_4() {
        assert!(!Version::parse(Some("0.3.1")).unwrap().supports_check());
        assert!(Version::parse(Some("0.4.0")).unwrap().supports_check());
        assert!(Version::parse(Some("1.1.0")).unwrap().supports_check());
    }
}
