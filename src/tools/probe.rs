//! `ros-macvlan probe`: listens for DDS discovery (SPDP to 239.255.0.1, port 7400 + 250 ×
//! domain) in a pod and shows who announces itself, decoded by our own RTPS decoder; with
//! `--announce` it announces a minimal participant too, so two probes see each other with
//! no DDS installed. It also listens to Zenoh's multicast scouting (224.0.0.224:7446) and,
//! announcing, sends a Zenoh Scout, so it says whether a Zenoh peer or router scouts there.

use std::collections::{BTreeMap, HashSet};
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use serde_json::json;
use socket2::{InterfaceIndexOrAddress, SockRef};

use crate::sys::netns::Netns;
use crate::tools::rtps::{self, Participant};
use crate::tools::zenoh;

#[derive(Debug, Clone)]
pub struct Options {
    pub netns: Option<String>,
    pub iface: String,
    pub domains: Vec<u16>,
    pub seconds: f64,
    pub json: bool,
    pub announce: bool,
    /// Print events while listening (the CLI); `doctor` only wants the report.
    pub live: bool,
}

/// A participant as heard.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub participant: Participant,
    pub source: SocketAddrV4,
    pub iface: String,
    pub domain: u16,
    pub last_seen: Instant,
    pub announcements: u64,
    /// Different announcements under one GUID prefix: two participants colliding.
    pub collision: bool,
}

#[derive(Debug, Default)]
pub struct Report {
    pub participants: BTreeMap<[u8; 12], Sighting>,
    pub malformed: u64,
    /// Sources of unicast packets to our announced locator: peers that heard our announcement.
    pub answered_by: HashSet<Ipv4Addr>,
    pub own_prefix: [u8; 12],
    pub iface_addr: Option<Ipv4Addr>,
    pub zenoh: ZenohReport,
}

/// Zenoh's multicast scouting as heard on the interface.
#[derive(Debug, Default)]
pub struct ZenohReport {
    /// Sessions heard scouting on the group (their Scouts), by source.
    pub scouts: BTreeMap<SocketAddrV4, zenoh::Scout>,
    /// Sessions that answered our Scout (their Hellos), by Zenoh ID.
    pub hellos: BTreeMap<zenoh::ZenohId, (SocketAddrV4, zenoh::Hello)>,
    /// Why the probe could not listen to Zenoh's scouting, if it could not.
    pub unavailable: Option<String>,
}

impl ZenohReport {
    /// One sentence: who scouts here, or that nobody does.
    pub fn summary(&self, iface: &str) -> String {
        if let Some(why) = &self.unavailable {
            return format!("Zenoh scouting not watched on {iface}: {why}");
        }
        let mut seen: Vec<String> = self
            .hellos
            .values()
            .map(|(src, h)| {
                format!(
                    "{} {} from {} (listening on {})",
                    h.role,
                    h.zid,
                    src.ip(),
                    h.locators.join(", ")
                )
            })
            .collect();
        let answered: HashSet<Ipv4Addr> = self.hellos.values().map(|(s, _)| *s.ip()).collect();
        seen.extend(
            self.scouts
                .keys()
                .filter(|s| !answered.contains(s.ip()))
                .map(|s| format!("a session at {s}")),
        );
        if seen.is_empty() {
            format!(
                "nobody scouts for Zenoh on {iface} ({}:{})",
                zenoh::SCOUT_GROUP,
                zenoh::SCOUT_PORT
            )
        } else {
            let who = if self
                .hellos
                .values()
                .any(|(_, h)| h.role == zenoh::Role::Router)
            {
                "router"
            } else {
                "peer"
            };
            format!("a Zenoh {who} is scouting here: {}", seen.join("; "))
        }
    }
}

