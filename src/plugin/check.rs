//! CHECK against prevResult: the interface, its kind, mode, MAC, addresses and routes, then
//! the discovery path (`diagnosis`).

use ipnetwork::IpNetwork;

use crate::cni::result::CniResult;
use crate::cni::{Error, Kind, Result};
use crate::plugin::attachment::{Attachment, Namespaces};
use crate::plugin::master::resolve_master;
use crate::plugin::{diagnosis, membership};
use crate::sys::netlink::{format_mac, TABLE_MAIN};

/// CHECK against prevResult: the interface, its kind, mode, MAC, addresses and routes.
pub fn check(at: &Attachment<'_>, ns: &Namespaces) -> Result<()> {
    let Attachment {
        conf,
        env,
        ipam,
        agent,
    } = *at;
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
        Some(resolve_master(&*ns.master_nl, conf, ipam)?.0)
    } else {
        None
    };
    let findings = diagnosis::diagnose(
        &*ns.pod_nl,
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
