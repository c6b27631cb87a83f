//! ADD, DEL and CHECK of the macvlan attachment, with explicit rollback: a failed ADD
//! leaves the node and the pod as they were.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;

use crate::cni::config::{format_mac, parse_mac, NetConf};
use crate::cni::env::CniEnv;
use crate::cni::result::{CniResult, Interface};
use crate::cni::{Error, Result};
use crate::duplicate;
use crate::ipam::Ipam;
use crate::multicast;
use crate::netlink::{kernel_mode, Link, Netlink, NewMacvlan, TABLE_MAIN};
use crate::netns::Netns;
use crate::policy::Policy;

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
        let pod_ns = Netns::open(netns_path)?;
        let pod_nl = Netlink::connect(&pod_ns)?;
        let master_nl = if conf.link_in_container {
            Netlink::connect(&pod_ns)?
        } else {
            Netlink::connect(&Netns::current()?)?
        };
        Ok(Namespaces {
            master_nl,
            pod_ns,
            pod_nl,
            master_in_pod: conf.link_in_container,
        })
    }
}

/// The master: the configured one, else the interface of the default route.
pub async fn resolve_master(nl: &Netlink, conf: &NetConf) -> Result<Link> {
    match &conf.master {
        Some(name) => nl.link_by_name(name).await?.ok_or_else(|| {
            Error::MasterNotFound(format!(
                "master interface {name} not found on node; set \"master\" to the node's LAN interface"
            ))
        }),
        None => {
            let index = nl.default_route_link().await?.ok_or_else(|| {
                Error::MasterNotFound(
                    "no \"master\" given and the node has no default route to take it from; set \"master\"".into(),
                )
            })?;
            nl.link_by_index(index).await?.ok_or_else(|| {
                Error::MasterNotFound(format!("default route interface {index} vanished"))
            })
        }
    }
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

/// The temporary name a new macvlan gets before it is renamed to CNI_IFNAME inside the pod:
/// a prefix fixed per attachment (so a DEL after an ADD killed before the rename finds it)
/// and a random tail (so a concurrent ADD never collides with it).
fn temp_name(env: &CniEnv) -> String {
    let tail = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default();
    format!("{}{:04x}", temp_prefix(env), tail & 0xffff)
}

fn temp_prefix(env: &CniEnv) -> String {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let hash = format!("{}/{}", env.container_id, env.ifname)
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    format!("rmv{hash:08x}")
}

/// A test-only switch: with ROS_MACVLAN_TEST_KILL_AT=<step>, ADD kills itself with SIGKILL
/// at that step, so tests can show that the DEL a runtime sends next cleans up from any
/// point. Unset (always, outside tests) it does nothing.
pub fn crash_point(step: &str) {
    if std::env::var("ROS_MACVLAN_TEST_KILL_AT").is_ok_and(|s| s == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The steps of ADD a crash test can stop at, in order.
pub const ADD_STEPS: &[&str] = &[
    "created",
    "renamed",
    "claimed",
    "addressed",
    "up",
    "routed",
    "joined",
    "marked",
];

/// What the checks before the first change decided.
struct Plan {
    master: Link,
    mac: Option<[u8; 6]>,
    policy: Option<Policy>,
}

/// What ADD has done so far, for rollback.
#[derive(Default)]
struct Progress {
    link: Option<u32>,
    ipam: bool,
    marked: bool,
}

pub async fn add(conf: &NetConf, env: &CniEnv, ipam: &Ipam, ns: &Namespaces) -> Result<CniResult> {
    // Everything checkable is checked before the first change.
    let master = resolve_master(&ns.master_nl, conf).await?;
    let policy = Policy::load()?;
    if let Some(p) = &policy {
        p.check_master(&master.name)?;
    }
    if let Some(mtu) = conf.mtu {
        if mtu > master.mtu {
            return Err(Error::InvalidConfig(format!(
                "mtu {mtu} exceeds master {}'s MTU {}; lower \"mtu\" or omit it",
                master.name, master.mtu
            )));
        }
    }
    let mac = chosen_mac(conf, env)?;
    if ns.pod_nl.link_by_name(&env.ifname).await?.is_some() {
        return Err(Error::InvalidEnvironment(format!(
            "interface {} already exists in pod netns {}; choose another CNI_IFNAME",
            env.ifname, env.netns
        )));
    }

    let plan = Plan {
        master,
        mac,
        policy,
    };
    let mut progress = Progress::default();
    let outcome = add_steps(conf, env, ipam, ns, &plan, &mut progress).await;
    if outcome.is_err() {
        undo(conf, env, ipam, ns, &progress).await;
    }
    outcome
}

async fn add_steps(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    ns: &Namespaces,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<CniResult> {
    let master = &plan.master;
    let temp = temp_name(env);
    ns.master_nl
        .add_macvlan(&NewMacvlan {
            temp_name: &temp,
            master_index: master.index,
            mode: conf.mode,
            mtu: conf.mtu,
            mac: plan.mac,
            bc_queue_len: conf.multicast.bc_queue_len,
            target_netns: (!ns.master_in_pod).then(|| ns.pod_ns.raw_fd()),
        })
        .await
        .map_err(|e| e.context(&format!("on master {}", master.name)))?;
    let created =
        ns.pod_nl.link_by_name(&temp).await?.ok_or_else(|| {
            Error::Netlink(format!("macvlan {temp} vanished right after creation"))
        })?;
    progress.link = Some(created.index);
    crash_point("created");
    ns.pod_nl.rename(created.index, &env.ifname).await?;
    crash_point("renamed");
    set_arp_notify(&ns.pod_ns, &env.ifname)?;

    let mut result = claim_unused_addresses(conf, env, ipam, ns, &created, progress).await?;
    if let Some(p) = &plan.policy {
        for ip in &result.ips {
            p.check_address(ip.address.ip())?;
        }
    }

    for ip in result.ips.iter_mut() {
        ns.pod_nl.add_address(created.index, ip.address).await?;
        ip.interface = Some(0);
    }
    crash_point("addressed");
    ns.pod_nl.set_up(created.index).await?;
    crash_point("up");
    for route in &result.routes {
        ns.pod_nl
            .add_route(created.index, route.dst, route.gw)
            .await?;
    }
    crash_point("routed");
    // What the link looked like when created (MAC, MTU), under its final name.
    let link = Link {
        name: env.ifname.clone(),
        ..created
    };
    progress.marked = conf.multicast.mark_other_interfaces;
    multicast::setup(&ns.pod_nl, &ns.pod_ns, &link, &conf.multicast).await?;
    crash_point("marked");

    result.interfaces = vec![Interface {
        name: env.ifname.clone(),
        mac: format_mac(&link.mac),
        sandbox: Some(env.netns.clone()),
        mtu: Some(link.mtu),
    }];
    Ok(result)
}

/// Gets the addresses from IPAM and, with duplicate detection on (host-local), ARP-probes
/// each on the LAN first; an address someone answers for is released and passed over.
async fn claim_unused_addresses(
    conf: &NetConf,
    env: &CniEnv,
    ipam: &Ipam,
    ns: &Namespaces,
    link: &Link,
    progress: &mut Progress,
) -> Result<CniResult> {
    let detection = match ipam {
        Ipam::HostLocal(_) => conf.duplicate_detection,
        _ => None,
    };
    let mut avoid: Vec<IpAddr> = Vec::new();
    loop {
        let result = ipam.add(conf, env, &avoid)?;
        progress.ipam = true;
        crash_point("claimed");
        let Some(d) = detection else {
            return Ok(result);
        };
        // Probing needs the link up; it has no address yet, as RFC 5227 wants.
        ns.pod_nl.set_up(link.index).await?;
        let mac: [u8; 6] = link.mac.as_slice().try_into().unwrap_or_default();
        let mut conflicts = Vec::new();
        for ip in &result.ips {
            if let IpAddr::V4(v4) = ip.address.ip() {
                if duplicate::in_use(&ns.pod_ns, link.index, mac, v4, &d)? {
                    conflicts.push(ip.address.ip());
                }
            }
        }
        if conflicts.is_empty() {
            return Ok(result);
        }
        eprintln!(
            "ros-macvlan: {conflicts:?} in use on the LAN (ARP answered); trying another address"
        );
        ipam.del(conf, env)?;
        progress.ipam = false;
        avoid.extend(conflicts);
        if avoid.len() >= d.max_conflicts as usize {
            return Err(Error::RangeExhausted(format!(
                "addresses {avoid:?} are already in use on the LAN (other hosts answered ARP probes): the range overlaps addresses of other nodes or hosts; give each node a range of its own"
            )));
        }
    }
}

/// Undoes a failed ADD, most recent step first. Failures here are logged, not returned: the
/// original error is what the runtime must see.
async fn undo(conf: &NetConf, env: &CniEnv, ipam: &Ipam, ns: &Namespaces, progress: &Progress) {
    if progress.marked {
        let restored = match ns.pod_nl.links().await {
            Ok(links) => multicast::restore(&ns.pod_nl, &links, &env.ifname).await,
            Err(e) => Err(e),
        };
        if let Err(e) = restored {
            eprintln!("ros-macvlan: rollback: restoring multicast flags failed: {e}");
        }
    }
    if progress.ipam {
        if let Err(e) = ipam.del(conf, env) {
            eprintln!("ros-macvlan: rollback: releasing the address failed: {e}");
        }
    }
    if let Some(index) = progress.link {
        if let Err(e) = multicast::leave(&ns.pod_nl, index, &conf.multicast).await {
            eprintln!("ros-macvlan: rollback: leaving the multicast groups failed: {e}");
        }
        if let Err(e) = ns.pod_nl.del_link(index).await {
            eprintln!("ros-macvlan: rollback: deleting the interface failed: {e}");
        }
    }
}

fn set_arp_notify(ns: &Netns, ifname: &str) -> Result<()> {
    // Peers update their ARP caches at once when an address moves to a new pod.
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify");
    ns.run(|| std::fs::write(&path, "1"))?
        .map_err(|e| Error::io(format!("set {path}"), e))
}

/// DEL: releases the address whatever state the pod is in, then removes the interface and
/// restores what ADD changed, if the pod is still there. Nothing left to do is success.
pub async fn del(conf: &NetConf, env: &CniEnv, ipam: &Ipam) -> Result<()> {
    ipam.del(conf, env)?;
    if env.netns.is_empty() {
        return Ok(());
    }
    let pod_ns = match Netns::open(&env.netns) {
        Ok(ns) => ns,
        Err(Error::ContainerUnknown(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let nl = Netlink::connect(&pod_ns)?;
    // The attachment's link, and any it left under its temporary name (an ADD killed
    // between creating and renaming it).
    let prefix = temp_prefix(env);
    let (ours, others): (Vec<Link>, Vec<Link>) = nl
        .links()
        .await?
        .into_iter()
        .partition(|l| l.is_macvlan() && (l.name == env.ifname || l.name.starts_with(&prefix)));
    for link in &ours {
        multicast::leave(&nl, link.index, &conf.multicast).await?;
        nl.del_link(link.index).await?;
    }
    multicast::restore(&nl, &others, &env.ifname).await?;
    multicast::hand_over_routes(&nl, &pod_ns, &others, &conf.multicast).await
}

/// CHECK against prevResult: the interface, its kind, mode, MAC, addresses and routes.
pub async fn check(conf: &NetConf, env: &CniEnv, ipam: &Ipam, ns: &Namespaces) -> Result<()> {
    let prev_json = conf.prev_result.as_ref().ok_or_else(|| {
        Error::InvalidConfig("CHECK needs prevResult in the network config".into())
    })?;
    let prev = CniResult::from_json(prev_json).map_err(|e| e.context("prevResult"))?;
    ipam.check(conf, env, &prev)?;
    let link = ns.pod_nl.link_by_name(&env.ifname).await?.ok_or_else(|| {
        Error::CheckFailed(format!(
            "interface {} not found in pod netns {}",
            env.ifname, env.netns
        ))
    })?;
    if !link.is_macvlan() {
        return Err(Error::CheckFailed(format!(
            "{} is not a macvlan interface",
            env.ifname
        )));
    }
    if link.macvlan_mode != Some(kernel_mode(conf.mode)) {
        return Err(Error::CheckFailed(format!(
            "{} is not in macvlan mode {} (kernel says {:?})",
            env.ifname,
            conf.mode.as_str(),
            link.macvlan_mode
        )));
    }
    let our_index = prev.interfaces.iter().position(|i| i.name == env.ifname);
    if let Some(expected) = our_index.map(|i| &prev.interfaces[i]) {
        if !expected.mac.is_empty() && !expected.mac.eq_ignore_ascii_case(&format_mac(&link.mac)) {
            return Err(Error::CheckFailed(format!(
                "{} has MAC {}, prevResult says {}",
                env.ifname,
                format_mac(&link.mac),
                expected.mac
            )));
        }
    }
    let present: Vec<IpNetwork> = ns
        .pod_nl
        .addresses(Some(link.index))
        .await?
        .into_iter()
        .map(|(_, a, _)| a)
        .collect();
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == our_index)
    {
        if !present.contains(&ip.address) {
            return Err(Error::CheckFailed(format!(
                "{} lacks address {}",
                env.ifname, ip.address
            )));
        }
    }
    let mut routes = ns.pod_nl.routes_v4(TABLE_MAIN).await?;
    routes.extend(ns.pod_nl.routes_v6(TABLE_MAIN).await?);
    for r in &prev.routes {
        let found = routes.iter().any(|k| {
            k.dst == r.dst && k.oif == Some(link.index) && (r.gw.is_none() || k.gw == r.gw)
        });
        if !found {
            return Err(Error::CheckFailed(format!(
                "route {} out {} is missing",
                r.dst, env.ifname
            )));
        }
    }
    multicast::check(&ns.pod_nl, &ns.pod_ns, &link, &conf.multicast).await
}