/// The sockets a probe reads, opened inside the pod's namespace.
struct Sockets {
    /// One per domain: bound to the discovery port, joined to the group on the interface.
    discovery: Vec<(u16, UdpSocket)>,
    /// Our announcements leave from here; peers' unicast answers arrive here.
    unicast: Option<UdpSocket>,
    iface_addr: Option<Ipv4Addr>,
    names: BTreeMap<u32, String>,
    zenoh: Result<ZenohSockets, String>,
}

/// Zenoh's scouting group joined on the interface, and (announcing) where our Scouts leave
/// from and the Hellos answering them arrive.
struct ZenohSockets {
    group: UdpSocket,
    scout: Option<UdpSocket>,
}

pub fn run(opts: &Options) -> std::io::Result<Report> {
    let ns = match &opts.netns {
        Some(p) => Netns::open(p),
        None => Netns::current(),
    }
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let o = opts.clone();
    let sockets = ns
        .run(move || open_sockets(&o))
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    listen(opts, sockets)
}

fn open_sockets(opts: &Options) -> std::io::Result<Sockets> {
    let names: BTreeMap<u32, String> = nix::net::if_::if_nameindex()
        .map_err(std::io::Error::from)?
        .iter()
        .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
        .collect();
    let iface_index = names
        .iter()
        .find(|(_, n)| **n == opts.iface)
        .map(|(i, _)| *i)
        .ok_or_else(|| {
            std::io::Error::other(format!("interface {} not found in the pod", opts.iface))
        })?;
    let iface_addr = nix::ifaddrs::getifaddrs()
        .map_err(std::io::Error::from)?
        .filter(|a| a.interface_name == opts.iface)
        .find_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())));
    let mut discovery = Vec::new();
    for &domain in &opts.domains {
        let sock = bound_udp(
            Ipv4Addr::UNSPECIFIED,
            rtps::discovery_multicast_port(domain),
            true,
        )?;
        // By index (ip_mreqn): the interface may have no IPv4 address while listening.
        SockRef::from(&sock).join_multicast_v4_n(
            &rtps::SPDP_GROUP,
            &InterfaceIndexOrAddress::Index(iface_index),
        )?;
        setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).map_err(std::io::Error::from)?;
        discovery.push((domain, sock));
    }
    let unicast = match (opts.announce, iface_addr) {
        (true, Some(addr)) => {
            let sock = bound_udp(addr, 0, false)?;
            // Announcing needs the address anyway (it is the locator peers answer), so the
            // interface is named by it.
            SockRef::from(&sock).set_multicast_if_v4(&addr)?;
            Some(sock)
        }
        (true, None) => {
            return Err(std::io::Error::other(format!(
                "{} has no IPv4 address to announce",
                opts.iface
            )))
        }
        _ => None,
    };
    let zenoh = zenoh_sockets(
        iface_index,
        unicast.is_some().then_some(iface_addr).flatten(),
    )
    .map_err(|e| e.to_string());
    Ok(Sockets {
        discovery,
        unicast,
        iface_addr,
        names,
        zenoh,
    })
}

fn zenoh_sockets(
    iface_index: u32,
    announce_from: Option<Ipv4Addr>,
) -> std::io::Result<ZenohSockets> {
    // Zenoh sessions in the pod bind the scouting port too.
    let group = bound_udp(Ipv4Addr::UNSPECIFIED, zenoh::SCOUT_PORT, true)?;
    SockRef::from(&group).join_multicast_v4_n(
        &zenoh::SCOUT_GROUP,
        &InterfaceIndexOrAddress::Index(iface_index),
    )?;
    let scout = match announce_from {
        Some(addr) => {
            let sock = bound_udp(addr, 0, false)?;
            SockRef::from(&sock).set_multicast_if_v4(&addr)?;
            Some(sock)
        }
        None => None,
    };
    Ok(ZenohSockets { group, scout })
}

fn bound_udp(addr: Ipv4Addr, port: u16, reuse: bool) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    if reuse {
        // DDS participants on the same pod bind the discovery port too.
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(std::io::Error::from)?;
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(std::io::Error::from)?;
    }
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(addr, port)),
    )
    .map_err(std::io::Error::from)?;
    Ok(UdpSocket::from(fd))
}

