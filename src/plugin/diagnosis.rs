//! The one diagnosis of a pod's discovery path: from the pod's links, addresses, routes,
//! rp_filter and IGMP memberships, a finding per step, each with what fixes it. CHECK asks
//! it with the config's expectations and answers the first failure (code 104); `doctor`
//! asks it with the defaults and prints every finding. One rule set, so the two agree.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::RouteType;

use crate::cni::{Error, Kind, Result};
use crate::plugin::config::MulticastConf;
use crate::plugin::multicast;
use crate::sys::netlink::{Link, Rtnl, TABLE_LOCAL, TABLE_MAIN};
use crate::sys::netns::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: &'static str, detail: String) -> Finding {
        Finding {
            check,
            verdict: Verdict::Pass,
            detail,
            fix: None,
        }
    }

    pub fn warn(check: &'static str, detail: String, fix: String) -> Finding {
        Finding {
            check,
            verdict: Verdict::Warn,
            detail,
            fix: Some(fix),
        }
    }

    pub fn fail(check: &'static str, detail: String, fix: String) -> Finding {
        Finding {
            check,
            verdict: Verdict::Fail,
            detail,
            fix: Some(fix),
        }
    }

    /// A Fail where the expectation asks for the step, a Warn where it does not (the
    /// config turned that part off: CHECK must not fail on it, doctor still says it).
    fn broken(wanted: bool, check: &'static str, detail: String, fix: String) -> Finding {
        if wanted {
            Finding::fail(check, detail, fix)
        } else {
            Finding::warn(check, detail, fix)
        }
    }
}

/// The names of the checks, as CHECK's errors and doctor's lines show them.
pub const INTERFACE: &str = "interface";
pub const GROUP_ADDRESS: &str = "group address";
pub const MEMBERSHIP: &str = "membership";
pub const ROUTE: &str = "route";
pub const RP_FILTER: &str = "rp_filter";
pub const INTERFACE_CHOICE: &str = "interface choice";

/// What the pod should look like.
pub struct Expected<'a> {
    /// The attachment's interface (CNI_IFNAME; doctor's --iface).
    pub ifname: &'a str,
    /// Groups, multicast routes, loose rp_filter wanted, other interfaces marked wanted.
    pub multicast: &'a MulticastConf,
    /// The master when it lives in the pod (`linkInContainer`): on the LAN, not a rival.
    pub master_in_pod: Option<u32>,
    /// A node agent holds this attachment's membership: not joined is then a failure.
    /// Without one, DDS processes join the groups themselves, so it is a warning.
    pub membership_held: bool,
}

/// The per-namespace files of /proc the diagnosis reads: rp_filter and the IGMP table.
pub trait Procfs {
    /// /proc/sys/net/ipv4/conf/<conf>/rp_filter (`conf` is "all" or an interface).
    fn rp_filter(&self, conf: &str) -> Result<u8>;
    /// The groups /proc/net/igmp lists as joined on `ifname`.
    fn joined_groups(&self, ifname: &str) -> Result<Vec<Ipv4Addr>>;
}

impl Procfs for Netns {
    fn rp_filter(&self, conf: &str) -> Result<u8> {
        let path = format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter");
        let text = self
            .run(|| std::fs::read_to_string(&path))?
            .map_err(|e| Error::io(format!("read {path}"), e))?;
        text.trim().parse().map_err(|_| {
            Error::new(
                Kind::Io,
                format!("{path} holds {:?}, not a number", text.trim()),
            )
        })
    }

    fn joined_groups(&self, ifname: &str) -> Result<Vec<Ipv4Addr>> {
        multicast::joined_groups(self, ifname)
    }
}

/// rp_filter 1: strict. The kernel applies the larger of `all` and the interface's value.
const RP_FILTER_STRICT: u8 = 1;

/// Every finding, in the order of the path: the interface, what DDS reads of it (group
/// addresses), the membership, the routes, rp_filter, the interface DDS chooses. Without
/// a usable interface, the interface finding is the only one.
pub fn diagnose(nl: &dyn Rtnl, proc: &dyn Procfs, want: &Expected) -> Result<Vec<Finding>> {
    let links = nl.links()?;
    let Some(link) = links.iter().find(|l| l.name == want.ifname) else {
        return Ok(vec![Finding::fail(
            INTERFACE,
            format!("{} does not exist in the pod", want.ifname),
            "annotate the pod with k8s.v1.cni.cncf.io/networks: <your ros-macvlan NetworkAttachmentDefinition>".into(),
        )]);
    };
    let addresses = nl.addresses(None)?;
    let mut out = vec![interface(link, &addresses)];
    if out[0].verdict == Verdict::Fail {
        return Ok(out);
    }
    out.push(group_address(&links, &addresses));
    out.push(membership(proc, want)?);
    out.push(route(nl, &links, link, want)?);
    out.push(rp_filter(proc, want)?);
    out.push(interface_choice(&links, want));
    Ok(out)
}

