//! ADD, with explicit rollback: everything checkable is checked before the first change,
//! and a failed ADD (an error or a panic) leaves the node and the pod as they were.

use std::net::IpAddr;

use nix::errno::Errno;

use crate::agent::records::{ProbeAhead, Watched};
use crate::cni::config::parse_mac;
use crate::cni::env::CniEnv;
use crate::cni::result::{CniResult, Interface, IpConfig, Route};
use crate::cni::{Error, Kind, Result};
use crate::ipam::{Hints, Ipam};
use crate::node::duplicate::{self, ArpSocket};
use crate::node::policy::Policy;
use crate::plugin::attachment::{Attachment, Namespaces};
use crate::plugin::config::MacvlanConf;
use crate::plugin::master::resolve_master;
use crate::plugin::{dad, membership, multicast, reaper, zenoh_relay};
use crate::sys::netlink::{
    format_mac, read_back, Ipv4Setting, Link, LinkChange, MacvlanMode, NewMacvlan, Op,
};
use crate::sys::stable_hash::stable_hash;

/// MAC precedence: runtimeConfig `mac`, then CNI_ARGS `MAC`, then config `mac`.
fn chosen_mac(conf: &MacvlanConf, env: &CniEnv) -> Result<Option<[u8; 6]>> {
    if let Some(m) = conf.runtime_config.mac {
        return Ok(Some(m));
    }
    if let Some(m) = env.arg("MAC") {
        return parse_mac(m, "CNI_ARGS MAC").map(Some);
    }
    Ok(conf.mac)
}

/// A test-only fault (`CniEnv::test_fault`): at the named step ADD kills itself with
/// SIGKILL (`kill@<step>`: the runtime's next DEL must clean up) or panics (`panic@<step>`:
/// ADD's own undo must). Unset, always outside tests, it does nothing.
fn fault_point(env: &CniEnv, step: &str) {
    match env.test_fault.as_deref().and_then(|f| f.split_once('@')) {
        Some(("kill", at)) if at == step => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        Some(("panic", at)) if at == step => panic!("test fault: panic at ADD step {step}"),
        _ => {}
    }
}

/// The steps of ADD a crash test can stop at, in order.
pub const ADD_STEPS: &[&str] = &["created", "claimed", "configured", "joined", "marked"];

/// What the checks before the first change decided.
struct Plan {
    master: Link,
    /// Which master an omitted `master` became, and why, for the log line.
    master_why: Option<String>,
    mac: Option<[u8; 6]>,
    policy: Option<Policy>,
}

/// What ADD made, and what the log line should say beside it.
pub struct Added {
    pub result: CniResult,
    pub notes: Vec<String>,
}

/// What ADD has done so far, for rollback.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Progress {
    link: Option<u32>,
    ipam: bool,
    joined: bool,
    marked: bool,
    /// Zenoh relay (issue 24): its listeners were opened (and maybe handed over).
    relayed: bool,
}

pub fn add(at: &Attachment<'_>, ns: &Namespaces, policy: Result<Option<Policy>>) -> Result<Added> {
    let Attachment {
        conf, env, ipam, ..
    } = *at;
    // Everything checkable is checked before the first change.
    let (master, master_why) = resolve_master(&*ns.master_nl, conf, ipam)?;
    let policy = policy?;
    crate::plugin::tenancy::check_master(
        policy.as_ref(),
        &*ns.master_nl,
        &master,
        conf.mode,
        ns.master_in_pod,
    )?;
    if let Some(mtu) = conf.mtu {
        if mtu > master.mtu {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!(
                    "mtu {mtu} exceeds master {}'s MTU {}; lower \"mtu\" or omit it",
                    master.name, master.mtu
                ),
            ));
        }
    }
    let mac = chosen_mac(conf, env)?;
    // An interface of that name in the pod already is refused by the creation itself,
    // which changes nothing then.

    let mut adding = Adding {
        at,
        ns,
        plan: Plan {
            master,
            master_why,
            mac,
            policy,
        },
        progress: Progress::default(),
        armed: true,
    };
    let added = adding.steps()?;
    adding.armed = false;
    Ok(added)
}