fn listen(opts: &Options, sockets: Sockets) -> std::io::Result<Report> {
    let mut report = Report {
        own_prefix: own_prefix(),
        iface_addr: sockets.iface_addr,
        ..Report::default()
    };
    report.zenoh.unavailable = sockets.zenoh.as_ref().err().cloned();
    let zenoh_fds: Vec<&UdpSocket> = sockets
        .zenoh
        .iter()
        .flat_map(|z| std::iter::once(&z.group).chain(z.scout.iter()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let mut next_announce = Instant::now();
    let mut seq = 1u64;
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        if let (Some(sock), true) = (&sockets.unicast, Instant::now() >= next_announce) {
            let port = sock.local_addr()?.port();
            for &d in &opts.domains {
                let msg = rtps::encode_spdp(
                    report.own_prefix,
                    d,
                    sockets.iface_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    port,
                    "ros-macvlan-probe",
                    seq,
                );
                sock.send_to(&msg, (rtps::SPDP_GROUP, rtps::discovery_multicast_port(d)))?;
            }
            if let Ok(ZenohSockets {
                scout: Some(sock), ..
            }) = &sockets.zenoh
            {
                sock.send_to(
                    &zenoh::encode_scout(),
                    (zenoh::SCOUT_GROUP, zenoh::SCOUT_PORT),
                )?;
            }
            seq += 1;
            next_announce = Instant::now() + Duration::from_millis(500);
        }
        expire(&mut report, opts);
        let wait = deadline
            .min(next_announce)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut fds: Vec<nix::poll::PollFd> = sockets
            .discovery
            .iter()
            .map(|(_, s)| s.as_fd())
            .chain(sockets.unicast.iter().map(|s| s.as_fd()))
            .chain(zenoh_fds.iter().map(|s| s.as_fd()))
            .map(|fd| nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN))
            .collect();
        let timeout = nix::poll::PollTimeout::try_from(wait.as_millis().min(1000) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents()
                    .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
            })
            .collect();
        for (i, (domain, sock)) in sockets.discovery.iter().enumerate() {
            if ready[i] {
                if let Some((n, src, ifindex)) = recv_with_iface(sock, &mut buf) {
                    let iface = sockets
                        .names
                        .get(&ifindex)
                        .cloned()
                        .unwrap_or_else(|| format!("if{ifindex}"));
                    heard(&mut report, opts, &buf[..n], src, iface, *domain);
                }
            }
        }
        if let (Some(sock), Some(true)) = (&sockets.unicast, ready.get(sockets.discovery.len())) {
            if let Ok((n, std::net::SocketAddr::V4(src))) = sock.recv_from(&mut buf) {
                report.answered_by.insert(*src.ip());
                // DDS implementations answer a new participant with their own SPDP, sent
                // straight to its unicast locator: that is a sighting too.
                if rtps::decode_spdp(&buf[..n]).is_ok() {
                    heard(
                        &mut report,
                        opts,
                        &buf[..n],
                        src,
                        opts.iface.clone(),
                        opts.domains[0],
                    );
                }
            }
        }
        let first_zenoh = sockets.discovery.len() + usize::from(sockets.unicast.is_some());
        for (i, sock) in zenoh_fds.iter().enumerate() {
            if ready[first_zenoh + i] {
                heard_zenoh(&mut report.zenoh, &sockets, sock, &mut buf);
            }
        }
    }
    Ok(report)
}

