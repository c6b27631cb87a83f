//! The built-in host-local IPAM: the reference plugin's keys and allocation rules over the
//! shared on-disk store.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::range::{Range, RangeSet, RawRange};
use super::store::{ClaimRecord, Store};
use crate::cni::result::{Dns, IpConfig, Route};
use crate::cni::{Error, Kind, Result};
use crate::sys::confine::{ConfinedPath, Readable, Roots};
use crate::sys::stable_hash::stable_hash;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// How much of a `resolvConf` is read at most; a larger file is refused.
pub const RESOLV_CONF_LIMIT: u64 = 64 * 1024;
/// Bounds on the lists of the `ipam` object: every entry costs work on each ADD (a range
/// walked, a route installed), and a config is a tenant's.
pub const MAX_RANGE_SETS: usize = 8;
pub const MAX_RANGES_PER_SET: usize = 16;
pub const MAX_ROUTES: usize = 64;

/// What the caller knows of a good pick beyond the ranges: addresses found in use on the
/// LAN, and the node's seed for where a store that never allocated starts
/// (`RangeSet::spread_resume_point`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Hints<'a> {
    pub avoid: &'a [IpAddr],
    pub node_seed: Option<u64>,
    /// The identity of the config the claim is made under, kept in its record: a network's
    /// `name` and `dataDir` are a tenant's to choose, so another config may share the store,
    /// and GC releases only the claims of its own config.
    pub config: Option<&'a str>,
}

/// The attachment a claim is made for, and what tells later whether its pod still exists.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: &'a str,
    pub pod_namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawHostLocal {
    ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(flatten)]
    legacy: RawRange,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HostLocalConf {
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// Confined to the directories the node allows for it.
    pub data_dir: ConfinedPath,
    /// `resolvConf`, read at ADD from where the node allows (`Readable`).
    pub resolv_conf: Option<(String, Readable)>,
}

