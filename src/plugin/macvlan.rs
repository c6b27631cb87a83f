//! ADD, DEL and CHECK of the macvlan attachment, with explicit rollback: a failed ADD
//! leaves the node and the pod as they were.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use nix::errno::Errno;

use crate::cni::config::{format_mac, parse_mac, MacvlanMode, NetConf};
use crate::cni::env::CniEnv;
use crate::cni::result::{CniResult, Interface, IpConfig, Route};
use crate::cni::{Error, Kind, Result};
use crate::ipam::{Hints, Ipam};
use crate::plugin::dad;
use crate::plugin::diagnosis;
use crate::plugin::duplicate;
use crate::plugin::membership::{self, AgentPlace};
use crate::plugin::multicast;
use crate::plugin::policy::Policy;
use crate::sys::netlink::{
    Ipv4Setting, Link, LinkChange, Netlink, NewMacvlan, Op, Rtnl, TABLE_MAIN,
};
use crate::sys::netns::Netns;
use crate::sys::stable_hash::stable_hash;

/// The namespaces and netlink connections one invocation works with.
pub struct Namespaces {
    /// Where the master lives: the plugin's own namespace, or the pod's with `linkInContainer`.
    pub master_nl: Netlink,
    pub pod_ns: Netns,
    pub pod_nl: Netlink,
    pub master_in_pod: bool,
}

impl Namespaces {
    pub fn open(conf: &NetConf, netns_path: &str) -> Result<Namespaces> {
        let pod_ns = open_pod_netns(netns_path)?;
        let pod_nl = Netlink::connect(&pod_ns)?;
        let master_nl = if conf.link_in_container {
            Netlink::connect(&pod_ns)?
        } else {
            Netlink::here()?
        };
        Ok(Namespaces {
            master_nl,
            pod_ns,
            pod_nl,
            master_in_pod: conf.link_in_container,
        })
    }
}

/// Opens the pod's namespace, refusing the plugin's own: ADD there would clear the
/// MULTICAST flag of every node interface and route multicast away from the node.
fn open_pod_netns(path: &str) -> Result<Netns> {
    let ns = Netns::open(path)?;
    if ns.is_current()? {
        return Err(Error::new(Kind::InvalidEnvironment, format!(
            "CNI_NETNS {path} is the plugin's own network namespace (the node's), not a pod's: refusing to change the node's interfaces"
        )));
    }
    Ok(ns)
}

/// The master: the configured one; without one, the interface that holds an address in
/// the subnet of the IPAM range (the LAN the pods join: robots often route by default
/// through Wi-Fi or LTE while the ROS LAN is wired), else the interface of the default
/// route. For an omitted master it also says which was taken and why, for the log line.
pub fn resolve_master(
    nl: &dyn Rtnl,
    conf: &NetConf,
    ipam: &Ipam,
) -> Result<(Link, Option<String>)> {
    if let Some(name) = &conf.master {
        let link = nl.link_by_name(name)?.ok_or_else(|| {
            Error::new(Kind::MasterNotFound, format!(
                "master interface {name} not found on node; set \"master\" to the node's LAN interface"
            ))
        })?;
        return Ok((link, None));
    }
    let subnets = ipam.subnets();
    if let Some((link, addr)) = lan_interface(nl, &subnets)? {
        let why = format!(
            "master {} taken: it holds {addr}, in the range's subnet",
            link.name
        );
        return Ok((link, Some(why)));
    }
    let index = nl.default_route_link()?.ok_or_else(|| {
        Error::new(
            Kind::MasterNotFound,
            "no \"master\" given, no interface holds an address in the range's subnet and the node has no default route to take it from; set \"master\"",
        )
    })?;
    let link = nl.link_by_index(index)?.ok_or_else(|| {
        Error::new(
            Kind::MasterNotFound,
            format!("default route interface {index} vanished"),
        )
    })?;
    let why = if subnets.is_empty() {
        format!(
            "master {} taken: the interface of the default route",
            link.name
        )
    } else {
        format!(
            "master {} taken: the interface of the default route (no interface holds an address in the range's subnet)",
            link.name
        )
    };
    Ok((link, Some(why)))
}

