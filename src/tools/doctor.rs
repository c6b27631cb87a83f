//! `ros-macvlan doctor`: checks a pod's discovery path step by step and says, for each
//! broken step, how to fix it.

use std::io;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use etherparse::Ipv4HeaderSlice;
use ipnetwork::IpNetwork;
use socket2::{Domain, Protocol, Socket, Type};

use crate::agent::client::AgentClient;
use crate::agent::records::RecordDir;
use crate::node::host_access;
use crate::plugin::config::MulticastConf;
use crate::plugin::diagnosis::{self, Expected, Finding, Verdict};
use crate::plugin::membership;
use crate::sys::netlink::{Netlink, Rtnl};
use crate::sys::netns::Netns;
use crate::tools::probe;

pub struct Options {
    pub netns: Option<String>,
    pub iface: String,
    /// Where the node agent answers: a membership it holds for the pod must be joined.
    pub agent_socket: PathBuf,
    pub domain: u16,
    pub seconds: f64,
}

/// Runs every check; the live probe only when the interface is usable at all.
pub fn run(opts: &Options) -> Vec<Finding> {
    let ns = match opts
        .netns
        .as_deref()
        .map(Netns::open)
        .unwrap_or_else(Netns::current)
    {
        Ok(ns) => ns,
        Err(e) => {
            return vec![Finding::fail(
                "netns",
                e.to_string(),
                "pass the pod's netns path with --netns".into(),
            )]
        }
    };
    let mut checks = match static_checks(&ns, opts) {
        Ok(c) => c,
        Err(e) => vec![Finding::fail(
            "netlink",
            e.to_string(),
            "run doctor as root".into(),
        )],
    };
    checks.extend(address_conflict(&ns, opts));
    if checks
        .iter()
        .any(|c| c.check == diagnosis::INTERFACE && c.verdict == Verdict::Fail)
    {
        return checks;
    }
    checks.extend(live_checks(&ns, opts));
    // Zenoh relay (issue 24): on a pod of a `zenoh` network, its localhost:7447 answers.
    checks.extend(zenoh_relay_check(&ns, &opts.agent_socket));
    checks
}

/// The pod's discovery path as CHECK sees it, with the defaults of a config (the ROS 2
/// discovery group, 224.0.0.0/4, loose rp_filter, other interfaces marked), the master the
/// attachment sits on when it is in the pod, and a membership expected when the node agent
/// holds one for this interface of this pod.
fn static_checks(ns: &Netns, opts: &Options) -> crate::cni::Result<Vec<Finding>> {
    let nl = Netlink::connect(ns)?;
    let defaults = MulticastConf::default();
    // A `linkInContainer` attachment's master is in the pod: on the LAN, no rival.
    let master_in_pod = nl.link_by_name(&opts.iface)?.and_then(|l| l.lower_here);
    diagnosis::diagnose(
        &nl,
        ns,
        &Expected {
            ifname: &opts.iface,
            multicast: &defaults,
            master_in_pod,
            membership_held: membership::held_by_agent(
                &AgentClient::new(&opts.agent_socket),
                ns,
                &opts.iface,
            ),
        },
    )
}

/// What the node agent's watch says of the pod's addresses on the LAN: found claimed by
/// another MAC is a failure (`lan_watch`); nothing is said where the agent holds no record
/// of this interface of this pod.
fn address_conflict(ns: &Netns, opts: &Options) -> Option<Finding> {
    let inode = ns.inode().ok()?;
    let record = RecordDir::beside(&opts.agent_socket)
        .list()
        .ok()?
        .into_iter()
        .find(|r| r.netns_inode == inode && r.ifname == opts.iface)?;
    let lan = crate::agent::lan_state::LanState::beside(&opts.agent_socket);
    Some(match lan.conflict(&record.key()) {
        Some(c) => Finding::fail(
            "address conflict",
            c.describe(&opts.iface),
            "remove the address from the other host (or keep the range clear of it), then delete and re-create the pod".into(),
        ),
        None => Finding::pass(
            "address conflict",
            format!(
                "the node agent hears nobody else claim {:?} on the LAN",
                record.lan.addresses
            ),
        ),
    })
}