/// CHECK's answer: the first failure, as a CNI error naming its check.
pub fn first_failure(findings: &[Finding]) -> Result<()> {
    match findings.iter().find(|f| f.verdict == Verdict::Fail) {
        Some(f) => Err(Error::new(
            Kind::CheckFailed,
            format!("{}: {}", f.check, f.detail),
        )),
        None => Ok(()),
    }
}

/// Up, with an IPv4 address. An attachment without IPv4 (an IPv6-only ipam) is one ADD
/// makes, so only a warning: DDS's IPv4 discovery then leaves with another interface's
/// address.
fn interface(link: &Link, addresses: &[(u32, IpNetwork)]) -> Finding {
    let v4 = addresses
        .iter()
        .find(|(i, a)| *i == link.index && a.is_ipv4() && !a.ip().is_multicast());
    match (link.is_up(), v4) {
        (false, _) => Finding::fail(
            INTERFACE,
            format!("{} is down", link.name),
            format!("ip link set {} up", link.name),
        ),
        (true, Some((_, a))) => Finding::pass(INTERFACE, format!("{} is up with {a}", link.name)),
        (true, None) => Finding::warn(
            INTERFACE,
            format!(
                "{} has no IPv4 address: IPv4 discovery leaves with another interface's",
                link.name
            ),
            "give the attachment's ipam section an IPv4 range".into(),
        ),
    }
}

/// A multicast group held as an interface address (the "auto-join" address of earlier
/// versions): Fast DDS lists the pod's addresses, takes the group for a local address and
/// sends its discovery to 127.0.0.1. On any interface of the pod.
fn group_address(links: &[Link], addresses: &[(u32, IpNetwork)]) -> Finding {
    let held = addresses.iter().find(|(_, a)| a.ip().is_multicast());
    match held {
        Some((index, a)) => {
            let name = name_of(links, *index);
            Finding::fail(
                GROUP_ADDRESS,
                format!("{name} carries the multicast group {a} as an address (left by an earlier ros-macvlan): Fast DDS takes it for a local address and sends its discovery to 127.0.0.1"),
                format!("ip addr del {a} dev {name} (then the node agent holds the membership; re-created pods never get the address)"),
            )
        }
        None => Finding::pass(
            GROUP_ADDRESS,
            "no multicast group is held as an interface address".into(),
        ),
    }
}

fn membership(proc: &dyn Procfs, want: &Expected) -> Result<Finding> {
    let groups = &want.multicast.groups;
    let ifname = want.ifname;
    if groups.is_empty() {
        return Ok(Finding::pass(MEMBERSHIP, "no group asked for".into()));
    }
    let joined = proc.joined_groups(ifname)?;
    let Some(missing) = groups.iter().find(|g| !joined.contains(g)) else {
        let list: Vec<String> = groups.iter().map(ToString::to_string).collect();
        return Ok(Finding::pass(
            MEMBERSHIP,
            format!(
                "{} joined on {ifname} (the switch is told to forward discovery)",
                list.join(", ")
            ),
        ));
    };
    Ok(if want.membership_held {
        Finding::fail(
            MEMBERSHIP,
            format!("the node agent holds {ifname}'s membership, yet {ifname} has not joined {missing} (/proc/net/igmp): IGMP-snooping switches stop forwarding discovery here"),
            "restart the node agent (`ros-macvlan agent`): it joins the groups of every attachment again from its records".into(),
        )
    } else {
        Finding::warn(
            MEMBERSHIP,
            format!("{missing} is not joined on {ifname}: IGMP-snooping switches forward discovery here only while a DDS process in the pod has joined it"),
            format!("run the node agent (`ros-macvlan agent`, the ros-macvlan DaemonSet's process): it holds the membership of every attachment, also of pods started before it (check: {ifname} in /proc/net/igmp of the pod)"),
        )
    })
}

