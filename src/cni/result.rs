//! The result of ADD, kept in one internal form and written out in the shape of whichever
//! spec version the runtime asked for. Also parses results (prevResult, delegated IPAM).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use super::error::{Error, Kind, Result};
use super::version::{ResultShape, Version};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the container; `None` for host interfaces.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// The result as the given spec version writes it.
    pub fn to_json(&self, version: &Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        match version.shape() {
            ResultShape::Legacy => self.write_legacy(&mut out),
            shape => self.write_current(shape, &mut out),
        }
        out.insert("dns".into(), self.dns.to_json());
        Value::Object(out)
    }

    fn write_legacy(&self, out: &mut Map<String, Value>) {
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|i| i.address.is_ipv4() == v4) else {
                continue;
            };
            let mut obj = Map::new();
            obj.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                obj.insert("gateway".into(), json!(gw.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv4() == v4)
                .map(route_json)
                .collect();
            if !routes.is_empty() {
                obj.insert("routes".into(), Value::Array(routes));
            }
            out.insert(key.into(), Value::Object(obj));
        }
    }

    fn write_current(&self, shape: ResultShape, out: &mut Map<String, Value>) {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                if let (ResultShape::V11, Some(mtu)) = (shape, i.mtu) {
                    o.insert("mtu".into(), json!(mtu));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if shape == ResultShape::Current03 {
                    let v = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(v));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self.routes.iter().map(route_json).collect();
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
    }

    /// Parses a result of any version: the `ip4`/`ip6` form or the `ips` form.
    pub fn from_json(v: &Value) -> Result<CniResult> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::new(Kind::Decode, "a CNI result must be a JSON object"))?;
        let mut result = CniResult::default();
        if let Some(ifaces) = obj.get("interfaces") {
            for i in as_array(ifaces, "interfaces")? {
                result.interfaces.push(Interface {
                    name: str_field(i, "name")?.unwrap_or_default(),
                    mac: str_field(i, "mac")?.unwrap_or_default(),
                    sandbox: str_field(i, "sandbox")?,
                    mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                });
            }
        }
        if let Some(ips) = obj.get("ips") {
            for ip in as_array(ips, "ips")? {
                result.ips.push(IpConfig {
                    address: parse_net(
                        &str_field(ip, "address")?.unwrap_or_default(),
                        "ips[].address",
                    )?,
                    gateway: opt_ip(ip, "gateway")?,
                    interface: ip
                        .get("interface")
                        .and_then(Value::as_u64)
                        .map(|i| i as usize),
                });
            }
        }
        for key in ["ip4", "ip6"] {
            if let Some(legacy) = obj.get(key) {
                result.ips.push(IpConfig {
                    address: parse_net(&str_field(legacy, "ip")?.unwrap_or_default(), key)?,
                    gateway: opt_ip(legacy, "gateway")?,
                    interface: None,
                });
                if let Some(routes) = legacy.get("routes") {
                    result.routes.extend(parse_routes(routes)?);
                }
            }
        }
        if let Some(routes) = obj.get("routes") {
            result.routes.extend(parse_routes(routes)?);
        }
        if let Some(dns) = obj.get("dns") {
            result.dns = Dns::from_json(dns);
        }
        Ok(result)
    }
}

/// A route as IPAM gave it. No `scope` in 1.1 results: a route without `gw` is installed
/// through the gateway of its family (see `macvlan::add`), with the kernel's default scope.
fn route_json(r: &Route) -> Value {
    let mut o = Map::new();
    o.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        o.insert("gw".into(), json!(gw.to_string()));
    }
    Value::Object(o)
}

impl Dns {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        if !self.nameservers.is_empty() {
            o.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            o.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            o.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            o.insert("options".into(), json!(self.options));
        }
        Value::Object(o)
    }

    pub fn from_json(v: &Value) -> Dns {
        let list = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Dns {
            nameservers: list("nameservers"),
            domain: v.get("domain").and_then(Value::as_str).map(str::to_owned),
            search: list("search"),
            options: list("options"),
        }
    }
}

fn as_array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| Error::new(Kind::Decode, format!("result field {what} must be a list")))
}

fn str_field(v: &Value, key: &str) -> Result<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::new(
            Kind::Decode,
            format!("result field {key} must be a string"),
        )),
    }
}

fn opt_ip(v: &Value, key: &str) -> Result<Option<IpAddr>> {
    str_field(v, key)?
        .map(|s| {
            s.parse().map_err(|_| {
                Error::new(
                    Kind::Decode,
                    format!("result field {key}: {s:?} is not an IP address"),
                )
            })
        })
        .transpose()
}

fn parse_net(s: &str, what: &str) -> Result<IpNetwork> {
    s.parse().map_err(|_| {
        Error::new(
            Kind::Decode,
            format!("result field {what}: {s:?} is not an address/prefix"),
        )
    })
}

fn parse_routes(v: &Value) -> Result<Vec<Route>> {
    as_array(v, "routes")?
        .iter()
        .map(|r| {
            Ok(Route {
                dst: parse_net(&str_field(r, "dst")?.unwrap_or_default(), "routes[].dst")?,
                gw: opt_ip(r, "gw")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "net1".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: Some("/var/run/netns/p".into()),
                mtu: Some(1500),
            }],
            ips: vec![IpConfig {
                address: "198.51.100.160/24".parse().unwrap(),
                gateway: Some("198.51.100.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("198.51.100.1".parse().unwrap()),
                },
                Route {
                    dst: "203.0.113.0/24".parse().unwrap(),
                    gw: None,
                },
            ],
            dns: Dns::default(),
        }
    }

    fn render(v: &str) -> Value {
        sample().to_json(&Version::parse(Some(v)).unwrap())
    }

    #[test]
    fn legacy_shape() {
        let j = render("0.2.0");
        assert_eq!(j["ip4"]["ip"], "198.51.100.160/24");
        assert_eq!(j["ip4"]["gateway"], "198.51.100.1");
        assert_eq!(j["ip4"]["routes"][0]["gw"], "198.51.100.1");
        assert!(j.get("interfaces").is_none() && j.get("ips").is_none());
    }

    #[test]
    fn shape_03_has_ip_version() {
        let j = render("0.3.1");
        assert_eq!(j["ips"][0]["version"], "4");
        assert_eq!(j["ips"][0]["interface"], 0);
        assert_eq!(j["interfaces"][0]["sandbox"], "/var/run/netns/p");
        assert!(j["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn shape_1_has_no_ip_version_and_11_adds_mtu() {
        let j = render("1.0.0");
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][0].get("mtu").is_none());
        let j = render("1.1.0");
        assert_eq!(j["interfaces"][0]["mtu"], 1500);
        assert!(j["routes"][1].get("scope").is_none());
    }

    #[test]
    fn parses_every_shape_back() {
        for v in ["0.1.0", "0.3.1", "1.0.0", "1.1.0"] {
            let back = CniResult::from_json(&render(v)).unwrap();
            assert_eq!(back.ips[0].address, sample().ips[0].address, "{v}");
            assert_eq!(back.routes.len(), 2, "{v}");
        }
    }

    #[test]
    fn garbage_is_decode_error() {
        for bad in [
            json!(1),
            json!({"ips": 3}),
            json!({"ips": [{"address": "x"}]}),
        ] {
            assert_eq!(CniResult::from_json(&bad).unwrap_err().code(), 6);
        }
    }
}