fn live_checks(ns: &Netns, opts: &Options) -> Vec<Finding> {
    let querier = IgmpWatch::open(ns);
    let popts = probe::Options {
        netns: Some(ns.path().to_owned()),
        iface: opts.iface.clone(),
        domains: vec![opts.domain],
        seconds: opts.seconds,
        json: false,
        announce: true,
        live: false,
    };
    let mut out = Vec::new();
    let report = match probe::run(&popts) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::fail(
                "live probe",
                e.to_string(),
                "run doctor as root in the pod's netns".into(),
            ));
            return out;
        }
    };
    let own_subnets = subnets_of(ns, &opts.iface).unwrap_or_default();
    let peers: Vec<&probe::Sighting> = report.participants.values().collect();
    out.push(if peers.is_empty() {
        Finding::warn(
            "participants",
            format!("no DDS participant heard on domain {} in {} s", opts.domain, opts.seconds),
            "start a ROS 2 node in another pod on the same network (same ROS_DOMAIN_ID), or check the switch and the other pods with doctor".into(),
        )
    } else {
        let names: Vec<String> = peers
            .iter()
            .map(|s| format!("{} {} from {}", s.participant.vendor(), s.participant.guid_prefix_hex(), s.source.ip()))
            .collect();
        Finding::pass("participants", format!("{} heard: {}", peers.len(), names.join("; ")))
    });
    for s in &peers {
        let unreachable: Vec<String> = s
            .participant
            .locators()
            .filter(|l| {
                l.kind == 1
                    && !l.address.is_multicast()
                    && !l.address.is_unspecified()
                    && !own_subnets.iter().any(|n| n.contains(l.address))
            })
            .map(ToString::to_string)
            .collect();
        if !unreachable.is_empty() {
            out.push(Finding::fail(
                "locators",
                format!("{} announces {} outside {}'s subnets: peers cannot reach it there", s.participant.guid_prefix_hex(), unreachable.join(", "), opts.iface),
                "make that participant use the ros-macvlan interface (CycloneDDS: mark other interfaces non-multicast, or set its network interface to net1)".into(),
            ));
        }
        if s.collision {
            out.push(Finding::fail(
                "guid collision",
                format!("two participants announce GUID prefix {} from {}", s.participant.guid_prefix_hex(), s.source.ip()),
                "older Fast DDS gives two processes in one pod the same GUID: share the pod's process namespace (shareProcessNamespace: true) or upgrade".into(),
            ));
        }
        let real_dds = s.participant.vendor_id != [0, 0];
        if real_dds {
            if let IpAddr::V4(src) = IpAddr::V4(*s.source.ip()) {
                if !report.answered_by.contains(&src) {
                    out.push(Finding::fail(
                        "one-way discovery",
                        format!("{} at {src} is heard here but never answered this pod's announcement", s.participant.guid_prefix_hex()),
                        "run doctor in that pod: its membership, route or rp_filter likely drops our discovery".into(),
                    ));
                }
            }
        }
    }
    // Zenoh needs no multicast unless its sessions scout (rmw_zenoh's default does not):
    // what the probe heard is information, never a failure.
    out.push(Finding::pass("zenoh", report.zenoh.summary(&opts.iface)));
    out.push(match querier.map(|q| q.seen()) {
        Some(Some(from)) => Finding::pass("igmp querier", format!("queries seen from {from}")),
        _ => Finding::warn(
            "igmp querier",
            format!("no IGMP query seen in {} s (queriers ask every 125 s by default)", opts.seconds),
            "without a querier, snooping switches age memberships out after ~260 s and discovery stops: enable the switch's IGMP querier".into(),
        ),
    });
    out
}

fn subnets_of(ns: &Netns, iface: &str) -> Option<Vec<IpNetwork>> {
    let name = iface.to_owned();
    ns.run(move || {
        nix::ifaddrs::getifaddrs().ok().map(|addrs| {
            addrs
                .filter(|a| a.interface_name == name)
                .filter_map(|a| {
                    let ip = a.address?.as_sockaddr_in()?.ip();
                    let mask = a.netmask?.as_sockaddr_in()?.ip();
                    IpNetwork::with_netmask(IpAddr::V4(ip), IpAddr::V4(mask)).ok()
                })
                .collect()
        })
    })
    .ok()
    .flatten()
}

/// A raw IGMP socket opened before the probe: membership queries arriving meanwhile queue up.
struct IgmpWatch(Socket);

/// IGMP's type for a membership query (RFC 2236, RFC 3376).
const IGMP_MEMBERSHIP_QUERY: u8 = 0x11;

impl IgmpWatch {
    fn open(ns: &Netns) -> Option<IgmpWatch> {
        ns.run(|| {
            Socket::new(
                Domain::IPV4,
                Type::RAW.nonblocking(),
                Some(Protocol::from(nix::libc::IPPROTO_IGMP)),
            )
            .ok()
            .map(IgmpWatch)
        })
        .ok()
        .flatten()
    }

    /// The source of the first membership query received, if any.
    fn seen(&self) -> Option<Ipv4Addr> {
        let mut buf = [0u8; 1500];
        loop {
            let n = (&self.0).read(&mut buf).ok().filter(|n| *n > 0)?;
            let Ok(ip) = Ipv4HeaderSlice::from_slice(&buf[..n]) else {
                continue;
            };
            if buf[ip.slice().len()..n].first() == Some(&IGMP_MEMBERSHIP_QUERY) {
                return Some(ip.source_addr());
            }
        }
    }
}