/// Whether multicast leaving through `index` reaches the LAN: through the attachment, or
/// through another macvlan of the pod (a pod's first attachment carries the routes for
/// every attachment of the same groups).
fn leaves_on_lan(links: &[Link], attachment: &Link, index: Option<u32>) -> bool {
    index == Some(attachment.index)
        || links
            .iter()
            .any(|l| Some(l.index) == index && l.is_macvlan())
}

fn route(nl: &dyn Rtnl, links: &[Link], link: &Link, want: &Expected) -> Result<Finding> {
    let mc = want.multicast;
    let ifname = &link.name;
    if let Some(r) = nl.routes_v4(TABLE_LOCAL)?.iter().find(|r| {
        r.kind == RouteType::Local
            && r.dst.prefix() == 32
            && matches!(r.dst.ip(), IpAddr::V4(g) if mc.groups.contains(&g))
    }) {
        let dev = r.oif.map_or_else(|| ifname.clone(), |i| name_of(links, i));
        return Ok(Finding::fail(
            ROUTE,
            format!(
                "local route for {}: the pod's own discovery sends loop back and never leave",
                r.dst.ip()
            ),
            format!("ip route del local {} dev {dev} table local", r.dst.ip()),
        ));
    }
    let main = nl.routes_v4(TABLE_MAIN)?;
    let add_fix =
        |dst: &dyn std::fmt::Display| format!("ip route add {dst} dev {ifname} scope link");
    for dst in &mc.routes {
        let found = main.iter().any(|r| {
            r.dst == IpNetwork::V4(*dst) && r.gw.is_none() && leaves_on_lan(links, link, r.oif)
        });
        if !found {
            return Ok(Finding::fail(
                ROUTE,
                format!("multicast route {dst} out {ifname} is missing"),
                add_fix(dst),
            ));
        }
    }
    for group in &mc.groups {
        let chosen = main
            .iter()
            .filter(|r| r.dst.contains(IpAddr::V4(*group)))
            .max_by_key(|r| r.dst.prefix());
        match chosen {
            Some(r) if leaves_on_lan(links, link, r.oif) => {}
            other => {
                let via = other.and_then(|r| r.oif).map_or_else(
                    || "no route".into(),
                    |i| format!("via {}", name_of(links, i)),
                );
                return Ok(Finding::broken(
                    !mc.routes.is_empty(),
                    ROUTE,
                    format!("multicast to {group} does not leave through {ifname} ({via})"),
                    add_fix(&"224.0.0.0/4"),
                ));
            }
        }
    }
    let what: Vec<String> = mc.groups.iter().map(ToString::to_string).collect();
    Ok(Finding::pass(
        ROUTE,
        format!(
            "multicast to {} leaves through {ifname} or the pod's macvlan that carries the routes",
            if what.is_empty() {
                "the routed groups".into()
            } else {
                what.join(", ")
            }
        ),
    ))
}

fn rp_filter(proc: &dyn Procfs, want: &Expected) -> Result<Finding> {
    let ifname = want.ifname;
    let all = proc.rp_filter("all")?;
    let own = proc.rp_filter(ifname)?;
    let effective = all.max(own);
    Ok(if effective == RP_FILTER_STRICT {
        Finding::broken(
            want.multicast.loose_rp_filter,
            RP_FILTER,
            format!("rp_filter on {ifname} is strict (1; all={all}, {ifname}={own}): discovery from peers whose route points elsewhere is dropped"),
            if all == RP_FILTER_STRICT {
                format!("sysctl -w net.ipv4.conf.{ifname}.rp_filter=2 (the kernel takes the larger of all and {ifname}: 2 beats all=1)")
            } else {
                format!("sysctl -w net.ipv4.conf.{ifname}.rp_filter=2")
            },
        )
    } else {
        Finding::pass(
            RP_FILTER,
            format!("rp_filter on {ifname} is {effective} (all={all}, {ifname}={own})"),
        )
    })
}

/// The interfaces DDS could choose instead: up (DDS skips down ones) and multicast-capable
/// among the candidates that ADD marks.
fn interface_choice(links: &[Link], want: &Expected) -> Finding {
    let ifname = want.ifname;
    let rivals: Vec<&str> = links
        .iter()
        .filter(|l| multicast::is_candidate(l, ifname, want.master_in_pod))
        .filter(|l| l.is_up() && l.is_multicast())
        .map(|l| l.name.as_str())
        .collect();
    if rivals.is_empty() {
        Finding::pass(
            INTERFACE_CHOICE,
            format!("{ifname} is the only multicast-capable interface: DDS picks it"),
        )
    } else {
        Finding::broken(
            want.multicast.mark_other_interfaces,
            INTERFACE_CHOICE,
            format!("{} also multicast-capable: CycloneDDS may pick it \"arbitrarily\" instead of {ifname} and miss every peer", rivals.join(", ")),
            format!("ip link set {} multicast off (ros-macvlan does this by default: multicast.markOtherInterfaces)", rivals.join(" ")),
        )
    }
}