impl HostLocalConf {
    /// Validates the `ipam` object; `dataDir` must lie in one of `data_roots`, `resolvConf`
    /// be a file `readable` allows.
    pub fn parse(ipam: &Value, data_roots: &Roots, readable: &Readable) -> Result<HostLocalConf> {
        // The lists' lengths are bounded before anything of them is decoded.
        let len = |v: Option<&Value>| v.and_then(Value::as_array).map_or(0, Vec::len);
        bound(
            "ipam.ranges",
            len(ipam.get("ranges")),
            MAX_RANGE_SETS,
            "range sets",
        )?;
        bound("ipam.routes", len(ipam.get("routes")), MAX_ROUTES, "routes")?;
        let sets = ipam.get("ranges").and_then(Value::as_array);
        for (i, set) in sets.into_iter().flatten().enumerate() {
            let key = format!("ipam.ranges[{i}]");
            bound(&key, len(Some(set)), MAX_RANGES_PER_SET, "ranges")?;
        }
        let raw: RawHostLocal = serde_json::from_value(ipam.clone())
            .map_err(|e| Error::new(Kind::InvalidConfig, format!("ipam: {e}")))?;
        let raw_sets: Vec<Vec<RawRange>> = match (raw.ranges, raw.legacy.subnet.is_some()) {
            (Some(sets), _) if !sets.is_empty() => sets,
            (_, true) => vec![vec![raw.legacy]],
            _ => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    "ipam: host-local needs \"ranges\" (or the legacy \"subnet\")",
                ))
            }
        };
        let range_sets = raw_sets
            .iter()
            .enumerate()
            .map(|(i, set)| {
                let ranges = set
                    .iter()
                    .enumerate()
                    .map(|(j, r)| Range::from_raw(r, &format!("ipam.ranges[{i}][{j}]")))
                    .collect::<Result<Vec<_>>>()?;
                RangeSet::validate(ranges, &format!("ipam.ranges[{i}]"))
            })
            .collect::<Result<Vec<_>>>()?;
        let routes = raw
            .routes
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, r)| parse_route(r, i))
            .collect::<Result<_>>()?;
        let data_dir = data_roots.confine(
            "ipam.dataDir",
            raw.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR),
        )?;
        Ok(HostLocalConf {
            range_sets,
            routes,
            data_dir,
            resolv_conf: raw
                .resolv_conf
                .filter(|s| !s.is_empty())
                .map(|path| (path, readable.clone())),
        })
    }

    /// Claims one address from every range set (the requested ones where given) and returns
    /// the IP configs; everything claimed here is released again if any set fails.
    pub fn allocate(
        &self,
        network: &str,
        owner: &Owner,
        requested: &[IpNetwork],
        hints: Hints,
    ) -> Result<Vec<IpConfig>> {
        let (id, ifname) = (owner.container_id, owner.ifname);
        for req in requested {
            if !self
                .range_sets
                .iter()
                .any(|s| s.range_of(req.ip()).is_some())
            {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("requested address {} is in no configured range", req.ip()),
                ));
            }
        }
        let store = Store::open(&self.data_dir, network)?;
        // A repeated ADD of the same attachment keeps its addresses (the record says which).
        let held = store.recorded_holdings(id, ifname);
        let mut claimed = Vec::new();
        let outcome = self
            .range_sets
            .iter()
            .enumerate()
            .map(|(idx, set)| {
                let want = requested
                    .iter()
                    .map(|r| r.ip())
                    .find(|ip| set.range_of(*ip).is_some());
                let (ip, range) = match held
                    .iter()
                    .find_map(|ip| set.range_of(*ip).map(|r| (*ip, r)))
                {
                    // An ADD repeated for the same attachment gets the same address.
                    Some(existing) if want.is_none_or(|w| w == existing.0) => existing,
                    _ => {
                        let got =
                            claim_in_set(&store, set, idx, (id, ifname), want, hints, network)?;
                        claimed.push(got.0);
                        got
                    }
                };
                Ok(IpConfig {
                    address: IpNetwork::new(ip, range.subnet.prefix())
                        .expect("prefix of a valid subnet"),
                    gateway: Some(range.gateway),
                    interface: None,
                })
            })
            .collect::<Result<Vec<_>>>()
            .and_then(|ips| {
                store.write_record(&ClaimRecord {
                    container_id: id.to_owned(),
                    ifname: ifname.to_owned(),
                    ips: ips.iter().map(|i| i.address.ip()).collect(),
                    netns: owner.netns.to_owned(),
                    proc_pid_ns: crate::sys::netns::proc_pid_ns().ok(),
                    pod_namespace: owner.pod_namespace.map(str::to_owned),
                    pod_name: owner.pod_name.map(str::to_owned),
                    config: hints.config.map(str::to_owned),
                })?;
                Ok(ips)
            });
        if outcome.is_err() {
            for ip in claimed {
                let _ = store.release_ip(ip);
            }
        }
        outcome
    }

    /// Releases the attachment's claims. With the addresses its record (or prevResult)
    /// names, only those claim files are read, so DEL costs the same with 1 or 1000 claims in
    /// the store; the whole store is scanned only when they do not account for the claims
    /// (no record: claims made by the reference plugin, or an ADD killed half-way).
    pub fn release(&self, network: &str, id: &str, ifname: &str, known: &[IpAddr]) -> Result<()> {
        let Some(store) = Store::open_existing(&self.data_dir, network)? else {
            return Ok(());
        };
        let mut listed: Vec<IpAddr> = store
            .read_record(id, ifname)
            .map(|r| r.ips)
            .unwrap_or_default();
        listed.extend(
            known
                .iter()
                .filter(|ip| !listed.contains(ip))
                .copied()
                .collect::<Vec<_>>(),
        );
        let all_found = !listed.is_empty() && store.release_listed(&listed, id, ifname)?;
        if !all_found {
            store.release(id, ifname)?;
        }
        store.remove_record(id, ifname);
        Ok(())
    }

    /// The addresses the attachment's record names, read without creating the store or
    /// scanning it: what DEL is about to release, for its log line.
    pub fn recorded(&self, network: &str, id: &str, ifname: &str) -> Vec<IpAddr> {
        Store::open_existing(&self.data_dir, network)
            .ok()
            .flatten()
            .and_then(|store| store.read_record(id, ifname))
            .map(|r| r.ips)
            .unwrap_or_default()
    }

    /// The addresses this attachment holds in the store.
    pub fn held(&self, network: &str, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(Store::open(&self.data_dir, network)?.find(id, ifname)?)
    }

    pub fn dns(&self) -> Result<Dns> {
        match &self.resolv_conf {
            None => Ok(Dns::default()),
            Some((path, readable)) => {
                let bytes = readable.read("ipam.resolvConf", path, RESOLV_CONF_LIMIT)?;
                Ok(parse_resolv_conf(&String::from_utf8_lossy(&bytes)))
            }
        }
    }
}

