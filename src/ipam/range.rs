//! host-local ranges: parsing with the reference plugin's defaults, and round-robin
//! iteration over a range set.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::cni::{Error, Kind, Result};

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct RawRange {
    pub subnet: Option<String>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
}

/// A canonical range: every field filled in and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

impl Range {
    /// Fills in defaults the way the reference plugin does (gateway .1, start .1 skipping the
    /// gateway, end the last address before broadcast) and checks everything lies in the subnet.
    pub fn from_raw(raw: &RawRange, what: &str) -> Result<Range> {
        let bad = |m: String| Error::new(Kind::InvalidConfig, format!("{what}: {m}"));
        let subnet_str = raw
            .subnet
            .as_deref()
            .ok_or_else(|| bad("\"subnet\" is missing".into()))?;
        let parsed: IpNetwork = subnet_str.parse().map_err(|_| {
            bad(format!(
                "subnet {subnet_str:?} is not a prefix like 198.51.100.0/24"
            ))
        })?;
        let subnet =
            IpNetwork::new(parsed.network(), parsed.prefix()).expect("prefix already valid");
        if subnet.prefix() == 0 {
            // No LAN is the whole address space; /0 is a typo or a default route pasted in.
            // Its range also spans more addresses than the allocator's offsets count.
            return Err(bad(format!(
                "subnet {subnet} spans the whole address space; give the LAN's prefix, such as 198.51.100.0/24 or 2001:db8::/64"
            )));
        }
        let too_small = || bad(format!("subnet {subnet} is too small to allocate from"));
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > bits - 2 {
            return Err(too_small());
        }
        let parse_in = |field: &str, v: &Option<String>| -> Result<Option<IpAddr>> {
            let Some(s) = v else { return Ok(None) };
            let ip: IpAddr = s
                .parse()
                .map_err(|_| bad(format!("{field} {s:?} is not an IP address")))?;
            if !subnet.contains(ip) {
                return Err(bad(format!("{field} {ip} is outside subnet {subnet}")));
            }
            Ok(Some(ip))
        };
        // The first host after the network address; the last before the IPv4 broadcast.
        let bcast = to_u128(subnet.broadcast());
        let (Some(first), Some(last)) = (
            to_u128(subnet.network()).checked_add(1),
            if subnet.is_ipv4() {
                bcast.checked_sub(1)
            } else {
                Some(bcast)
            },
        ) else {
            return Err(too_small());
        };
        let (first, last) = (
            from_u128(first, subnet.is_ipv4()),
            from_u128(last, subnet.is_ipv4()),
        );
        let gateway = parse_in("gateway", &raw.gateway)?.unwrap_or(first);
        let start = parse_in("rangeStart", &raw.range_start)?.unwrap_or(first);
        let end = parse_in("rangeEnd", &raw.range_end)?.unwrap_or(last);
        if to_u128(start) > to_u128(end) {
            return Err(bad(format!("rangeStart {start} is after rangeEnd {end}")));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// Addresses never handed out: the network, the IPv4 broadcast and the gateway.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        ip == self.gateway
            || ip == self.subnet.network()
            || (self.subnet.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// The offset of `end` from `start`. Not the number of addresses, which is one more and
    /// does not fit in a u128 for a range over all of IPv6 (`from_raw` refuses /0, but the
    /// iteration must not depend on that). `None` for a range that ends before it starts.
    pub fn last_offset(&self) -> Option<u128> {
        to_u128(self.end).checked_sub(to_u128(self.start))
    }
}

/// A range set: the ranges one address is drawn from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn validate(ranges: Vec<Range>, what: &str) -> Result<RangeSet> {
        if ranges.is_empty() {
            return Err(Error::new(Kind::InvalidConfig, format!("{what} is empty")));
        }
        if ranges
            .iter()
            .any(|r| r.subnet.is_ipv4() != ranges[0].subnet.is_ipv4())
        {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("{what} mixes IPv4 and IPv6 ranges; put them in separate range sets"),
            ));
        }
        // Sorted by start, ranges overlap exactly when one starts before its predecessor
        // ends: n log n, whatever a config throws at it.
        let mut by_start: Vec<&Range> = ranges.iter().collect();
        by_start.sort_by_key(|r| to_u128(r.start));
        if let Some(w) = by_start
            .windows(2)
            .find(|w| to_u128(w[1].start) <= to_u128(w[0].end))
        {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "{what}: ranges {}-{} and {}-{} overlap",
                    w[0].start, w[0].end, w[1].start, w[1].end
                ),
            ));
        }
        Ok(RangeSet(ranges))
    }

    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Where a node with this `seed` resumes from in a range set it never allocated from
    /// (no last_reserved_ip yet): the address before its first pick, which lies at a
    /// seed-derived offset in the first range. Nodes with one config and fresh stores then
    /// start at different addresses instead of walking the range in lockstep (and colliding
    /// on the LAN at every ADD); what they write stays the reference's store format.
    pub fn spread_resume_point(&self, seed: u64) -> Option<IpAddr> {
        let first = self.0.first()?;
        let last_off = first.last_offset()?;
        let pick = match last_off.checked_add(1) {
            Some(count) => u128::from(seed) % count,
            None => u128::from(seed),
        };
        // Resuming after `pick - 1` makes `pick` the first candidate; 0 needs no resume.
        let before = pick.checked_sub(1)?;
        Some(from_u128(
            to_u128(first.start) + before,
            first.subnet.is_ipv4(),
        ))
    }

    /// Every candidate address once, round-robin: starting after `last` when it lies in the
    /// set, else at the first range's start; wrapping over all ranges. Reserved addresses
    /// are skipped.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, &Range)> + '_ {
        // The range holding `last`, and `last`'s offset in it.
        let resume = last.and_then(|ip| {
            let i = self.0.iter().position(|r| r.contains(ip))?;
            Some((i, to_u128(ip) - to_u128(self.0[i].start)))
        });
        let start_range = resume.map_or(0, |(i, _)| i);
        let resume_offset = resume.map(|(_, off)| off);
        let n = self.0.len();
        // The start range is visited twice: after the offset to its end first, and from its
        // beginning up to the offset at the very end. Offsets are inclusive bounds, so no
        // count of addresses (which can exceed u128) is ever formed.
        (0..=n)
            .flat_map(move |step| {
                let ri = (start_range + step) % n;
                let r = &self.0[ri];
                let offsets = r
                    .last_offset()
                    .and_then(|last_off| match (step, resume_offset) {
                        (0, None) => Some(0..=last_off),
                        (0, Some(off)) => off.checked_add(1).map(|lo| lo..=last_off),
                        (s, Some(off)) if s == n => Some(0..=off),
                        (s, None) if s == n => None,
                        _ => Some(0..=last_off),
                    });
                let v4 = r.subnet.is_ipv4();
                let base = to_u128(r.start);
                // base + off <= end: it never overflows.
                offsets
                    .into_iter()
                    .flatten()
                    .map(move |off| (from_u128(base + off, v4), r))
            })
            .filter(|(ip, r)| !r.is_reserved(*ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_store_starts_at_the_nodes_pick() {
        let set = RangeSet(vec![range(
            "198.51.100.0/24",
            Some("198.51.100.10"),
            Some("198.51.100.19"),
            None,
        )
        .unwrap()]);
        // Seed 0 picks the range's first address: nothing to resume after.
        assert_eq!(set.spread_resume_point(0), None);
        let first = |seed| {
            set.candidates(set.spread_resume_point(seed))
                .next()
                .unwrap()
                .0
        };
        assert_eq!(first(0), "198.51.100.10".parse::<IpAddr>().unwrap());
        assert_eq!(first(3), "198.51.100.13".parse::<IpAddr>().unwrap());
        // Seeds wrap within the range, and every pick lies in it.
        assert_eq!(first(13), "198.51.100.13".parse::<IpAddr>().unwrap());
        for seed in [u64::MAX, 12345, 7] {
            assert!(set.range_of(first(seed)).is_some());
        }
    }

    fn range(
        subnet: &str,
        start: Option<&str>,
        end: Option<&str>,
        gw: Option<&str>,
    ) -> Result<Range> {
        Range::from_raw(
            &RawRange {
                subnet: Some(subnet.into()),
                range_start: start.map(Into::into),
                range_end: end.map(Into::into),
                gateway: gw.map(Into::into),
            },
            "ipam.ranges[0][0]",
        )
    }

    #[test]
    fn defaults_follow_the_reference() {
        let r = range("198.51.100.0/24", None, None, None).unwrap();
        assert_eq!(r.gateway.to_string(), "198.51.100.1");
        assert_eq!(r.start.to_string(), "198.51.100.1");
        assert_eq!(r.end.to_string(), "198.51.100.254");
        let set = RangeSet::validate(vec![r], "set").unwrap();
        let first: Vec<String> = set
            .candidates(None)
            .take(2)
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(first, ["198.51.100.2", "198.51.100.3"]);
    }

    #[test]
    fn outside_subnet_is_refused() {
        let e = range("198.51.100.0/24", Some("203.0.113.5"), None, None).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("outside subnet"), "{e}");
        assert!(range("198.51.100.0/31", None, None, None).is_err());
        assert!(range(
            "198.51.100.0/24",
            Some("198.51.100.9"),
            Some("198.51.100.5"),
            None
        )
        .is_err());
    }

    #[test]
    fn round_robin_after_last_and_wraps() {
        let r = range(
            "198.51.100.0/24",
            Some("198.51.100.10"),
            Some("198.51.100.12"),
            None,
        )
        .unwrap();
        let set = RangeSet::validate(vec![r], "s").unwrap();
        let order: Vec<String> = set
            .candidates(Some("198.51.100.11".parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(order, ["198.51.100.12", "198.51.100.10", "198.51.100.11"]);
    }

    #[test]
    fn several_ranges_visit_each_address_once() {
        let a = range(
            "198.51.100.0/24",
            Some("198.51.100.10"),
            Some("198.51.100.11"),
            None,
        )
        .unwrap();
        let b = range(
            "203.0.113.0/24",
            Some("203.0.113.20"),
            Some("203.0.113.21"),
            None,
        )
        .unwrap();
        let set = RangeSet::validate(vec![a, b], "s").unwrap();
        let order: Vec<String> = set
            .candidates(Some("198.51.100.11".parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(
            order,
            [
                "203.0.113.20",
                "203.0.113.21",
                "198.51.100.10",
                "198.51.100.11"
            ]
        );
    }

    #[test]
    fn gateway_network_and_broadcast_are_never_candidates() {
        let r = range(
            "198.51.100.0/30",
            Some("198.51.100.0"),
            Some("198.51.100.3"),
            Some("198.51.100.1"),
        )
        .unwrap();
        let set = RangeSet::validate(vec![r], "s").unwrap();
        let all: Vec<String> = set.candidates(None).map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(all, ["198.51.100.2"]);
    }

    /// Found by fuzzing (issue 16): `::/0` was accepted and ADD handed out `::2/0`; from
    /// `rangeStart` `::` the range arithmetic overflowed. A /0 is no pod network in either
    /// family: refused, code 7.
    #[test]
    fn a_prefix_of_zero_is_refused_not_overflowed() {
        for subnet in ["::/0", "0.0.0.0/0"] {
            let e = range(subnet, None, None, None).unwrap_err();
            assert_eq!(e.code(), 7, "{subnet}: {e}");
            assert!(e.to_string().contains("whole address space"), "{e}");
            assert!(e.to_string().contains("ipam.ranges[0][0]"), "{e}");
        }
    }

    /// The overflow itself: with `rangeStart` at `::` the range holds 2^128 addresses, one
    /// more than a u128 counts. The offsets the iteration uses stay in bounds.
    #[test]
    fn a_range_over_all_of_ipv6_does_not_overflow() {
        let all = Range {
            subnet: "::/0".parse().unwrap(),
            start: "::".parse().unwrap(),
            end: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            gateway: "::1".parse().unwrap(),
        };
        assert_eq!(all.last_offset(), Some(u128::MAX));
        let set = RangeSet(vec![all]);
        let after_end: Vec<String> = set
            .candidates(Some(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            ))
            .take(2)
            .map(|(ip, _)| ip.to_string())
            .collect();
        assert_eq!(after_end, ["::2", "::3"]);
        let e = range("::/0", Some("::"), None, None).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let a = range(
            "198.51.100.0/24",
            Some("198.51.100.10"),
            Some("198.51.100.20"),
            None,
        )
        .unwrap();
        let b = range(
            "198.51.100.0/24",
            Some("198.51.100.15"),
            Some("198.51.100.30"),
            None,
        )
        .unwrap();
        assert_eq!(RangeSet::validate(vec![a, b], "s").unwrap_err().code(), 7);
    }
}