/// One ADD under way: what it works on, what it decided, and what it has done so far. It
/// undoes a failed ADD when dropped armed: on an error return and on a panic's unwind
/// alike, so a failed ADD leaves no link and no claim whatever the cause.
struct Adding<'a> {
    at: &'a Attachment<'a>,
    ns: &'a Namespaces,
    plan: Plan,
    progress: Progress,
    armed: bool,
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        if self.armed {
            for e in undo(self.at, &*self.ns.pod_nl, &self.progress) {
                log::warn!("ros-macvlan: rollback: {e}");
            }
        }
    }
}

impl Adding<'_> {
    fn steps(&mut self) -> Result<Added> {
        let master = &self.plan.master.clone();
        // Created in the pod's namespace under its final name, so there is no move and no
        // rename; a DEL after an ADD killed at any point finds it by that name.
        let spec = NewMacvlan {
            name: &self.at.env.ifname,
            master_index: master.index,
            mode: self.at.conf.mode.kernel(),
            mtu: self.at.conf.mtu,
            mac: self.plan.mac,
            bc_queue_len: self.at.conf.multicast.bc_queue_len,
            target_netns: (!self.ns.master_in_pod).then(|| self.ns.pod_ns.raw_fd()),
        };
        self.ns
            .master_nl
            .add_macvlan(&spec)
            .map_err(|e| creation_error(e, &spec).context(&format!("on master {}", master.name)))?;
        let ifname = &self.at.env.ifname;
        let link = read_back(self.ns.pod_nl.link_by_name(ifname)?, ifname)?;
        self.progress.link = Some(link.index);
        fault_point(self.at.env, "created");

        // One ARP socket on the new link for the whole ADD (its probes, its announcements),
        // closed by a detached process: a packet socket's close waits for a grace period.
        let arp = match self.detection() {
            Some(_) => {
                // Probing needs the link up (it has no address yet, as RFC 5227 wants), and
                // so does the socket: bound to a link that is down, its first send fails.
                self.ns
                    .pod_nl
                    .apply(vec![LinkChange::of(link.index).up().op()])?;
                Some(ArpSocket::open_in(&self.ns.pod_ns, link.index)?)
            }
            None => None,
        };
        let mut result = self.claim_unused_addresses(&link, arp.as_ref())?;
        if let Some(p) = &self.plan.policy {
            for ip in &result.ips {
                p.check_address(ip.address.ip())?;
            }
        }

        // The rest of the pod side in one exchange with the kernel, in the order it needs:
        // up first (routes need a running link), addresses, the routes IPAM asked for, then
        // the multicast routes.
        let mut settings = vec![
            // Peers update their ARP caches at once when an address moves to a new pod.
            Ipv4Setting::ArpNotify(1),
        ];
        settings.extend(multicast::interface_settings(&self.at.conf.multicast));
        let mut ops = vec![LinkChange::of(link.index).up().ipv4_conf(&settings).op()];
        for ip in result.ips.iter_mut() {
            ops.push(Op::add_address(link.index, ip.address));
            ip.interface = Some(0);
        }
        ops.extend(
            result
                .routes
                .iter()
                .map(|r| Op::prepend_route(link.index, r.dst, route_gateway(r, &result.ips))),
        );
        ops.extend(multicast::route_ops(link.index, &self.at.conf.multicast));
        self.ns.pod_nl.apply(ops)?;
        let lan = self.watched(&link, &result);
        if let Some(arp) = arp {
            // RFC 5227's announcement: the other nodes' agents hear it and pass the address
            // over in their probes ahead; neighbours' caches learn the new MAC.
            for ip in &lan.addresses {
                arp.announce(mac_of(&link), *ip)?;
            }
            reaper::close_detached(arp.into_fd());
        }
        // As the reference: IPv6 addresses are usable (not tentative) when ADD returns.
        if result.ips.iter().any(|ip| ip.address.is_ipv6()) {
            dad::settle(&*self.ns.pod_nl, link.index, &self.at.env.ifname)?;
        }
        // As the reference macvlan: the result's DNS is the config's `dns`, not IPAM's.
        result.dns = self.at.conf.dns.clone();
        fault_point(self.at.env, "configured");

        // Joined once the link is up and addressed, so the IGMP report carries net1's address.
        self.progress.joined = true;
        let note = membership::hold(
            self.at.conf,
            self.at.env,
            self.at.agent,
            &self.ns.pod_ns,
            link.index,
            lan,
        )?;
        fault_point(self.at.env, "joined");

        // Zenoh relay (issue 24): a router at the pod's localhost, when the network opts in.
        self.progress.relayed = self.at.conf.zenoh.is_some();
        let relay_note =
            zenoh_relay::hold(self.at.conf, self.at.env, self.at.agent, &self.ns.pod_ns)?;

        self.progress.marked = self.at.conf.multicast.mark_other_interfaces;
        if self.progress.marked {
            multicast::mark_other_interfaces(
                &*self.ns.pod_nl,
                &self.at.env.ifname,
                self.ns.master_in_pod(master),
            )?;
        }
        fault_point(self.at.env, "marked");

        result.interfaces = vec![Interface {
            name: self.at.env.ifname.clone(),
            mac: format_mac(&link.mac),
            sandbox: Some(self.at.env.netns.clone()),
            mtu: Some(link.mtu),
        }];
        // A master the plugin chose itself is named in the result too, as a host interface (no
        // sandbox), after the pod's: the runtime's record says which LAN the pod joined.
        if self.plan.master_why.is_some() {
            result.interfaces.push(Interface {
                name: master.name.clone(),
                mac: format_mac(&master.mac),
                sandbox: None,
                mtu: Some(master.mtu),
            });
        }
        Ok(Added {
            result,
            notes: self
                .plan
                .master_why
                .iter()
                .cloned()
                .chain(note)
                .chain(relay_note)
                .collect(),
        })
    }

    /// Duplicate detection's settings where it applies: host-local addresses only (a
    /// delegated IPAM answers for its own).
    fn detection(&self) -> Option<duplicate::Detection> {
        match self.at.ipam {
            Ipam::HostLocal(_) => self.at.conf.duplicate_detection,
            _ => None,
        }
    }

    /// The network the node agent probes ahead for this attachment's config: host-local with
    /// detection on, on a master in the node's namespace, where the agent runs. Its identity
    /// names the probes ADD reads.
    fn probe_ahead(&self) -> Option<ProbeAhead> {
        let master = &self.plan.master;
        self.detection()
            .filter(|_| !self.ns.master_in_pod)
            .map(|detection| ProbeAhead {
                ipam: self.at.conf.ipam.clone(),
                master: master.name.clone(),
                master_index: master.index,
                master_mac: mac_of(master),
                detection,
            })
    }

    /// What the node agent is to watch for this attachment on the LAN (its addresses,
    /// claimed by nobody else), and the network it probes ahead for (host-local with
    /// detection on, on a master in the node's namespace, where the agent runs).
    fn watched(&self, link: &Link, result: &CniResult) -> Watched {
        let env = self.at.env;
        let addresses = result
            .ips
            .iter()
            .filter_map(|ip| match ip.address.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let probe_ahead = self.probe_ahead();
        Watched {
            addresses,
            mac: Some(mac_of(link)),
            pod: membership::pod_of(env),
            probe_ahead,
        }
    }

    /// Gets the addresses from IPAM and, with duplicate detection on (host-local), makes
    /// sure nobody else on the LAN has them: an address the node agent probed ahead of time
    /// with no answer, and heard nobody claim since (`lan_state::Probes::verdict`), is taken
    /// as it is; any other is ARP-probed here, from the new link, which hears the node's own
    /// pods too.
    /// A claim the agent merely heard is asked about like any other (heard is not true: a
    /// spoofer's announcements alone cannot make ADD fail). An address someone answers for is
    /// released and passed over.
    fn claim_unused_addresses(
        &mut self,
        link: &Link,
        arp: Option<&ArpSocket>,
    ) -> Result<CniResult> {
        use crate::agent::lan_state::{now_ms, Verdict};
        let detection = self.detection();
        let probes = match self.probe_ahead() {
            Some(p) => self.at.agent.lan().probes(&p.identity(&self.at.conf.name)),
            None => Default::default(),
        };
        // Whether the agent's watch that made those probes listens still: then they hold
        // for as long as the file says, else for lan_state::FRESH only.
        let listening = (probes.listener != 0)
            .then(|| self.at.agent.lan().listener())
            .flatten();
        let mut avoid: Vec<IpAddr> = Vec::new();
        let mut answered: Vec<(IpAddr, [u8; 6])> = Vec::new();
        let config = self.at.conf.claim_identity();
        loop {
            let hints = Hints {
                avoid: &avoid,
                // The master's MAC tells this node from the others on the LAN: a fresh store
                // starts at a pick of its own (see RangeSet::spread_resume_point).
                node_seed: Some(stable_hash(&self.plan.master.mac)),
                config: Some(&config),
            };
            let result = self.at.ipam.add(self.at.conf, self.at.env, hints)?;
            self.progress.ipam = true;
            fault_point(self.at.env, "claimed");
            let (Some(d), Some(arp)) = (detection, arp) else {
                return Ok(result);
            };
            let mac = mac_of(link);
            let mut conflicts = Vec::new();
            for ip in &result.ips {
                let IpAddr::V4(v4) = ip.address.ip() else {
                    continue;
                };
                let verdict = probes.verdict(mac_of(&self.plan.master), v4, now_ms(), listening);
                if verdict == Verdict::Free {
                    continue;
                }
                if let Verdict::Claimed(by) = verdict {
                    log::warn!(
                        "ros-macvlan: the node agent heard {} claim {v4}; asking whether it answers",
                        format_mac(&by)
                    );
                }
                if let Some(by) = arp.answered_by(mac, v4, &d)? {
                    log::warn!(
                        "ros-macvlan: {v4} in use on the LAN ({} answered ARP); trying another address",
                        format_mac(&by)
                    );
                    conflicts.push(ip.address.ip());
                    answered.push((ip.address.ip(), by));
                }
            }
            if conflicts.is_empty() {
                return Ok(result);
            }
            self.at.ipam.del(self.at.conf, self.at.env)?;
            self.progress.ipam = false;
            avoid.extend(conflicts);
            if avoid.len() >= d.max_conflicts as usize {
                return Err(Error::new(Kind::RangeExhausted, in_use_message(&answered)));
            }
        }
    }
}