impl HostLocalConf {
    /// The addresses the next ADDs would take, in order, at most `n` of each range set: the
    /// same walk `allocate` makes, reading the store without claiming anything. The node
    /// agent probes these ahead of time.
    pub fn upcoming(&self, network: &str, node_seed: Option<u64>, n: usize) -> Result<Vec<IpAddr>> {
        let store = Store::open_existing(&self.data_dir, network)?;
        let hints = Hints {
            node_seed,
            ..Hints::default()
        };
        let mut out = Vec::new();
        for (idx, set) in self.range_sets.iter().enumerate() {
            let resume = resume_point(store.as_ref(), set, idx, hints);
            out.extend(
                set.candidates(resume)
                    .map(|(ip, _)| ip)
                    .filter(|ip| !store.as_ref().is_some_and(|s| s.is_claimed(*ip)))
                    .take(n),
            );
        }
        Ok(out)
    }
}

/// Refuses a list of a config longer than its bound (code 7).
fn bound(key: &str, len: usize, max: usize, what: &str) -> Result<()> {
    if len > max {
        return Err(Error::new(
            Kind::InvalidConfig,
            format!("{key}: {len} {what} given, at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// Where the walk over the range set starts. Normally after `last_reserved_ip`, as the
/// reference host-local does; in a store that never allocated, at the node's own pick. After
/// addresses were found in use on the LAN (`avoid`), at a new pick derived from the node and
/// those addresses: the next address in line most likely belongs to the same other node, so
/// walking on would collide again and again.
fn resume_point(store: Option<&Store>, set: &RangeSet, idx: usize, hints: Hints) -> Option<IpAddr> {
    match hints.node_seed {
        Some(seed) if !hints.avoid.is_empty() => {
            let mut input = seed.to_le_bytes().to_vec();
            for ip in hints.avoid {
                input.extend_from_slice(ip.to_string().as_bytes());
            }
            set.spread_resume_point(stable_hash(&input))
        }
        seed => store
            .and_then(|s| s.last_reserved(idx))
            .or_else(|| seed.and_then(|s| set.spread_resume_point(s))),
    }
}

fn claim_in_set<'a>(
    store: &Store,
    set: &'a RangeSet,
    idx: usize,
    (id, ifname): (&str, &str),
    want: Option<IpAddr>,
    hints: Hints,
    network: &str,
) -> Result<(IpAddr, &'a Range)> {
    let avoid = hints.avoid;
    if let Some(ip) = want {
        let range = set.range_of(ip).expect("checked by the caller");
        if avoid.contains(&ip) {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                "requested address {ip} is in use on the LAN (another host answered ARP for it)"
            ),
            ));
        }
        if range.is_reserved(ip) || !store.reserve(ip, id, ifname, idx)? {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("requested address {ip} is not available in network {network}"),
            ));
        }
        return Ok((ip, range));
    }
    let resume = resume_point(Some(store), set, idx, hints);
    for (ip, range) in set.candidates(resume) {
        if !avoid.contains(&ip) && store.reserve(ip, id, ifname, idx)? {
            return Ok((ip, range));
        }
    }
    let bounds: Vec<String> = set
        .0
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect();
    Err(Error::new(Kind::RangeExhausted, format!(
        "no free address left in network {network} range {} (claims under {}); widen the range or remove stale claims",
        bounds.join(", "),
        store.dir().display()
    )))
}

fn parse_route(r: &RawRoute, i: usize) -> Result<Route> {
    let dst_s = r.dst.as_deref().ok_or_else(|| {
        Error::new(
            Kind::InvalidConfig,
            format!("ipam.routes[{i}] has no \"dst\""),
        )
    })?;
    let dst: IpNetwork = dst_s.parse().map_err(|_| {
        Error::new(
            Kind::InvalidConfig,
            format!("ipam.routes[{i}].dst {dst_s:?} is not a prefix"),
        )
    })?;
    let gw =
        r.gw.as_deref()
            .filter(|g| !g.is_empty())
            .map(|g| {
                g.parse::<IpAddr>().map_err(|_| {
                    Error::new(
                        Kind::InvalidConfig,
                        format!("ipam.routes[{i}].gw {g:?} is not an address"),
                    )
                })
            })
            .transpose()?;
    Ok(Route { dst, gw })
}

fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_owned)),
            Some("domain") => dns.domain = words.next().map(str::to_owned),
            Some("search") => dns.search = words.map(str::to_owned).collect(),
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a node without a policy allows (`node::policy::AllowedDirs`, a floor above):
    /// the stores under the default data directories, the node's own resolv.conf.
    fn no_policy_readable() -> Readable {
        Readable::new(
            vec!["/etc/resolv.conf".into()],
            Roots::new(vec![], 0o755, ""),
        )
    }

    fn parse(ipam: &Value) -> Result<HostLocalConf> {
        let data = Roots::new(vec!["/var/lib/cni".into(), "/run/cni".into()], 0o755, "");
        HostLocalConf::parse(ipam, &data, &no_policy_readable())
    }

    #[test]
    fn legacy_form_and_ranges_form_agree() {
        let a = parse(&json!({"type":"host-local","subnet":"198.51.100.0/24","rangeStart":"198.51.100.160","rangeEnd":"198.51.100.180","gateway":"198.51.100.1"})).unwrap();
        let b = parse(&json!({"type":"host-local","ranges":[[{"subnet":"198.51.100.0/24","rangeStart":"198.51.100.160","rangeEnd":"198.51.100.180","gateway":"198.51.100.1"}]]})).unwrap();
        assert_eq!(a.range_sets, b.range_sets);
        assert_eq!(
            a.data_dir.path(),
            std::path::PathBuf::from(DEFAULT_DATA_DIR)
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (cfg, needle) in [
            (json!({"type":"host-local"}), "ranges"),
            (
                json!({"ranges":[[{"subnet":"198.51.100.0/24","rangeStart":"203.0.113.1"}]]}),
                "ipam.ranges[0][0]",
            ),
            (
                json!({"subnet":"198.51.100.0/24","dataDir":"relative"}),
                "dataDir",
            ),
            (
                json!({"subnet":"198.51.100.0/24","dataDir":"/var/lib/../../etc"}),
                "dataDir",
            ),
            (
                json!({"subnet":"198.51.100.0/24","dataDir":"/etc/cni"}),
                "/var/lib/cni, /run/cni",
            ),
            (
                json!({"subnet":"198.51.100.0/24","routes":[{"dst":"nope"}]}),
                "routes[0]",
            ),
        ] {
            let e = parse(&cfg).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    /// Issue 16's inputs as a config carries them: all of IPv6 (accepted, and `::2/0`
    /// handed out), the same from `::` (2^128 addresses: an overflow), and IPv4's twin.
    #[test]
    fn whole_address_space_subnets_are_refused() {
        for ipam in [
            json!({ "subnet": "::/0" }),
            json!({ "subnet": "::/0", "rangeStart": "::" }),
            json!({ "ranges": [[{ "subnet": "0.0.0.0/0" }]] }),
        ] {
            let e = parse(&ipam).unwrap_err();
            assert_eq!(e.code(), 7, "{ipam}: {e}");
            assert!(e.to_string().contains("whole address space"), "{e}");
        }
    }

    #[test]
    fn resolv_conf_is_read() {
        let d = parse_resolv_conf("nameserver 198.51.100.53\nsearch a.example b.example\noptions ndots:2\ndomain example\n");
        assert_eq!(d.nameservers, ["198.51.100.53"]);
        assert_eq!(d.search, ["a.example", "b.example"]);
        assert_eq!(d.options, ["ndots:2"]);
        assert_eq!(d.domain.as_deref(), Some("example"));
    }

    #[test]
    fn allocation_is_round_robin_and_exhaustion_is_reported() {
        let dir = std::env::temp_dir().join(format!("rmv-hl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let roots = Roots::new(vec![std::env::temp_dir()], 0o755, "");
        let conf = HostLocalConf::parse(&json!({"subnet":"198.51.100.0/24","rangeStart":"198.51.100.10","rangeEnd":"198.51.100.11","dataDir": dir}), &roots, &no_policy_readable()).unwrap();
        let owner = |id| Owner {
            container_id: id,
            ifname: "net1",
            netns: "/proc/1/ns/net",
            pod_namespace: None,
            pod_name: None,
        };
        let a = conf
            .allocate("n", &owner("c1"), &[], Hints::default())
            .unwrap();
        let again = conf
            .allocate("n", &owner("c1"), &[], Hints::default())
            .unwrap();
        assert_eq!(a, again, "a repeated ADD keeps its address");
        let b = conf
            .allocate("n", &owner("c2"), &[], Hints::default())
            .unwrap();
        assert_ne!(a[0].address, b[0].address);
        let e = conf
            .allocate("n", &owner("c3"), &[], Hints::default())
            .unwrap_err();
        assert!(e.to_string().contains("198.51.100.10-198.51.100.11"), "{e}");
        conf.release("n", "c1", "net1", &[]).unwrap();
        let c = conf
            .allocate("n", &owner("c3"), &[], Hints::default())
            .unwrap();
        assert_eq!(c[0].address, a[0].address);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