/// Reads one scouting datagram: a Scout on the group (not our own), or a Hello answering ours.
fn heard_zenoh(report: &mut ZenohReport, sockets: &Sockets, sock: &UdpSocket, buf: &mut [u8]) {
    let Ok((n, std::net::SocketAddr::V4(src))) = sock.recv_from(buf) else {
        return;
    };
    let own = match &sockets.zenoh {
        Ok(ZenohSockets { scout: Some(s), .. }) => s.local_addr().ok(),
        _ => None,
    };
    if own == Some(std::net::SocketAddr::V4(src)) {
        return;
    }
    match zenoh::decode(&buf[..n]) {
        Ok(zenoh::Message::Scout(s)) => {
            report.scouts.insert(src, s);
        }
        Ok(zenoh::Message::Hello(h)) => {
            report.hellos.insert(h.zid.clone(), (src, h));
        }
        Err(_) => {}
    }
}

fn recv_with_iface(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddrV4, u32)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let ifindex = msg
        .cmsgs()
        .ok()?
        .find_map(|c| match c {
            ControlMessageOwned::Ipv4PacketInfo(info) => Some(info.ipi_ifindex as u32),
            _ => None,
        })
        .unwrap_or(0);
    let src = msg.address.map(SocketAddrV4::from)?;
    Some((msg.bytes, src, ifindex))
}

fn heard(
    report: &mut Report,
    opts: &Options,
    pkt: &[u8],
    src: SocketAddrV4,
    iface: String,
    domain: u16,
) {
    let p = match rtps::decode_spdp(pkt) {
        Ok(p) => p,
        Err(_) => {
            report.malformed += 1;
            return;
        }
    };
    if p.guid_prefix == report.own_prefix {
        return;
    }
    let key = p.guid_prefix;
    let now = Instant::now();
    let event = match report.participants.get_mut(&key) {
        None => {
            report.participants.insert(
                key,
                Sighting {
                    participant: p,
                    source: src,
                    iface,
                    domain,
                    last_seen: now,
                    announcements: 1,
                    collision: false,
                },
            );
            "new"
        }
        Some(s) => {
            s.last_seen = now;
            s.announcements += 1;
            let same = s.participant.default_unicast == p.default_unicast
                && s.participant.metatraffic_unicast == p.metatraffic_unicast
                && s.participant.name == p.name;
            if same {
                return;
            }
            // Two processes under one GUID prefix alternate their announcements.
            s.collision = s.source.ip() == src.ip() || s.participant.name != p.name || s.collision;
            s.participant = p;
            s.source = src;
            "changed"
        }
    };
    if opts.live {
        print_event(opts, event, &report.participants[&key]);
    }
}

fn expire(report: &mut Report, opts: &Options) {
    let now = Instant::now();
    let gone: Vec<[u8; 12]> = report
        .participants
        .iter()
        .filter(|(_, s)| {
            let lease = s
                .participant
                .lease_duration
                .unwrap_or(20.0)
                .clamp(1.0, 3600.0);
            now.duration_since(s.last_seen) > Duration::from_secs_f64(lease)
        })
        .map(|(k, _)| *k)
        .collect();
    for k in gone {
        if let Some(s) = report.participants.remove(&k) {
            if opts.live {
                print_event(opts, "expired", &s);
            }
        }
    }
}

pub fn sighting_json(event: &str, s: &Sighting) -> serde_json::Value {
    let p = &s.participant;
    let locs = |v: &Vec<rtps::Locator>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({
        "event": event,
        "guidPrefix": p.guid_prefix_hex(),
        "vendor": p.vendor(),
        "vendorId": format!("{:02x}.{:02x}", p.vendor_id[0], p.vendor_id[1]),
        "protocolVersion": format!("{}.{}", p.protocol_version.0, p.protocol_version.1),
        "domain": s.domain,
        "domainId": p.domain_id,
        "name": p.name,
        "source": s.source.to_string(),
        "iface": s.iface,
        "defaultUnicast": locs(&p.default_unicast),
        "defaultMulticast": locs(&p.default_multicast),
        "metatrafficUnicast": locs(&p.metatraffic_unicast),
        "metatrafficMulticast": locs(&p.metatraffic_multicast),
        "leaseDuration": p.lease_duration,
        "collision": s.collision,
    })
}

