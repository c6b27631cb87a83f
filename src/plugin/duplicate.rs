//! Duplicate address detection on the LAN (RFC 5227 style): before the pod uses an address,
//! ARP probes (sender IP 0.0.0.0) ask whether anyone has it. host-local stores are per
//! node, so with one NetworkAttachmentDefinition for all nodes two nodes would otherwise hand
//! out the same address.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::libc;
use serde::Deserialize;
use serde_json::Value;

use crate::cni::{Error, Kind, Result};
use crate::sys::netns::Netns;

/// How hard to look. `duplicateDetection: false` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Detection {
    /// Probes sent for each address.
    pub probes: u32,
    /// Time between probes, and waited after the last one.
    pub interval_ms: u64,
    /// Addresses found in use before ADD gives up.
    pub max_conflicts: u32,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            probes: 2,
            interval_ms: 50,
            max_conflicts: 8,
        }
    }
}

impl Detection {
    /// From the config's top-level `duplicateDetection`: absent or `true` means the defaults.
    pub fn from_config(v: Option<&Value>) -> Result<Option<Detection>> {
        match v {
            None | Some(Value::Null) | Some(Value::Bool(true)) => Ok(Some(Detection::default())),
            Some(Value::Bool(false)) => Ok(None),
            Some(obj @ Value::Object(_)) => {
                let d: Detection = serde_json::from_value(obj.clone()).map_err(|e| {
                    Error::new(Kind::InvalidConfig, format!(
                        "duplicateDetection: {e}; it takes false or {{\"probes\": N, \"intervalMs\": N, \"maxConflicts\": N}}"
                    ))
                })?;
                if d.probes == 0 || d.probes > 10 || d.interval_ms > 1000 {
                    return Err(Error::new(
                        Kind::InvalidConfig,
                        "duplicateDetection: probes must be 1..10 and intervalMs at most 1000",
                    ));
                }
                Ok(Some(d))
            }
            Some(_) => Err(Error::new(
                Kind::InvalidConfig,
                "duplicateDetection must be false or an object",
            )),
        }
    }

    /// How long one address is probed.
    pub fn cost(&self) -> Duration {
        Duration::from_millis(self.interval_ms * u64::from(self.probes))
    }
}

/// The ARP ethertype in the byte order packet sockets take it.
const ARP_PROTOCOL: u16 = (libc::ETH_P_ARP as u16).to_be();
const ARP_LEN: usize = 28;

/// Whether another host answers for `ip` on the interface, probing from `mac`.
pub fn in_use(ns: &Netns, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr, d: &Detection) -> Result<bool> {
    let d = *d;
    ns.run(move || probe(ifindex, mac, ip, &d))?
        .map_err(|e| Error::io(format!("ARP probe for {ip}"), e))
}

fn probe(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr, d: &Detection) -> std::io::Result<bool> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ARP_PROTOCOL),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ARP_PROTOCOL;
    addr.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: addr is a valid sockaddr_ll of the given length.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            len,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let mut to = addr;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let request = arp_probe(mac, ip);
    let interval = Duration::from_millis(d.interval_ms);
    for _ in 0..d.probes {
        // SAFETY: request and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if heard_claim(&sock, mac, ip, Instant::now() + interval)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An ARP request with sender IP 0.0.0.0 asking for `ip` (RFC 5227 probe).
fn arp_probe(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// Whether an ARP packet says someone else has `ip`: it is the sender, or it probes for the
/// same address at the same time (RFC 5227 2.1.1).
fn claims(pkt: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> bool {
    if pkt.len() < ARP_LEN || pkt[8..14] == mac {
        return false;
    }
    let sender_ip = &pkt[14..18];
    let target_ip = &pkt[24..28];
    sender_ip == ip.octets() || (sender_ip == [0; 4] && target_ip == ip.octets())
}

fn heard_claim(
    sock: &OwnedFd,
    mac: [u8; 6],
    ip: Ipv4Addr,
    deadline: Instant,
) -> std::io::Result<bool> {
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            return Ok(false);
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 && claims(&buf[..n as usize], mac, ip) {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_forms() {
        assert_eq!(
            Detection::from_config(None).unwrap(),
            Some(Detection::default())
        );
        assert_eq!(Detection::from_config(Some(&json!(false))).unwrap(), None);
        let d = Detection::from_config(Some(&json!({"probes": 3, "intervalMs": 20})))
            .unwrap()
            .unwrap();
        assert_eq!((d.probes, d.interval_ms, d.max_conflicts), (3, 20, 8));
        assert_eq!(d.cost(), Duration::from_millis(60));
        for bad in [
            json!(1),
            json!({"probes": 0}),
            json!({"probe": 1}),
            json!({"intervalMs": 5000}),
        ] {
            assert_eq!(
                Detection::from_config(Some(&bad)).unwrap_err().code(),
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn what_counts_as_a_claim() {
        let me = [2, 0, 0, 0, 0, 1];
        let other = [2, 0, 0, 0, 0, 2];
        let ip = Ipv4Addr::new(198, 51, 100, 7);
        let mut reply = arp_probe(other, Ipv4Addr::new(198, 51, 100, 1));
        reply[14..18].copy_from_slice(&ip.octets());
        assert!(
            claims(&reply, me, ip),
            "a host sending from the address has it"
        );
        assert!(
            claims(&arp_probe(other, ip), me, ip),
            "another probe for the same address"
        );
        assert!(
            !claims(&arp_probe(me, ip), me, ip),
            "our own probe, looped back"
        );
        assert!(!claims(
            &arp_probe(other, Ipv4Addr::new(198, 51, 100, 8)),
            me,
            ip
        ));
        assert!(!claims(&reply[..10], me, ip));
    }
}
