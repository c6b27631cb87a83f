//! Duplicate address detection on the LAN (RFC 5227 style): before the pod uses an address,
//! ARP probes (sender IP 0.0.0.0) ask whether anyone has it. host-local stores are per
//! node, so with one NetworkAttachmentDefinition for all nodes two nodes would otherwise hand
//! out the same address.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use etherparse::{ArpEthIpv4Packet, ArpOperation, ArpPacket};
use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::{Error, Kind, Result};
use crate::sys::netns::Netns;

/// How hard to look. `duplicateDetection: false` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Detection {
    /// Probes sent for each address.
    pub probes: u32,
    /// Time between probes, and waited after the last one.
    pub interval_ms: u64,
    /// Addresses found in use before ADD gives up.
    pub max_conflicts: u32,
}

/// Bounds of the config's numbers (docs/security.md).
pub const MAX_PROBES: u32 = 10;
pub const MAX_INTERVAL_MS: u64 = 1000;
pub const MAX_CONFLICTS: u32 = 16;
/// The longest one ADD may spend probing, all tries together.
pub const MAX_PROBING: Duration = Duration::from_secs(5);

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
                d.check_bounds()?;
                Ok(Some(d))
            }
            Some(_) => Err(Error::new(
                Kind::InvalidConfig,
                "duplicateDetection must be false or an object",
            )),
        }
    }

    /// Refuses numbers that would let one ADD probe for long (code 7): each has a bound,
    /// and so has the worst case of one ADD, every probe of every address it may try.
    fn check_bounds(&self) -> Result<()> {
        let refuse = |what: String| {
            Err(Error::new(
                Kind::InvalidConfig,
                format!("duplicateDetection: {what}"),
            ))
        };
        if !(1..=MAX_PROBES).contains(&self.probes) {
            return refuse(format!(
                "probes must be 1 to {MAX_PROBES}, not {}",
                self.probes
            ));
        }
        if !(1..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return refuse(format!(
                "intervalMs must be 1 to {MAX_INTERVAL_MS}, not {}",
                self.interval_ms
            ));
        }
        if self.max_conflicts > MAX_CONFLICTS {
            return refuse(format!(
                "maxConflicts must be at most {MAX_CONFLICTS}, not {}",
                self.max_conflicts
            ));
        }
        let worst = self.worst_case();
        if worst > MAX_PROBING {
            return refuse(format!(
                "probes × intervalMs × (maxConflicts + 1) is {} ms; one ADD may probe for at most {} ms",
                worst.as_millis(),
                MAX_PROBING.as_millis()
            ));
        }
        Ok(())
    }

    /// The longest one ADD can probe: every address it may try, probed in full.
    pub fn worst_case(&self) -> Duration {
        self.cost() * (self.max_conflicts + 1)
    }

    /// How long one address is probed.
    pub fn cost(&self) -> Duration {
        Duration::from_millis(self.interval_ms * u64::from(self.probes))
    }
}

/// Someone's ARP packet saying it has an address: the address and the sender's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// A probe (sender 0.0.0.0): someone asking whether the address is free, about to take
    /// it, not yet holding it.
    pub probe: bool,
}