fn print_event(opts: &Options, event: &str, s: &Sighting) {
    if opts.json {
        println!("{}", sighting_json(event, s));
    } else {
        let mark = match event {
            "new" => "+",
            "changed" => "~",
            _ => "-",
        };
        println!("{mark} {}", row(s));
    }
}

fn row(s: &Sighting) -> String {
    let p = &s.participant;
    let meta: Vec<String> = p
        .metatraffic_unicast
        .iter()
        .map(ToString::to_string)
        .collect();
    format!(
        "{:<24} {:<22} {:<4} {:<6} {:<21} {:<6} {:<24} {}",
        p.guid_prefix_hex(),
        p.vendor(),
        format!("{}.{}", p.protocol_version.0, p.protocol_version.1),
        p.domain_id
            .map(|d| d.to_string())
            .unwrap_or_else(|| s.domain.to_string()),
        s.source.to_string(),
        s.iface,
        p.name.as_deref().unwrap_or("-"),
        meta.join(",")
    )
}

/// The final table (or JSON summary line).
pub fn print_report(opts: &Options, report: &Report) {
    let hint = report.participants.is_empty().then(|| nothing_heard(opts));
    if opts.json {
        println!(
            "{}",
            json!({"event": "summary", "participants": report.participants.len(), "malformed": report.malformed,
                   "answeredBy": report.answered_by.iter().map(ToString::to_string).collect::<Vec<_>>(),
                   "hint": hint, "zenoh": zenoh_json(opts, &report.zenoh)})
        );
        return;
    }
    println!(
        "\n  {:<24} {:<22} {:<4} {:<6} {:<21} {:<6} {:<24} metatraffic unicast",
        "GUID prefix", "vendor", "RTPS", "domain", "source", "iface", "name"
    );
    for s in report.participants.values() {
        println!("  {}", row(s));
    }
    println!(
        "{} participant(s), {} malformed packet(s) skipped",
        report.participants.len(),
        report.malformed
    );
    if let Some(hint) = hint {
        println!("{hint}");
    }
    println!("{}", report.zenoh.summary(&opts.iface));
}

fn zenoh_json(opts: &Options, z: &ZenohReport) -> serde_json::Value {
    json!({
        "summary": z.summary(&opts.iface),
        "scoutsFrom": z.scouts.keys().map(ToString::to_string).collect::<Vec<_>>(),
        "hellos": z.hellos.values().map(|(src, h)| json!({
            "zid": h.zid.to_string(), "role": h.role.to_string(), "source": src.to_string(),
            "locators": h.locators,
        })).collect::<Vec<_>>(),
    })
}

/// Why a probe may have heard nobody, and what to try.
fn nothing_heard(opts: &Options) -> String {
    let domains = if opts.domains.len() == 1 {
        format!("domain {}", opts.domains[0])
    } else {
        "any domain".to_owned()
    };
    if opts.announce {
        format!(
            "No DDS participant of {domains} answered our announcement on {} within {} s: none runs on this LAN in that domain (check ROS_DOMAIN_ID, or try --all-domains), or discovery does not reach this pod: run `ros-macvlan doctor` with the same --netns.",
            opts.iface, opts.seconds
        )
    } else {
        format!(
            "Nothing heard on {} within {} s ({domains}). Listening only (--silent), the probe hears a participant at its next periodic announcement: every 8 s or more for CycloneDDS after its first seconds. Listen longer (--seconds 30), or drop --silent so peers answer the probe's announcement at once.",
            opts.iface, opts.seconds
        )
    }
}

/// A GUID prefix of our own: unique per run, never one of a real DDS vendor's.
fn own_prefix() -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(b"rmv\0");
    p[4..8].copy_from_slice(&std::process::id().to_be_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    p[8..12].copy_from_slice(&nanos.to_be_bytes());
    p
}