/// Why ADD gave up: which MAC answered for each address tried. One MAC answering for every
/// one of several addresses is no set of neighbours but one host answering everything.
fn in_use_message(answered: &[(IpAddr, [u8; 6])]) -> String {
    let first = answered.first().map(|(_, mac)| *mac);
    match first {
        Some(mac) if answered.len() > 1 && answered.iter().all(|(_, m)| *m == mac) => format!(
            "every address tried ({}) was answered for by one MAC, {}: a host that answers ARP for every address (proxy ARP, or a spoofer). Find the host with that MAC and stop it; ros-macvlan does not hand out an address someone answers for",
            answered.iter().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>().join(", "),
            format_mac(&mac)
        ),
        _ => format!(
            "addresses already in use on the LAN (other hosts answered ARP probes: {}): the range overlaps addresses of other nodes or hosts; give each node a range of its own",
            answered
                .iter()
                .map(|(ip, mac)| format!("{ip} by {}", format_mac(mac)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn mac_of(link: &Link) -> [u8; 6] {
    link.mac.as_slice().try_into().unwrap_or_default()
}

/// The gateway a route is installed through: its own `gw`, else (as the reference's
/// ipam.ConfigureIface, and the CNI spec's "if omitted, a default gateway is assumed") the
/// gateway of the first address of the route's family that has one.
fn route_gateway(route: &Route, ips: &[IpConfig]) -> Option<IpAddr> {
    route.gw.or_else(|| {
        ips.iter()
            .filter_map(|ip| ip.gateway)
            .find(|gw| gw.is_ipv4() == route.dst.is_ipv4())
    })
}

/// What a refused creation means for the operator: some refusals point at the config or
/// the environment rather than at the kernel.
fn creation_error(e: crate::sys::netlink::Error, spec: &NewMacvlan<'_>) -> Error {
    match (e.errno(), spec.mtu) {
        (Some(Errno::EBUSY), _) if spec.mode == MacvlanMode::Passthru.kernel() => Error::new(
            Kind::Netlink,
            "create macvlan: the master already has a passthru macvlan (only one is allowed)",
        )
        .with_source(e),
        (Some(Errno::EEXIST), _) => Error::new(
            Kind::InvalidEnvironment,
            format!(
                "interface {} already exists in the pod; choose another CNI_IFNAME",
                spec.name
            ),
        )
        .with_source(e),
        (Some(Errno::EINVAL), Some(mtu)) => Error::new(
            Kind::InvalidConfig,
            format!(
                "create macvlan: the kernel refused mtu {mtu}; it must not exceed the master's MTU ({e})"
            ),
        )
        .with_source(e),
        _ => e.into(),
    }
}

/// Undoes a failed ADD, most recent step first, and returns every failure it met (the
/// original error is what the runtime must see; these are logged beside it).
fn undo(
    at: &Attachment<'_>,
    pod_nl: &dyn crate::sys::netlink::Rtnl,
    progress: &Progress,
) -> Vec<Error> {
    let Attachment {
        conf,
        env,
        ipam,
        agent,
    } = *at;
    let mut failures = Vec::new();
    if progress.marked {
        let restored = match pod_nl.links() {
            Ok(links) => pod_nl.apply(multicast::restore_ops(&links, &env.ifname)),
            Err(e) => Err(e),
        };
        if let Err(e) = restored {
            failures.push(Error::from(e).context("restoring multicast flags failed"));
        }
    }
    if progress.relayed {
        if let Err(e) = zenoh_relay::release(conf, env, agent) {
            failures.push(e.context("closing the Zenoh relay failed"));
        }
    }
    if progress.joined {
        if let Err(e) = membership::release(conf, env, agent) {
            failures.push(e.context("letting go of the membership failed"));
        }
    }
    if progress.ipam {
        if let Err(e) = ipam.del(conf, env) {
            failures.push(e.context("releasing the address failed"));
        }
    }
    if let Some(index) = progress.link {
        if let Err(e) = pod_nl.apply(vec![Op::del_link(index)]) {
            failures.push(Error::from(e).context("removing the interface failed"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::attachment::test_support::{agent, env, names};
    use crate::sys::netlink::testing::{Fake, Request};
    use crate::sys::netlink::Rtnl;
    use netlink_packet_route::link::{InfoKind, LinkFlags};

    /// A pod as ADD leaves it after `step`, and the progress ADD recorded up to there.
    fn pod_after(step: &str) -> (Fake, u32, u32, Progress) {
        let nl = Fake::new();
        let eth0 = nl.with_link(
            "eth0",
            Some(InfoKind::Veth),
            LinkFlags::Up | LinkFlags::Multicast,
        );
        nl.set_alias(eth0, "uplink");
        let net1 = nl.with_link("net1", Some(InfoKind::MacVlan), LinkFlags::Multicast);
        let at = ADD_STEPS.iter().position(|s| *s == step).unwrap();
        let reached = |s: &str| ADD_STEPS.iter().position(|x| *x == s).unwrap() <= at;
        if reached("configured") {
            let mut ops = vec![LinkChange::of(net1).up().op()];
            ops.push(Op::add_address(net1, "198.51.100.9/24".parse().unwrap()));
            ops.extend(multicast::route_ops(net1, &MulticastConf::default()));
            nl.apply(ops).unwrap();
        }
        if reached("marked") {
            multicast::mark_other_interfaces(&nl, "net1", None).unwrap();
        }
        nl.clear_requests();
        let progress = Progress {
            link: Some(net1),
            ipam: reached("claimed"),
            joined: reached("joined"),
            marked: reached("marked"),
            relayed: false,
        };
        (nl, eth0, net1, progress)
    }

    use crate::plugin::config::MulticastConf;

    use crate::ipam::host_local::HostLocalConf;
    use crate::plugin::attachment::test_support::{
        conf_with, data_dir, env_with, Call, Scene, Snapshot,
    };
    use ipnetwork::IpNetwork;
    use netlink_packet_route::link::MacVlanMode;

    fn host_local(ipam: &Ipam) -> &HostLocalConf {
        match ipam {
            Ipam::HostLocal(hl) => hl,
            _ => panic!("host-local"),
        }
    }

    /// Container `ctr`'s call, with a store of the test's own and two addresses to hand out.
    fn two_addresses(test: &str, ctr: &str) -> (std::path::PathBuf, Call) {
        let dir = data_dir(test);
        let conf = conf_with(&dir, ("198.51.100.10", "198.51.100.11"));
        (dir, Call::new(conf, env(ctr, "net1")))
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn add_creates_the_macvlan_into_the_pod_and_configures_it_in_order() {
        let (dir, call) = two_addresses("add-order", "ctr-add");
        let s = Scene::new();
        let added = add(&call.at(), &s.namespaces(), Ok(None)).unwrap();

        assert_eq!(
            s.node.requests(),
            vec![Request::AddMacvlan {
                name: "net1".into(),
                master_index: s.lan0,
                mode: MacVlanMode::Bridge,
                mtu: None,
                mac: None,
                bc_queue_len: None,
                into_other_netns: true,
            }],
            "the node is asked for the macvlan only, created straight into the pod"
        );
        assert_eq!(names(&s.node.links().unwrap()), vec!["lan0"]);
        let net1 = s
            .pod
            .link_by_name("net1")
            .unwrap()
            .expect("net1 in the pod");
        let address = net("198.51.100.10/24");
        assert_eq!(
            s.pod.ops(),
            vec![
                LinkChange::of(net1.index)
                    .up()
                    .ipv4_conf(&[Ipv4Setting::ArpNotify(1), Ipv4Setting::RpFilter(2)])
                    .op(),
                Op::add_address(net1.index, address),
                Op::prepend_route(
                    net1.index,
                    net("203.0.113.0/24"),
                    Some("198.51.100.1".parse().unwrap())
                ),
                Op::add_route(net1.index, net("224.0.0.0/4"), None),
                LinkChange::of(s.eth0)
                    .alias("ros-macvlan:multicast-off-for:net1;uplink")
                    .multicast(false)
                    .op(),
            ],
            "up first, then addresses, IPAM's routes, multicast routes, eth0's mark"
        );
        assert!(!s.pod.link(s.eth0).unwrap().is_multicast());
        assert_eq!(s.pod.all_addresses(), vec![(net1.index, address)]);

        let result = &added.result;
        assert_eq!(result.ips.len(), 1);
        assert_eq!(result.ips[0].address, address);
        assert_eq!(result.ips[0].interface, Some(0));
        assert_eq!(
            result.interfaces.len(),
            1,
            "a configured master is not named"
        );
        assert_eq!(result.interfaces[0].name, "net1");
        assert_eq!(result.interfaces[0].mac, format_mac(&net1.mac));
        assert_eq!(
            result.interfaces[0].sandbox.as_deref(),
            Some("/var/run/netns/pod")
        );
        assert_eq!(
            host_local(&call.ipam)
                .held("seam", "ctr-add", "net1")
                .unwrap(),
            vec![address.ip()]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn refused_op(matches: impl Fn(&Op) -> bool + 'static) -> impl Fn(&Request) -> bool {
        move |r| r.op().is_some_and(&matches)
    }

    #[test]
    fn add_failing_at_each_step_leaves_node_and_pod_as_they_were() {
        // Each case: the step that fails, how the scene makes it fail, the code ADD answers.
        type Setup = fn(&Scene);
        let cases: [(&str, Setup, u32); 6] = [
            (
                "created",
                |s| {
                    s.node
                        .refuse(Errno::ENOMEM, |r| matches!(r, Request::AddMacvlan { .. }))
                },
                101,
            ),
            (
                "claimed: range exhausted",
                // The range's one address belongs to another pod (claimed in the test).
                |_| {},
                102,
            ),
            (
                "configured: address refused",
                |s| {
                    s.pod.refuse(
                        Errno::EACCES,
                        refused_op(|op| matches!(op, Op::AddAddress { .. })),
                    )
                },
                101,
            ),
            (
                "configured: multicast route refused",
                |s| {
                    s.pod.refuse(
                        Errno::ENETUNREACH,
                        refused_op(|op| matches!(op, Op::AddRoute { .. })),
                    )
                },
                101,
            ),
            (
                "marked: the second of two interfaces refused",
                |s| {
                    let eth1 = s.pod.with_link(
                        "eth1",
                        Some(InfoKind::Veth),
                        LinkFlags::Up | LinkFlags::Multicast,
                    );
                    s.pod.refuse(
                        Errno::EPERM,
                        refused_op(move |op| {
                            matches!(op, Op::SetLink(c) if c.index == eth1 && c.multicast == Some(false))
                        }),
                    )
                },
                101,
            ),
            ("panic after marking", |_| {}, 999),
        ];
        for (i, (case, setup, code)) in cases.into_iter().enumerate() {
            let dir = data_dir(&format!("add-fails-{i}"));
            let exhausted = case.starts_with("claimed");
            let last = if exhausted {
                "198.51.100.10"
            } else {
                "198.51.100.11"
            };
            let conf = conf_with(&dir, ("198.51.100.10", last));
            let fault = if case.starts_with("panic") {
                vec![("ROS_MACVLAN_TEST_FAULT", "panic@marked")]
            } else {
                vec![]
            };
            let env = env_with("ctr-fails", "net1", &fault);
            let call = Call::new(conf, env);
            if exhausted {
                let other = env_with("ctr-other", "net1", &[]);
                call.ipam.add(&call.conf, &other, Hints::default()).unwrap();
            }
            let s = Scene::new();
            setup(&s);
            let before = Snapshot::of(&s);
            let ns = s.namespaces();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                add(&call.at(), &ns, Ok(None))
            }));
            let got = match outcome {
                Ok(Ok(_)) => panic!("{case}: ADD succeeded"),
                Ok(Err(e)) => e.code(),
                Err(_) => 999,
            };
            assert_eq!(got, code, "{case}");
            before.still(&s, case);
            let hl = host_local(&call.ipam);
            assert_eq!(
                hl.held("seam", "ctr-fails", "net1").unwrap(),
                Vec::<IpAddr>::new(),
                "{case}: claim released"
            );
            if exhausted {
                assert_eq!(
                    hl.held("seam", "ctr-other", "net1").unwrap().len(),
                    1,
                    "the other pod's claim stays"
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn add_into_an_interface_name_the_pod_has_takes_nothing_and_removes_nothing() {
        let (dir, call) = two_addresses("add-exists", "ctr-exists");
        let s = Scene::new();
        // Someone else's net1, already in the pod.
        s.pod
            .with_link("net1", Some(InfoKind::MacVlan), LinkFlags::Up);
        let before = Snapshot::of(&s);
        let e = add(&call.at(), &s.namespaces(), Ok(None))
            .err()
            .expect("refused");
        assert_eq!(e.code(), 4, "{e}");
        assert!(
            e.to_string()
                .contains("interface net1 already exists in the pod"),
            "{e}"
        );
        before.still(&s, "exists");
        assert_eq!(
            s.pod.requests(),
            vec![],
            "nothing asked of the pod: its net1 stays"
        );
        assert_eq!(
            host_local(&call.ipam)
                .held("seam", "ctr-exists", "net1")
                .unwrap(),
            Vec::<IpAddr>::new()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The undo of an ADD that got as far as `progress`, for a config with no groups (no
    /// agent to talk to) and `more` keys.
    fn undo_with(more: &str, nl: &Fake, progress: &Progress) -> Vec<Error> {
        let conf = MacvlanConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"undo","type":"ros-macvlan",{more}"multicast":{{"groups":[]}},"agentSocket":"/tmp/ros-macvlan-unit/agent.sock"}}"#).as_bytes(),
        )
        .unwrap();
        let env = env("ctr-undo", "net1");
        let agent = agent(&conf);
        let at = Attachment {
            conf: &conf,
            env: &env,
            ipam: &Ipam::None,
            agent: &agent,
        };
        undo(&at, nl, progress)
    }

    #[test]
    fn undo_after_each_step_of_add_leaves_the_pod_as_it_was() {
        // No groups: the membership part talks to no agent from a unit test.
        for step in ADD_STEPS {
            let (nl, eth0, net1, progress) = pod_after(step);
            let failures = undo_with(r#""master":"lan0","#, &nl, &progress);
            assert!(failures.is_empty(), "after {step}");

            let mut expected = Vec::new();
            if progress.marked {
                expected.push(Request::Op(
                    LinkChange::of(eth0).multicast(true).alias("uplink").op(),
                ));
            }
            expected.push(Request::Op(Op::del_link(net1)));
            assert_eq!(nl.requests(), expected, "undo after {step}");

            let links = nl.links().unwrap();
            assert_eq!(names(&links), vec!["eth0"], "after {step}");
            assert!(links[0].is_multicast(), "after {step}");
            assert_eq!(links[0].alias.as_deref(), Some("uplink"), "after {step}");
            assert_eq!(nl.addresses(None).unwrap(), vec![], "after {step}");
            assert_eq!(nl.all_routes(), vec![], "after {step}");
        }
    }

    /// The undo of an ADD that joined and relayed: both records go and the agent is asked
    /// to close the relay and let go of the membership (`FakeAgent`); a record that cannot
    /// be removed is a failure the undo returns.
    #[test]
    fn undo_hands_back_the_relay_and_the_membership() {
        use crate::agent::client::fake::FakeAgent;
        use crate::agent::records::{MembershipRecord, RecordDir, RelayRecord};
        let fake = FakeAgent::default();
        let (conf, agent) = crate::plugin::attachment::test_support::with_fake_agent(
            "undo-agent",
            MacvlanConf::parse(br#"{"cniVersion":"1.0.0","name":"undo","type":"ros-macvlan"}"#)
                .unwrap(),
            &fake,
        );
        let env = env("ctr-undo", "net1");
        let attachment = MembershipRecord {
            network: "undo".into(),
            container_id: "ctr-undo".into(),
            ifname: "net1".into(),
            netns: "/var/run/netns/pod".into(),
            netns_inode: 1,
            proc_pid_ns: None,
            groups: conf.multicast.groups.clone(),
            lan: Default::default(),
        };
        let memberships: RecordDir = agent.records();
        let relays: RecordDir<RelayRecord> = agent.records();
        memberships.write(&attachment).unwrap();
        let relay = RelayRecord {
            attachment: attachment.clone(),
            listen: vec!["127.0.0.1:7447".parse().unwrap()],
            router: None,
        };
        relays.write(&relay).unwrap();
        let progress = Progress {
            joined: true,
            relayed: true,
            ..Progress::default()
        };
        let at = Attachment {
            conf: &conf,
            env: &env,
            ipam: &Ipam::None,
            agent: &agent,
        };
        assert!(undo(&at, &Fake::new(), &progress).is_empty());
        assert!(memberships.list().unwrap().is_empty());
        assert!(relays.list().unwrap().is_empty());
        let key = attachment.key();
        assert_eq!(
            fake.calls(),
            [format!("dropRelay {key}"), format!("drop {key}")]
        );

        // A record in the way that cannot be removed: reported, not swallowed.
        std::fs::create_dir_all(memberships.path().join(format!("{key}.json/inside"))).unwrap();
        let failures = undo(&at, &Fake::new(), &progress);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].to_string().contains("membership"),
            "{}",
            failures[0]
        );
        let _ = std::fs::remove_dir_all(memberships.path().parent().unwrap());
    }

    #[test]
    fn undo_before_the_link_exists_asks_for_nothing() {
        let nl = Fake::new();
        nl.with_link(
            "eth0",
            Some(InfoKind::Veth),
            LinkFlags::Up | LinkFlags::Multicast,
        );
        assert!(undo_with("", &nl, &Progress::default()).is_empty());
        assert_eq!(nl.requests(), vec![]);
    }
}
