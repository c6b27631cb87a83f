//! IPv6 duplicate address detection: ADD returns once the kernel has settled the new
//! link's IPv6 addresses, as the reference plugins do (ip.SettleAddresses), so every address
//! the result names is usable (not tentative) when the runtime starts the pod's processes.

use std::time::{Duration, Instant};

use crate::cni::{Error, Kind, Result};
use crate::sys::netns::Netns;

/// The reference's bound on the wait.
const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// Address flags (linux/if_addr.h) as /proc/net/if_inet6 prints them.
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_TENTATIVE: u32 = 0x40;

/// Waits until no IPv6 address of `ifname` in `ns` is tentative; an address the kernel
/// found in use elsewhere on the LAN fails it, naming the address.
pub fn settle(ns: &Netns, ifname: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let text = ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/if_inet6"))?
            .map_err(|e| Error::io("read /proc/net/if_inet6", e))?;
        let addresses = parse_if_inet6(&text, ifname);
        if let Some((addr, _)) = addresses.iter().find(|(_, f)| f & IFA_F_DADFAILED != 0) {
            return Err(Error::new(Kind::Netlink, format!(
                "IPv6 address {addr} on {ifname} failed duplicate address detection: another host on the LAN uses it"
            )));
        }
        if !addresses.iter().any(|(_, f)| f & IFA_F_TENTATIVE != 0) {
            return Ok(());
        }
        if start.elapsed() > TIMEOUT {
            return Err(Error::new(Kind::Netlink, format!(
                "IPv6 addresses on {ifname} still tentative after {}s of duplicate address detection",
                TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// /proc/net/if_inet6: `<32 hex digits> <ifindex> <prefix> <scope> <flags> <name>` per
/// address, all numbers in hex. Returns each address of `ifname` with its flags.
fn parse_if_inet6(text: &str, ifname: &str) -> Vec<(std::net::Ipv6Addr, u32)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 6 || f[5] != ifname {
                return None;
            }
            let addr = u128::from_str_radix(f[0], 16).ok()?;
            let flags = u32::from_str_radix(f[4], 16).ok()?;
            Some((addr.into(), flags))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_inet6_lines_are_read_per_interface() {
        let text = "20010db8000100000000000000000100 03 40 00 c0     net1\n\
fe80000000000000f45fa2fffe226621 03 40 20 80     net1\n\
00000000000000000000000000000001 01 80 10 80       lo\n";
        let got = parse_if_inet6(text, "net1");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.to_string(), "2001:db8:1::100");
        assert_eq!(got[0].1 & IFA_F_TENTATIVE, IFA_F_TENTATIVE);
        assert_eq!(got[1].1 & IFA_F_TENTATIVE, 0);
        assert!(parse_if_inet6(text, "eth0").is_empty());
    }
}