/// The interface (lowest index first) holding an address inside one of `subnets`: not
/// loopback, not a macvlan (a host shim on the LAN holds such an address too).
fn lan_interface(nl: &dyn Rtnl, subnets: &[IpNetwork]) -> Result<Option<(Link, IpNetwork)>> {
    if subnets.is_empty() {
        return Ok(None);
    }
    let mut held: Vec<(u32, IpNetwork)> = nl
        .addresses(None)?
        .into_iter()
        .filter(|(_, a)| subnets.iter().any(|s| s.contains(a.ip())))
        .collect();
    held.sort_by_key(|(index, _)| *index);
    for (index, addr) in held {
        if let Some(link) = nl.link_by_index(index)? {
            if !link.is_loopback() && !link.is_macvlan() {
                return Ok(Some((link, addr)));
            }
        }
    }
    Ok(None)
}

/// MAC precedence: runtimeConfig `mac`, then CNI_ARGS `MAC`, then config `mac`.
fn chosen_mac(conf: &NetConf, env: &CniEnv) -> Result<Option<[u8; 6]>> {
    if let Some(m) = conf.runtime_config.mac {
        return Ok(Some(m));
    }
    if let Some(m) = env.arg("MAC") {
        return parse_mac(m, "CNI_ARGS MAC").map(Some);
    }
    Ok(conf.mac)
}

/// The name a deleted attachment's link takes while the kernel finishes removing it (see
/// `del`): a prefix fixed per attachment (so a later DEL of the same attachment finds a link
/// whose removal never finished) and a random tail (so two such links never collide).
fn retired_name(env: &CniEnv) -> String {
    let tail = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default();
    format!("{}{:04x}", retired_prefix(env), tail & 0xffff)
}

/// How every retired link's name starts.
pub const RETIRED_PREFIX: &str = "rmv";

fn retired_prefix(env: &CniEnv) -> String {
    let id = format!("{}/{}", env.container_id, env.ifname);
    format!("{RETIRED_PREFIX}{:08x}", stable_hash(id.as_bytes()) as u32)
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
#[derive(Default)]
struct Progress {
    link: Option<u32>,
    ipam: bool,
    joined: bool,
    marked: bool,
}

pub fn add(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    agent: &AgentPlace,
    ns: &Namespaces,
    policy: Result<Option<Policy>>,
) -> Result<Added> {
    // Everything checkable is checked before the first change.
    let (master, master_why) = resolve_master(&ns.master_nl, conf, ipam)?;
    let policy = policy?;
    crate::plugin::tenancy::check_master(
        policy.as_ref(),
        &ns.master_nl,
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

    let plan = Plan {
        master,
        master_why,
        mac,
        policy,
    };
    let mut undo = Undo {
        conf,
        env,
        ipam,
        agent,
        ns,
        progress: Progress::default(),
        armed: true,
    };
    let added = add_steps(conf, env, ipam, agent, ns, &plan, &mut undo.progress)?;
    undo.armed = false;
    Ok(added)
}

/// Undoes a failed ADD when dropped armed: on an error return and on a panic's unwind
/// alike, so a failed ADD leaves no link and no claim whatever the cause.
struct Undo<'a> {
    conf: &'a NetConf,
    env: &'a CniEnv,
    ipam: &'a Ipam,
    agent: &'a AgentPlace,
    ns: &'a Namespaces,
    progress: Progress,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            undo(
                self.conf,
                self.env,
                self.ipam,
                self.agent,
                &self.ns.pod_nl,
                &self.progress,
            );
        }
    }
}