fn name_of(links: &[Link], index: u32) -> String {
    links
        .iter()
        .find(|l| l.index == index)
        .map_or_else(|| format!("interface {index}"), |l| l.name.clone())
}

/// The pod's /proc in memory, for the unit tests of the diagnosis and of CHECK.
#[cfg(test)]
pub(crate) mod test_support {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::Procfs;
    use crate::cni::Result;

    /// The pod's /proc: rp_filter per conf and the groups joined on each interface.
    #[derive(Default)]
    pub struct FakeProc {
        rp_filter: RefCell<HashMap<String, u8>>,
        joined: RefCell<HashMap<String, Vec<Ipv4Addr>>>,
    }

    impl FakeProc {
        pub fn set_rp_filter(&self, conf: &str, value: u8) {
            self.rp_filter.borrow_mut().insert(conf.into(), value);
        }
        pub fn set_joined(&self, ifname: &str, groups: &[Ipv4Addr]) {
            self.joined
                .borrow_mut()
                .insert(ifname.into(), groups.to_vec());
        }
    }

    impl Procfs for FakeProc {
        fn rp_filter(&self, conf: &str) -> Result<u8> {
            Ok(self.rp_filter.borrow().get(conf).copied().unwrap_or(0))
        }
        fn joined_groups(&self, ifname: &str) -> Result<Vec<Ipv4Addr>> {
            Ok(self
                .joined
                .borrow()
                .get(ifname)
                .cloned()
                .unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::FakeProc;
    use super::*;
    use crate::plugin::config::MacvlanConf;
    use crate::sys::netlink::testing::Fake;
    use crate::sys::netlink::{route_out, LinkChange, Op, RouteEntry, TABLE_LOCAL};
    use netlink_packet_route::link::{InfoKind, LinkFlags};
    use netlink_packet_route::route::RouteScope;

    const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

    struct Pod {
        nl: Fake,
        proc: FakeProc,
        eth0: u32,
        net1: u32,
    }

    /// A pod as ADD leaves it: eth0 marked off multicast, net1 up with its address and the
    /// multicast route, rp_filter loose, the group joined.
    fn healthy() -> Pod {
        let nl = Fake::new();
        nl.with_link("lo", None, LinkFlags::Up | LinkFlags::Loopback);
        let eth0 = nl.with_link("eth0", Some(InfoKind::Veth), LinkFlags::Up);
        let net1 = nl.with_link(
            "net1",
            Some(InfoKind::MacVlan),
            LinkFlags::Up | LinkFlags::Multicast,
        );
        nl.with_address(eth0, "203.0.113.5/24".parse().unwrap());
        nl.with_address(net1, "198.51.100.160/24".parse().unwrap());
        nl.apply(vec![Op::add_route(
            net1,
            "224.0.0.0/4".parse().unwrap(),
            None,
        )])
        .unwrap();
        let proc = FakeProc::default();
        proc.set_rp_filter("net1", 2);
        proc.set_joined("net1", &[GROUP]);
        Pod {
            nl,
            proc,
            eth0,
            net1,
        }
    }

    /// The config a runtime passes (the guide's: every multicast default).
    fn config() -> MacvlanConf {
        MacvlanConf::parse(
            br#"{"cniVersion":"1.0.0","name":"ros-net","type":"ros-macvlan","master":"lan0",
                 "ipam":{"type":"host-local","ranges":[[{"subnet":"198.51.100.0/24"}]]}}"#,
        )
        .unwrap()
    }

    /// CHECK's verdict (with the config's expectations) and doctor's findings (with the
    /// defaults), for a pod whose membership a node agent holds or not.
    fn both(pod: &Pod, held: bool) -> (Result<()>, Vec<Finding>) {
        let conf = config();
        let check = diagnose(
            &pod.nl,
            &pod.proc,
            &Expected {
                ifname: "net1",
                multicast: &conf.multicast,
                master_in_pod: None,
                membership_held: held,
            },
        )
        .and_then(|f| first_failure(&f));
        let defaults = MulticastConf::default();
        let doctor = diagnose(
            &pod.nl,
            &pod.proc,
            &Expected {
                ifname: "net1",
                multicast: &defaults,
                master_in_pod: None,
                membership_held: held,
            },
        )
        .unwrap();
        (check, doctor)
    }

    fn verdict_of(findings: &[Finding], check: &str) -> Option<Verdict> {
        findings
            .iter()
            .find(|f| f.check == check)
            .map(|f| f.verdict)
    }

    /// Both fail, CHECK with code 104 naming `check`, doctor with a Fail of `check` (and
    /// its fix) and no other.
    fn assert_both_fail(pod: &Pod, held: bool, check: &str) {
        let (answer, findings) = both(pod, held);
        let e = answer.expect_err(check);
        assert_eq!(e.kind(), Kind::CheckFailed, "{e}");
        assert_eq!(e.code(), 104);
        assert!(e.to_string().starts_with(&format!("{check}: ")), "{e}");
        let failed: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .collect();
        assert_eq!(failed.len(), 1, "{findings:#?}");
        assert_eq!(failed[0].check, check);
        assert!(failed[0].fix.is_some());
        assert!(e.to_string().contains(&failed[0].detail));
    }

    fn assert_both_pass(pod: &Pod, held: bool) {
        let (answer, findings) = both(pod, held);
        answer.unwrap();
        assert!(
            findings.iter().all(|f| f.verdict == Verdict::Pass),
            "{findings:#?}"
        );
        assert_eq!(findings.len(), 6, "every step is reported: {findings:#?}");
    }

    #[test]
    fn a_healthy_pod_passes_both() {
        let pod = healthy();
        assert_both_pass(&pod, true);
        assert_both_pass(&pod, false);
    }

    #[test]
    fn no_route_fails_route() {
        let pod = healthy();
        pod.nl
            .apply(vec![Op::del_route(&route_out(
                pod.net1,
                "224.0.0.0/4".parse().unwrap(),
                None,
            ))])
            .unwrap();
        assert_both_fail(&pod, true, ROUTE);
    }

    #[test]
    fn a_more_specific_route_elsewhere_fails_route() {
        let pod = healthy();
        pod.nl
            .apply(vec![Op::add_route(
                pod.eth0,
                "239.255.0.0/16".parse().unwrap(),
                None,
            )])
            .unwrap();
        assert_both_fail(&pod, true, ROUTE);
        let (_, findings) = both(&pod, true);
        assert!(findings.iter().any(|f| f.detail.contains("via eth0")));
    }

    #[test]
    fn routes_carried_by_the_pods_first_attachment_pass_for_the_second() {
        let pod = healthy();
        let net2 = pod.nl.with_link(
            "net2",
            Some(InfoKind::MacVlan),
            LinkFlags::Up | LinkFlags::Multicast,
        );
        pod.nl
            .with_address(net2, "203.0.113.160/24".parse().unwrap());
        pod.proc.set_rp_filter("net2", 2);
        pod.proc.set_joined("net2", &[GROUP]);
        let findings = diagnose(
            &pod.nl,
            &pod.proc,
            &Expected {
                ifname: "net2",
                multicast: &MulticastConf::default(),
                master_in_pod: None,
                membership_held: true,
            },
        )
        .unwrap();
        first_failure(&findings).unwrap();
    }

    #[test]
    fn a_local_route_of_the_group_fails_route() {
        let pod = healthy();
        pod.nl.with_route(RouteEntry {
            dst: "239.255.0.1/32".parse().unwrap(),
            gw: None,
            oif: Some(pod.net1),
            table: TABLE_LOCAL,
            kind: RouteType::Local,
            scope: RouteScope::Host,
        });
        assert_both_fail(&pod, true, ROUTE);
    }

    #[test]
    fn strict_rp_filter_is_the_larger_of_all_and_the_interface() {
        let pod = healthy();
        // all=1 and net1=1: strict.
        pod.proc.set_rp_filter("all", 1);
        pod.proc.set_rp_filter("net1", 1);
        assert_both_fail(&pod, true, RP_FILTER);
        // all=1 alone makes net1's 0 strict too (the kernel takes the larger).
        pod.proc.set_rp_filter("net1", 0);
        assert_both_fail(&pod, true, RP_FILTER);
        // net1=2 beats all=1.
        pod.proc.set_rp_filter("net1", 2);
        assert_both_pass(&pod, true);
        // net1=1 with all=0: strict.
        pod.proc.set_rp_filter("all", 0);
        pod.proc.set_rp_filter("net1", 1);
        assert_both_fail(&pod, true, RP_FILTER);
    }

    #[test]
    fn eth0_multicast_capable_fails_interface_choice_unless_down() {
        let pod = healthy();
        pod.nl
            .apply(vec![LinkChange::of(pod.eth0).multicast(true).op()])
            .unwrap();
        assert_both_fail(&pod, true, INTERFACE_CHOICE);
        // A down interface is not chosen by DDS: ignored by both.
        let down = Fake::new();
        for l in pod.nl.links().unwrap() {
            let flags = if l.index == pod.eth0 {
                LinkFlags::Multicast
            } else {
                l.flags
            };
            down.with_link(&l.name, l.kind, flags);
        }
        for (i, a) in pod.nl.addresses(None).unwrap() {
            down.with_address(i, a);
        }
        for r in pod.nl.all_routes() {
            down.with_route(r);
        }
        let down = Pod {
            nl: down,
            proc: healthy().proc,
            ..pod
        };
        assert_both_pass(&down, true);
    }

    #[test]
    fn the_master_inside_the_pod_is_no_rival() {
        let pod = healthy();
        let master = pod.nl.with_link(
            "lan0",
            Some(InfoKind::Veth),
            LinkFlags::Up | LinkFlags::Multicast,
        );
        let findings = |master_in_pod| {
            diagnose(
                &pod.nl,
                &pod.proc,
                &Expected {
                    ifname: "net1",
                    multicast: &MulticastConf::default(),
                    master_in_pod,
                    membership_held: true,
                },
            )
            .unwrap()
        };
        first_failure(&findings(Some(master))).unwrap();
        assert_eq!(
            verdict_of(&findings(None), INTERFACE_CHOICE),
            Some(Verdict::Fail)
        );
    }

    #[test]
    fn a_group_not_joined_fails_when_an_agent_holds_it_and_warns_otherwise() {
        let pod = healthy();
        pod.proc.set_joined("net1", &[]);
        assert_both_fail(&pod, true, MEMBERSHIP);
        let (answer, findings) = both(&pod, false);
        answer.unwrap();
        assert_eq!(verdict_of(&findings, MEMBERSHIP), Some(Verdict::Warn));
        // Joined on another interface is not joined on net1.
        pod.proc.set_joined("eth0", &[GROUP]);
        assert_both_fail(&pod, true, MEMBERSHIP);
    }

    #[test]
    fn a_group_held_as_an_address_fails_group_address() {
        let pod = healthy();
        pod.nl
            .with_address(pod.net1, "239.255.0.1/32".parse().unwrap());
        assert_both_fail(&pod, true, GROUP_ADDRESS);
    }

    #[test]
    fn a_missing_or_down_interface_fails_interface_and_nothing_else_is_read() {
        let pod = healthy();
        pod.nl.apply(vec![Op::del_link(pod.net1)]).unwrap();
        let (answer, findings) = both(&pod, true);
        assert!(answer.unwrap_err().to_string().starts_with("interface: "));
        assert_eq!(findings.len(), 1);

        let down = Fake::new();
        down.with_link("net1", Some(InfoKind::MacVlan), LinkFlags::Multicast);
        let pod = Pod {
            nl: down,
            ..healthy()
        };
        assert_both_fail(&pod, true, INTERFACE);
    }

    #[test]
    fn what_the_config_turns_off_is_a_warning_for_check() {
        let pod = healthy();
        pod.proc.set_rp_filter("net1", 1);
        pod.nl
            .apply(vec![LinkChange::of(pod.eth0).multicast(true).op()])
            .unwrap();
        let mc = MulticastConf {
            loose_rp_filter: false,
            mark_other_interfaces: false,
            ..MulticastConf::default()
        };
        let findings = diagnose(
            &pod.nl,
            &pod.proc,
            &Expected {
                ifname: "net1",
                multicast: &mc,
                master_in_pod: None,
                membership_held: true,
            },
        )
        .unwrap();
        first_failure(&findings).unwrap();
        assert_eq!(verdict_of(&findings, RP_FILTER), Some(Verdict::Warn));
        assert_eq!(verdict_of(&findings, INTERFACE_CHOICE), Some(Verdict::Warn));
    }
}