pub fn print(checks: &[Finding]) -> i32 {
    let mut failed = false;
    for c in checks {
        let tag = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => {
                failed = true;
                "FAIL"
            }
        };
        println!("{tag} {:<18} {}", c.check, c.detail);
        if let Some(fix) = &c.fix {
            println!("     {:<18} fix: {fix}", "");
        }
    }
    if failed {
        1
    } else {
        0
    }
}

/// `doctor --host`, run on the node: its host-access shims, their routes, which interface
/// the node's own DDS would pick, and a live probe from the shim.
pub fn host(domain: u16, seconds: f64) -> Vec<Finding> {
    match host_static_checks() {
        Ok((mut checks, Some(shim))) => {
            checks.extend(host_probe(&shim, domain, seconds));
            checks
        }
        Ok((checks, None)) => checks,
        Err(e) => vec![Finding::fail(
            "netlink",
            e.to_string(),
            "run doctor as root on the node".into(),
        )],
    }
}

/// The static checks, and the shim a live probe can use (up, with an address).
fn host_static_checks() -> crate::cni::Result<(Vec<Finding>, Option<host_access::ShimState>)> {
    let nl = Netlink::here()?;
    let mut out = Vec::new();
    let configured = match crate::node::policy::Policy::load() {
        Ok(p) => p.map(|p| p.host_access().to_vec()).unwrap_or_default(),
        Err(e) => {
            out.push(Finding::fail(
                "node configuration",
                e.to_string(),
                "fix the node policy file".into(),
            ));
            Vec::new()
        }
    };
    let shims = host_access::shims(&nl)?;
    let setup = "ros-macvlan host-access --master IF --address CIDR --pod-range CIDR (or a hostAccess entry in the node policy, kept by the node agent)";
    if shims.is_empty() && configured.is_empty() {
        out.push(Finding::fail(
            "shim",
            "no host-access shim on this node: its own processes cannot reach its pods (a macvlan's master never delivers to its macvlans)".into(),
            setup.into(),
        ));
        return Ok((out, None));
    }
    for spec in &configured {
        if !shims.iter().any(|s| s.link.name == spec.shim_name()) {
            out.push(Finding::fail(
                "shim",
                format!(
                    "{} for master {} is in the node configuration but missing",
                    spec.shim_name(),
                    spec.master
                ),
                "run the node agent (it puts the shim back within 2 s) and read its log".into(),
            ));
        }
    }
    let mut usable = None;
    for shim in shims {
        let name = shim.link.name.clone();
        out.push(Finding::pass(
            "shim",
            format!(
                "{name}: macvlan ({}) with MAC {}",
                crate::sys::netlink::mode_name(shim.link.macvlan_mode),
                shim.link
                    .mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            ),
        ));
        out.push(if shim.link.is_up() {
            Finding::pass("shim up", format!("{name} is up"))
        } else {
            Finding::fail(
                "shim up",
                format!("{name} is down"),
                format!("ip link set {name} up (the node agent does it within 2 s)"),
            )
        });
        let Some(address) = shim.addresses.first().copied() else {
            out.push(Finding::fail(
                "shim address",
                format!("{name} has no IPv4 address"),
                setup.into(),
            ));
            continue;
        };
        out.push(Finding::pass(
            "shim address",
            format!("{name} has {address}"),
        ));
        let missing: Vec<String> = shim
            .ranges
            .iter()
            .filter(|(_, routed)| !routed)
            .map(|(r, _)| r.to_string())
            .collect();
        out.push(if missing.is_empty() {
            let ranges: Vec<String> = shim.ranges.iter().map(|(r, _)| r.to_string()).collect();
            Finding::pass(
                "pod routes",
                format!("{} routed through {name}", ranges.join(", ")),
            )
        } else {
            Finding::fail(
                "pod routes",
                format!("{} not routed through {name}", missing.join(", ")),
                missing
                    .iter()
                    .map(|r| format!("ip route add {r} dev {name} src {address}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        });
        if shim.link.is_up() && usable.is_none() {
            usable = Some(shim);
        }
    }
    if let Some(shim) = &usable {
        out.push(node_dds_choice(&nl, shim)?);
    }
    Ok((out, usable))
}

/// Which interface CycloneDDS on the node would pick: it ranks the up, multicast-capable
/// interfaces with an IPv4 address, and takes another one over the shim "arbitrarily".
fn node_dds_choice(nl: &Netlink, shim: &host_access::ShimState) -> crate::cni::Result<Finding> {
    let addressed: Vec<u32> = nl
        .addresses(None)?
        .into_iter()
        .filter(|(_, a)| a.is_ipv4())
        .map(|(i, _)| i)
        .collect();
    let rivals: Vec<String> = nl
        .links()?
        .into_iter()
        .filter(|l| {
            l.is_up()
                && l.is_multicast()
                && !l.is_loopback()
                && host_access::shim_ranges(l).is_none()
                && addressed.contains(&l.index)
        })
        .map(|l| l.name)
        .collect();
    let name = &shim.link.name;
    Ok(if rivals.is_empty() {
        Finding::pass(
            "node DDS interface",
            format!("{name} is the node's only multicast-capable interface with an address: CycloneDDS and Fast DDS on the node use it"),
        )
    } else {
        Finding::warn(
            "node DDS interface",
            format!("{} also multicast-capable: Fast DDS on the node uses every interface and reaches the pods, CycloneDDS may pick {} instead of {name} and miss them", rivals.join(", "), rivals[0]),
            format!("host-access --exclusive-multicast, or CYCLONEDDS_URI='<CycloneDDS><Domain><General><Interfaces><NetworkInterface name=\"{name}\"/></Interfaces></General></Domain></CycloneDDS>' for the node's CycloneDDS processes"),
        )
    })
}

/// Announces a participant from the shim and lists the pods' participants heard there.
fn host_probe(shim: &host_access::ShimState, domain: u16, seconds: f64) -> Vec<Finding> {
    let popts = probe::Options {
        netns: None,
        iface: shim.link.name.clone(),
        domains: vec![domain],
        seconds,
        json: false,
        announce: true,
        live: false,
    };
    let report = match probe::run(&popts) {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding::fail(
                "live probe",
                e.to_string(),
                "run doctor --host as root on the node".into(),
            )]
        }
    };
    let in_pod_range = |ip: Ipv4Addr| shim.ranges.iter().any(|(r, _)| r.contains(ip));
    let pods: Vec<String> = report
        .participants
        .values()
        .filter(|s| in_pod_range(*s.source.ip()))
        .map(|s| {
            let answered = if report.answered_by.contains(s.source.ip()) {
                ", answered the node"
            } else {
                ""
            };
            format!(
                "{} {} from {}{answered}",
                s.participant.vendor(),
                s.participant.guid_prefix_hex(),
                s.source.ip()
            )
        })
        .collect();
    vec![if pods.is_empty() {
        Finding::warn(
            "live probe",
            format!(
                "no pod's DDS participant heard through {} on domain {domain} in {seconds} s",
                shim.link.name
            ),
            "start a ROS 2 node in a pod on this node (same ROS_DOMAIN_ID), then run doctor --host again".into(),
        )
    } else {
        Finding::pass(
            "live probe",
            format!(
                "{} pod participant(s) heard through {}: {}",
                pods.len(),
                shim.link.name,
                pods.join("; ")
            ),
        )
    }]
}

/// doctor: on a pod the agent relays for, whether its localhost answers: a connection to
/// each relayed address is accepted and stays open (the router waits for the session's
/// handshake), rather than being closed (no router behind the relay).
fn zenoh_relay_check(ns: &Netns, agent_socket: &std::path::Path) -> Option<Finding> {
    let record = AgentClient::new(agent_socket).relay_in(ns)?;
    let mut problems = Vec::new();
    for addr in &record.listen {
        let answered = ns
            .run(|| std::net::TcpStream::connect_timeout(addr, crate::agent::relays::ROUTER_WAIT))
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        match answered.and_then(|s| stays_open(&s)) {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "{addr} accepted, then closed: no router answers the relay"
            )),
            Err(e) => problems.push(format!("{addr}: {e}")),
        }
    }
    let addrs: Vec<String> = record.listen.iter().map(|a| a.to_string()).collect();
    Some(if problems.is_empty() {
        Finding::pass(
            "zenoh router",
            format!(
                "{} answers (the node agent relays it to the pod's Zenoh router {}; network {})",
                addrs.join(" and "),
                record
                    .router
                    .map_or_else(|| "?".to_owned(), |r| r.to_string()),
                record.attachment.network
            ),
        )
    } else {
        Finding::fail(
            "zenoh router",
            problems.join("; "),
            format!(
                "check that the node's Zenoh routers run (conf/zenoh-router-daemonset.yaml), this pod's at {} (the agent's --zenoh-routers), and the agent's log",
                record.router.map_or_else(|| "?".to_owned(), |r| r.to_string())
            ),
        )
    })
}

/// Whether the peer keeps a fresh connection open for a moment.
fn stays_open(stream: &std::net::TcpStream) -> io::Result<bool> {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    match (&*stream).read(&mut [0u8; 1]) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(false),
        Err(e) => Err(e),
    }
}