/// Every ARP frame this process has broadcast (probes and announcements): each costs every
/// host of the LAN, so the agent's metrics show them, and ADD reports its own.
static ARP_FRAMES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many ARP frames this process has broadcast so far.
pub fn arp_frames_sent() -> u64 {
    ARP_FRAMES_SENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A packet socket for ARP on one interface of the namespace it was opened in (it stays
/// there): sends probes and announcements, and hears every ARP packet the interface
/// receives. Non-blocking, so one thread can watch many.
pub struct ArpSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl ArpSocket {
    /// Opens it on interface `ifindex` of the calling thread's namespace.
    pub fn open(ifindex: u32) -> io::Result<ArpSocket> {
        // The protocol comes with the bind below (packet(7)): the socket hears ARP on this
        // interface only.
        let fd = socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        bind(fd.as_raw_fd(), &link_addr(ifindex, [0; 6], 0))?;
        Ok(ArpSocket { fd, ifindex })
    }

    /// Opens it on interface `ifindex` of the namespace `ns` (ADD's, on the pod's new link).
    pub fn open_in(ns: &Netns, ifindex: u32) -> Result<ArpSocket> {
        ns.run(move || ArpSocket::open(ifindex))?
            .map_err(|e| Error::io("open an ARP socket on the new link", e))
    }

    /// The MAC of another host that answers for `ip`, probing from `mac` as `d` says, if
    /// one does.
    pub fn answered_by(
        &self,
        mac: [u8; 6],
        ip: Ipv4Addr,
        d: &Detection,
    ) -> Result<Option<[u8; 6]>> {
        let interval = Duration::from_millis(d.interval_ms);
        let probed = || -> io::Result<Option<[u8; 6]>> {
            for _ in 0..d.probes {
                self.probe(mac, ip)?;
                if let Some(by) = heard_claim(&self.fd, mac, ip, Instant::now() + interval)? {
                    return Ok(Some(by));
                }
            }
            Ok(None)
        };
        probed().map_err(|e| Error::io(format!("ARP probe for {ip}"), e))
    }

    /// Announces `ip` (RFC 5227 announcement: a gratuitous ARP request whose sender and
    /// target are the address), so neighbours' caches and the other nodes' agents, which
    /// listen to every ARP on the LAN, learn at once that it is taken.
    pub fn announce(&self, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
        self.send(&arp_announcement(mac, ip))
            .map_err(|e| Error::io(format!("ARP announcement of {ip}"), e))
    }

    /// The socket, to be closed elsewhere: closing a packet socket waits for the kernel's
    /// grace period (packet_release's synchronize_net, 8 to 20 ms here), which ADD hands to
    /// a detached process (`plugin::reaper::close_detached`).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Broadcasts an RFC 5227 probe for `ip` from `mac`.
    pub fn probe(&self, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        self.send(&arp_probe(mac, ip))
    }

    fn send(&self, packet: &ArpEthIpv4Packet) -> io::Result<()> {
        let broadcast = link_addr(self.ifindex, [0xff; 6], 6);
        sendto(
            self.fd.as_raw_fd(),
            &packet.to_bytes(),
            &broadcast,
            MsgFlags::empty(),
        )?;
        ARP_FRAMES_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How many ARP packets meant for this socket the kernel dropped since the last call
    /// (its receive buffer was full): what they claimed was never heard.
    pub fn dropped(&self) -> io::Result<u32> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS writes one tpacket_stats (and resets the counters);
        // `stats` is one, `len` its size, both live across the call. nix has no wrapper.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                std::ptr::from_mut(&mut stats).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stats.tp_drops)
    }

    /// The claims among the ARP packets received since the last call (not those this host
    /// sent): each sender with an address, and each prober of an address (RFC 5227 2.1.1).
    pub fn claims(&self) -> Vec<Claim> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) =
            nix::sys::socket::recvfrom::<LinkAddr>(self.fd.as_raw_fd(), &mut buf)
        {
            if from.is_some_and(|a| a.pkttype() == libc::PACKET_OUTGOING) {
                continue;
            }
            if let Some(claim) = claim_of(&buf[..n]) {
                out.push(claim);
            }
        }
        out
    }
}

impl AsFd for ArpSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The address an ARP packet claims and who claims it: its sender's address, or for a
/// probe (sender 0.0.0.0) its target.
pub fn claim_of(pkt: &[u8]) -> Option<Claim> {
    let arp = ArpPacket::from_slice(pkt).ok()?.try_eth_ipv4().ok()?;
    let probe = arp.sender_ipv4 == [0; 4];
    let ip = if probe {
        arp.target_ipv4
    } else {
        arp.sender_ipv4
    };
    Some(Claim {
        ip: Ipv4Addr::from(ip),
        mac: arp.sender_mac,
        probe,
    })
}