fn add_steps(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    agent: &AgentPlace,
    ns: &Namespaces,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<Added> {
    let master = &plan.master;
    // Created in the pod's namespace under its final name, so there is no move and no
    // rename; a DEL after an ADD killed at any point finds it by that name.
    let spec = NewMacvlan {
        name: &env.ifname,
        master_index: master.index,
        mode: conf.mode.kernel(),
        mtu: conf.mtu,
        mac: plan.mac,
        bc_queue_len: conf.multicast.bc_queue_len,
        target_netns: (!ns.master_in_pod).then(|| ns.pod_ns.raw_fd()),
    };
    ns.master_nl
        .add_macvlan(&spec)
        .map_err(|e| creation_error(e, &spec).context(&format!("on master {}", master.name)))?;
    let link = ns.pod_nl.link_by_name(&env.ifname)?.ok_or_else(|| {
        Error::new(
            Kind::Netlink,
            format!("macvlan {} vanished right after creation", env.ifname),
        )
    })?;
    progress.link = Some(link.index);
    fault_point(env, "created");

    let mut result = claim_unused_addresses(conf, env, ipam, agent, ns, &link, master, progress)?;
    if let Some(p) = &plan.policy {
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
    settings.extend(multicast::interface_settings(&conf.multicast));
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
    ops.extend(multicast::route_ops(link.index, &conf.multicast));
    ns.pod_nl.apply(ops)?;
    let lan = watched(conf, env, ipam, ns, &link, master, &result);
    if detection_of(conf, ipam).is_some() {
        // RFC 5227's announcement: the other nodes' agents hear it and pass the address
        // over in their probes ahead; neighbours' caches learn the new MAC.
        for ip in &lan.addresses {
            duplicate::announce(&ns.pod_ns, link.index, mac_of(&link), *ip)?;
        }
    }
    // As the reference: IPv6 addresses are usable (not tentative) when ADD returns.
    if result.ips.iter().any(|ip| ip.address.is_ipv6()) {
        dad::settle(&ns.pod_nl, link.index, &env.ifname)?;
    }
    // As the reference macvlan: the result's DNS is the config's `dns`, not IPAM's.
    result.dns = conf.dns.clone();
    fault_point(env, "configured");

    // Joined once the link is up and addressed, so the IGMP report carries net1's address.
    progress.joined = true;
    let note = membership::hold(conf, env, agent, &ns.pod_ns, link.index, lan)?;
    fault_point(env, "joined");

    progress.marked = conf.multicast.mark_other_interfaces;
    if progress.marked {
        multicast::mark_other_interfaces(&ns.pod_nl, &env.ifname, master_in_pod(ns, master))?;
    }
    fault_point(env, "marked");

    result.interfaces = vec![Interface {
        name: env.ifname.clone(),
        mac: format_mac(&link.mac),
        sandbox: Some(env.netns.clone()),
        mtu: Some(link.mtu),
    }];
    // A master the plugin chose itself is named in the result too, as a host interface (no
    // sandbox), after the pod's: the runtime's record says which LAN the pod joined.
    if plan.master_why.is_some() {
        result.interfaces.push(Interface {
            name: master.name.clone(),
            mac: format_mac(&master.mac),
            sandbox: None,
            mtu: Some(master.mtu),
        });
    }
    Ok(Added {
        result,
        notes: plan.master_why.iter().cloned().chain(note).collect(),
    })
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

/// The master's index when it lives in the pod (`linkInContainer`): it is the LAN itself,
/// so it keeps its multicast.
fn master_in_pod(ns: &Namespaces, master: &Link) -> Option<u32> {
    ns.master_in_pod.then_some(master.index)
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

/// Duplicate detection's settings where it applies: host-local addresses only (a delegated
/// IPAM answers for its own).
fn detection_of(conf: &NetConf, ipam: &Ipam) -> Option<duplicate::Detection> {
    match ipam {
        Ipam::HostLocal(_) => conf.duplicate_detection,
        _ => None,
    }
}

fn mac_of(link: &Link) -> [u8; 6] {
    link.mac.as_slice().try_into().unwrap_or_default()
}

/// What the node agent is to watch for this attachment on the LAN (its addresses, claimed
/// by nobody else), and the network it probes ahead for (host-local with detection on, on
/// a master in the node's namespace, where the agent runs).
fn watched(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    ns: &Namespaces,
    link: &Link,
    master: &Link,
    result: &CniResult,
) -> membership::Watched {
    let addresses = result
        .ips
        .iter()
        .filter_map(|ip| match ip.address.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    let probe_ahead = detection_of(conf, ipam)
        .filter(|_| !ns.master_in_pod)
        .map(|detection| membership::ProbeAhead {
            ipam: conf.ipam.clone(),
            master: master.name.clone(),
            master_mac: mac_of(master),
            detection,
        });
    let pod = env
        .arg("K8S_POD_NAME")
        .map(|name| format!("{}/{name}", env.arg("K8S_POD_NAMESPACE").unwrap_or("-")));
    membership::Watched {
        addresses,
        mac: Some(mac_of(link)),
        pod,
        probe_ahead,
    }
}

/// Gets the addresses from IPAM and, with duplicate detection on (host-local), makes sure
/// nobody else on the LAN has them: an address the node agent probed ahead of time with no
/// answer, and heard nobody claim since (`lan_state::FRESH`), is taken as it is; one it
/// heard claimed is passed over; any other is ARP-probed here. An address someone answers
/// for is released and passed over.
#[allow(clippy::too_many_arguments)]
fn claim_unused_addresses(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    agent: &AgentPlace,
    ns: &Namespaces,
    link: &Link,
    master: &Link,
    progress: &mut Progress,
) -> Result<CniResult> {
    use crate::plugin::lan_state::{now_ms, Verdict};
    let detection = detection_of(conf, ipam);
    // The agent's probes are of the master in the node's namespace.
    let probes = match detection {
        Some(_) if !ns.master_in_pod => agent.lan().probes(&conf.name),
        _ => Default::default(),
    };
    // Probing needs the link up (it has no address yet, as RFC 5227 wants): brought up
    // before the first probe ADD makes itself, not when the agent's probes answer.
    let mut up = false;
    let mut avoid: Vec<IpAddr> = Vec::new();
    loop {
        let hints = Hints {
            avoid: &avoid,
            // The master's MAC tells this node from the others on the LAN: a fresh store
            // starts at a pick of its own (see RangeSet::spread_resume_point).
            node_seed: Some(stable_hash(&master.mac)),
        };
        let result = ipam.add(conf, env, hints)?;
        progress.ipam = true;
        fault_point(env, "claimed");
        let Some(d) = detection else {
            return Ok(result);
        };
        let mac = mac_of(link);
        let mut conflicts = Vec::new();
        for ip in &result.ips {
            let IpAddr::V4(v4) = ip.address.ip() else {
                continue;
            };
            let in_use = match probes.verdict(mac_of(master), v4, now_ms()) {
                Verdict::Free => false,
                Verdict::Claimed(by) => {
                    eprintln!(
                        "ros-macvlan: {v4} in use on the LAN (the node agent heard {} claim it); trying another address",
                        format_mac(&by)
                    );
                    true
                }
                Verdict::Unknown => {
                    if !up {
                        ns.pod_nl
                            .apply(vec![LinkChange::of(link.index).up().op()])?;
                        up = true;
                    }
                    let answered = duplicate::in_use(&ns.pod_ns, link.index, mac, v4, &d)?;
                    if answered {
                        eprintln!("ros-macvlan: {v4} in use on the LAN (ARP answered); trying another address");
                    }
                    answered
                }
            };
            if in_use {
                conflicts.push(ip.address.ip());
            }
        }
        if conflicts.is_empty() {
            return Ok(result);
        }
        ipam.del(conf, env)?;
        progress.ipam = false;
        avoid.extend(conflicts);
        if avoid.len() >= d.max_conflicts as usize {
            return Err(Error::new(Kind::RangeExhausted, format!(
                "addresses {avoid:?} are already in use on the LAN (other hosts answered ARP probes): the range overlaps addresses of other nodes or hosts; give each node a range of its own"
            )));
        }
    }
}

/// Undoes a failed ADD, most recent step first. Failures here are logged, not returned: the
/// original error is what the runtime must see.
fn undo(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    agent: &AgentPlace,
    pod_nl: &dyn Rtnl,
    progress: &Progress,
) {
    if progress.marked {
        let restored = match pod_nl.links() {
            Ok(links) => pod_nl.apply(multicast::restore_ops(&links, &env.ifname)),
            Err(e) => Err(e),
        };
        if let Err(e) = restored {
            eprintln!("ros-macvlan: rollback: restoring multicast flags failed: {e}");
        }
    }
    if progress.joined {
        membership::release(conf, env, agent);
    }
    if progress.ipam {
        if let Err(e) = ipam.del(conf, env) {
            eprintln!("ros-macvlan: rollback: releasing the address failed: {e}");
        }
    }
    if let Some(index) = progress.link {
        if let Err(e) = pod_nl.apply(vec![Op::del_link(index)]) {
            eprintln!("ros-macvlan: rollback: removing the interface failed: {e}");
        }
    }
}

/// DEL. The kernel's removal of a link waits for RCU grace periods (about 20 ms, most of
/// a DEL), and so does taking a link down; so DEL makes the link inert at once and leaves
/// the removal to a detached process (`reaper`): the agent lets go of its memberships (the
/// IGMP leave goes out), the link loses its addresses and routes (it answers for no address and carries no
/// traffic of the pod's), and takes a name of its own, so `CNI_IFNAME` is free for the
/// next ADD. Only then is the address released, so no other pod can get it while this link
/// could still use it. Nothing left to do is success; a namespace that is gone has taken
/// its links with it.
pub fn del(conf: &NetConf, env: &CniEnv, ipam: &Ipam, agent: &AgentPlace) -> Result<()> {
    let pod_ns = match open_pod_netns(&env.netns) {
        Ok(ns) => Some(ns),
        // Gone (or never given): its links went with it; the address is still released.
        Err(e) if e.kind() == Kind::ContainerUnknown => None,
        Err(e) => return Err(e),
    };
    // The heirs of the multicast routes are read from the records before ours goes; with no
    // routes to hand over, or no namespace left, there is nothing to read them for.
    let heirs = if pod_ns.is_some() && !conf.multicast.routes.is_empty() {
        membership::other_members(conf, env, agent)
    } else {
        Vec::new()
    };
    membership::release(conf, env, agent);
    let Some(pod_ns) = pod_ns else {
        return ipam.del(conf, env);
    };
    let nl = Netlink::connect(&pod_ns)?;
    let prefix = retired_prefix(env);
    let (ours, others) = links_of_attachment(nl.links()?, &env.ifname, &prefix);
    let addresses = if ours.is_empty() {
        Vec::new()
    } else {
        nl.addresses(None)?
    };
    let mut ops = Vec::new();
    for link in &ours {
        // Routes first: the kernel flushes a link's routes itself when its last IPv4
        // address goes, but not on a link that had none.
        ops.extend(multicast::route_removal_ops(link.index, &conf.multicast));
        // Every address, also a group joined as an address by an earlier version, whose
        // membership the kernel would otherwise keep after the link is gone.
        ops.extend(
            addresses
                .iter()
                .filter(|(index, _)| *index == link.index)
                .map(|(_, addr)| Op::del_address(link.index, *addr)),
        );
        if !link.name.starts_with(&prefix) {
            ops.push(LinkChange::of(link.index).name(&retired_name(env)).op());
        }
    }
    // eth0's mark in the same exchange.
    ops.extend(multicast::restore_ops(&others, &env.ifname));
    nl.apply(ops)?;
    multicast::hand_over_routes(&nl, &others, &heirs, &conf.multicast)?;
    ipam.del(conf, env)?;
    let doomed: Vec<u32> = ours.iter().map(|l| l.index).collect();
    crate::plugin::reaper::delete_links(nl, &doomed, conf.wait_for_link_removal)
}

/// DEL's choice: the attachment's macvlan (named `ifname`) and the retired ones an earlier
/// DEL of the same attachment left (named `retired_prefix`...) whose removal did not
/// finish; then every other link. Never another attachment's macvlan, nor a link that is
/// not a macvlan.
fn links_of_attachment(
    links: Vec<Link>,
    ifname: &str,
    retired_prefix: &str,
) -> (Vec<Link>, Vec<Link>) {
    links
        .into_iter()
        .partition(|l| l.is_macvlan() && (l.name == ifname || l.name.starts_with(retired_prefix)))
}

/// CHECK against prevResult: the interface, its kind, mode, MAC, addresses and routes.
pub fn check(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    agent: &AgentPlace,
    ns: &Namespaces,
) -> Result<()> {
    let prev_json = conf.prev_result.as_ref().ok_or_else(|| {
        Error::new(
            Kind::InvalidConfig,
            "CHECK needs prevResult in the network config",
        )
    })?;
    let prev = CniResult::from_json(prev_json).map_err(|e| e.context("prevResult"))?;
    ipam.check(conf, env, &prev)?;
    let link = ns.pod_nl.link_by_name(&env.ifname)?.ok_or_else(|| {
        Error::new(
            Kind::CheckFailed,
            format!(
                "interface {} not found in pod netns {}",
                env.ifname, env.netns
            ),
        )
    })?;
    if !link.is_macvlan() {
        return Err(Error::new(
            Kind::CheckFailed,
            format!("{} is not a macvlan interface", env.ifname),
        ));
    }
    if link.macvlan_mode != Some(conf.mode.kernel()) {
        return Err(Error::new(
            Kind::CheckFailed,
            format!(
                "{} is not in macvlan mode {} (kernel says {})",
                env.ifname,
                conf.mode.as_str(),
                crate::sys::netlink::mode_name(link.macvlan_mode)
            ),
        ));
    }
    let our_index = prev.interfaces.iter().position(|i| i.name == env.ifname);
    if let Some(expected) = our_index.map(|i| &prev.interfaces[i]) {
        if !expected.mac.is_empty() && !expected.mac.eq_ignore_ascii_case(&format_mac(&link.mac)) {
            return Err(Error::new(
                Kind::CheckFailed,
                format!(
                    "{} has MAC {}, prevResult says {}",
                    env.ifname,
                    format_mac(&link.mac),
                    expected.mac
                ),
            ));
        }
    }
    let present: Vec<IpNetwork> = ns
        .pod_nl
        .addresses(Some(link.index))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == our_index)
    {
        if !present.contains(&ip.address) {
            return Err(Error::new(
                Kind::CheckFailed,
                format!("{} lacks address {}", env.ifname, ip.address),
            ));
        }
    }
    let mut routes = ns.pod_nl.routes_v4(TABLE_MAIN)?;
    routes.extend(ns.pod_nl.routes_v6(TABLE_MAIN)?);
    for r in &prev.routes {
        let found = routes.iter().any(|k| {
            k.dst == r.dst && k.oif == Some(link.index) && (r.gw.is_none() || k.gw == r.gw)
        });
        if !found {
            return Err(Error::new(
                Kind::CheckFailed,
                format!("route {} out {} is missing", r.dst, env.ifname),
            ));
        }
    }
    // Someone else on the LAN claims the pod's address (the node agent's watch).
    let key = membership::key_of(&conf.name, &env.container_id, &env.ifname);
    if let Some(conflict) = agent.lan().conflict(&key) {
        return Err(Error::new(
            Kind::CheckFailed,
            conflict.describe(&env.ifname),
        ));
    }
    let master = if ns.master_in_pod {
        Some(resolve_master(&ns.master_nl, conf, ipam)?.0)
    } else {
        None
    };
    let findings = diagnosis::diagnose(
        &ns.pod_nl,
        &ns.pod_ns,
        &diagnosis::Expected {
            ifname: &env.ifname,
            multicast: &conf.multicast,
            master_in_pod: master.map(|m| m.index),
            membership_held: !conf.multicast.groups.is_empty()
                && membership::held_by_agent(agent.client(), &ns.pod_ns, &env.ifname),
        },
    )?;
    diagnosis::first_failure(&findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testing::{Fake, Request};
    use netlink_packet_route::link::{InfoKind, LinkFlags};

    fn env(container: &str, ifname: &str) -> CniEnv {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", "/var/run/netns/pod"),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        CniEnv::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    fn names(links: &[Link]) -> Vec<&str> {
        links.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn del_picks_the_attachment_and_its_retired_links_only() {
        let ours = env("ctr-a", "net1");
        let prefix = retired_prefix(&ours);
        let theirs = retired_prefix(&env("ctr-a", "net2"));
        assert_ne!(
            prefix, theirs,
            "each attachment retires under a name of its own"
        );
        assert_eq!(prefix, retired_prefix(&env("ctr-a", "net1")), "stable");
        assert!(retired_name(&ours).starts_with(&prefix));

        let nl = Fake::new();
        let up = LinkFlags::Up | LinkFlags::Multicast;
        nl.with_link("lo", None, LinkFlags::Up | LinkFlags::Loopback);
        nl.with_link("eth0", Some(InfoKind::Veth), up);
        nl.with_link("net1", Some(InfoKind::MacVlan), up);
        nl.with_link(&format!("{prefix}0a0b"), Some(InfoKind::MacVlan), up);
        nl.with_link(&format!("{theirs}0c0d"), Some(InfoKind::MacVlan), up);
        nl.with_link("net2", Some(InfoKind::MacVlan), up);
        // Our prefix on something that is not a macvlan is not ours to delete.
        nl.with_link(&format!("{prefix}veth"), Some(InfoKind::Veth), up);

        let (chosen, rest) = links_of_attachment(nl.links().unwrap(), "net1", &prefix);
        assert_eq!(names(&chosen), vec!["net1", &format!("{prefix}0a0b")]);
        assert_eq!(
            names(&rest),
            vec![
                "lo",
                "eth0",
                &format!("{theirs}0c0d"),
                "net2",
                &format!("{prefix}veth")
            ]
        );
    }

    #[test]
    fn del_of_a_link_already_gone_chooses_nothing() {
        let nl = Fake::new();
        nl.with_link("eth0", Some(InfoKind::Veth), LinkFlags::Up);
        nl.with_link("net2", Some(InfoKind::MacVlan), LinkFlags::Up);
        let (chosen, rest) = links_of_attachment(nl.links().unwrap(), "net1", "rmv00000000");
        assert!(chosen.is_empty());
        assert_eq!(names(&rest), vec!["eth0", "net2"]);
    }

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
        };
        (nl, eth0, net1, progress)
    }

    use crate::cni::config::MulticastConf;

    /// The agent's place; with no groups configured nothing of it is touched.
    fn agent(conf: &NetConf) -> AgentPlace {
        let roots = crate::sys::confine::Roots::new(vec![std::env::temp_dir()], 0o755, "");
        AgentPlace::of_config(conf, &roots).unwrap()
    }

    #[test]
    fn undo_after_each_step_of_add_leaves_the_pod_as_it_was() {
        // No groups: the membership part talks to no agent from a unit test.
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"undo","type":"ros-macvlan","master":"lan0","multicast":{"groups":[]},"agentSocket":"/tmp/ros-macvlan-unit/agent.sock"}"#,
        )
        .unwrap();
        let env = env("ctr-undo", "net1");
        for step in ADD_STEPS {
            let (nl, eth0, net1, progress) = pod_after(step);
            undo(&conf, &env, &Ipam::None, &agent(&conf), &nl, &progress);

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

    #[test]
    fn undo_before_the_link_exists_asks_for_nothing() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"undo","type":"ros-macvlan","multicast":{"groups":[]},"agentSocket":"/tmp/ros-macvlan-unit/agent.sock"}"#,
        )
        .unwrap();
        let nl = Fake::new();
        nl.with_link(
            "eth0",
            Some(InfoKind::Veth),
            LinkFlags::Up | LinkFlags::Multicast,
        );
        undo(
            &conf,
            &env("ctr-undo", "net1"),
            &Ipam::None,
            &agent(&conf),
            &nl,
            &Progress::default(),
        );
        assert_eq!(nl.requests(), vec![]);
    }
}