/// An AF_PACKET address for ARP on interface `ifindex`, to hardware address `to` (`halen` of
/// its bytes count; 0 for a bind).
fn link_addr(ifindex: u32, to: [u8; 6], halen: u8) -> LinkAddr {
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&to);
    let ll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: (libc::ETH_P_ARP as u16).to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: halen,
        sll_addr,
    };
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: nix's LinkAddr has no constructor, only this one from a raw sockaddr; `ll` is
    // a complete sockaddr_ll of `len` bytes that lives across the call (from_raw copies it).
    unsafe { LinkAddr::from_raw(std::ptr::from_ref(&ll).cast(), Some(len)) }
        .expect("an AF_PACKET sockaddr_ll of its own size is a LinkAddr")
}

/// An ARP request with sender IP 0.0.0.0 asking for `ip` (RFC 5227 probe).
fn arp_probe(mac: [u8; 6], ip: Ipv4Addr) -> ArpEthIpv4Packet {
    ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: [0; 4],
        target_mac: [0; 6],
        target_ipv4: ip.octets(),
    }
}

/// An ARP request announcing `ip` as `mac`'s (sender and target both the address).
fn arp_announcement(mac: [u8; 6], ip: Ipv4Addr) -> ArpEthIpv4Packet {
    ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: ip.octets(),
        target_mac: [0; 6],
        target_ipv4: ip.octets(),
    }
}

/// Who else an ARP packet says has `ip`: its sender, or someone probing for the same
/// address at the same time (RFC 5227 2.1.1).
fn claimant(pkt: &[u8], mac: [u8; 6], ip: Ipv4Addr) -> Option<[u8; 6]> {
    claim_of(pkt)
        .filter(|c| c.mac != mac && c.ip == ip)
        .map(|c| c.mac)
}

fn heard_claim(
    sock: &OwnedFd,
    mac: [u8; 6],
    ip: Ipv4Addr,
    deadline: Instant,
) -> io::Result<Option<[u8; 6]>> {
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let wait =
            PollTimeout::try_from(left.max(Duration::from_millis(1))).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => return Ok(None),
            Ok(_) => {}
        }
        if let Ok(n) = recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            if let Some(by) = claimant(&buf[..n], mac, ip) {
                return Ok(Some(by));
            }
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
            json!({"intervalMs": 0}),
            json!({"probes": 4294967295u32}),
            json!({"maxConflicts": 4294967295u32}),
            json!({"maxConflicts": 17}),
            // Each within its bound, together over 5 s.
            json!({"probes": 10, "intervalMs": 1000, "maxConflicts": 0}),
        ] {
            assert_eq!(
                Detection::from_config(Some(&bad)).unwrap_err().code(),
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_probe_on_the_wire() {
        let bytes = arp_probe([2, 0, 0, 0, 0, 1], Ipv4Addr::new(198, 51, 100, 7)).to_bytes();
        #[rustfmt::skip]
        let expected = [
            0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, 6- and 4-byte addresses, request
            2, 0, 0, 0, 0, 1, 0, 0, 0, 0, // sender: our MAC, 0.0.0.0 (RFC 5227 probe)
            0, 0, 0, 0, 0, 0, 198, 51, 100, 7, // target: no MAC, the address asked for
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn what_counts_as_a_claim() {
        let me = [2, 0, 0, 0, 0, 1];
        let other = [2, 0, 0, 0, 0, 2];
        let ip = Ipv4Addr::new(198, 51, 100, 7);
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: other,
            sender_ipv4: ip.octets(),
            target_mac: me,
            target_ipv4: [0; 4],
        }
        .to_bytes();
        assert!(
            claimant(&reply, me, ip) == Some(other),
            "a host sending from the address has it"
        );
        let mut padded = reply.to_vec();
        padded.resize(46, 0);
        assert!(
            claimant(&padded, me, ip) == Some(other),
            "as received: padded to Ethernet's minimum frame"
        );
        assert!(
            claimant(&arp_probe(other, ip).to_bytes(), me, ip) == Some(other),
            "another probe for the same address"
        );
        assert!(
            claimant(&arp_probe(me, ip).to_bytes(), me, ip).is_none(),
            "our own probe, looped back"
        );
        assert!(claimant(
            &arp_probe(other, Ipv4Addr::new(198, 51, 100, 8)).to_bytes(),
            me,
            ip
        )
        .is_none());
        assert!(
            claimant(&reply[..10], me, ip).is_none(),
            "a truncated packet"
        );
    }
}
