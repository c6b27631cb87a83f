//! The agent's duty of leak collection (and `ros-macvlan gc`'s round): releases the
//! host-local claims of pods that are gone, naming each. Multus never sends the GC verb to
//! a NAD's plugin, so a lost DEL's claim is found here. The round returns its report; the
//! CLI prints it, the agent logs it.

use std::path::Path;

use crate::cni::{Error, Result};
use crate::ipam::store::{ClaimRecord, Store};
use crate::sys::confine::ConfinedPath;
use crate::sys::netns::{self, Presence};

/// One round of gc: releases the claims of pods that are gone. The report has a line for
/// each claim kept in doubt, one for each released, and the count; the error says why no
/// round could be made.
pub fn once(data_dir: &Path) -> std::result::Result<Vec<String>, String> {
    let sweep = release_orphans(data_dir).map_err(|e| format!("gc: {e}"))?;
    let mut report: Vec<String> = sweep.kept.iter().map(|why| format!("gc: {why}")).collect();
    for o in &sweep.released {
        let r = &o.record;
        report.push(format!(
            "released {:?} of network {} (pod {}/{}, container {}, {}): netns {} is gone",
            r.ips,
            o.network,
            r.pod_namespace.as_deref().unwrap_or("-"),
            r.pod_name.as_deref().unwrap_or("-"),
            r.container_id,
            r.ifname,
            r.netns
        ));
    }
    report.push(format!(
        "gc: {} attachment(s) released under {}",
        sweep.released.len(),
        data_dir.display()
    ));
    Ok(report)
}

/// An attachment whose pod is gone, released by `orphans`.
#[derive(Debug)]
pub struct Orphan {
    pub network: String,
    pub record: ClaimRecord,
}

/// What one round of `release_orphans` did: what it released, and what it kept because it
/// could not tell the pod gone (each with why).
#[derive(Debug, Default)]
pub struct Sweep {
    pub released: Vec<Orphan>,
    pub kept: Vec<String>,
}

/// `ros-macvlan gc`: releases, in every network of `data_dir`, the claims whose record names
/// a netns that is positively gone (`netns::presence`: the pod vanished without a DEL, a
/// reboot, a lost DEL). Claims without a record (made by the reference plugin) are left
/// alone: nothing tells whether their pod lives. The operator names `data_dir`; below it no
/// symlink is followed.
pub fn release_orphans(data_dir: &Path) -> Result<Sweep> {
    let mut sweep = Sweep::default();
    let data = ConfinedPath::trusted("--data-dir", data_dir, crate::node::policy::DATA_DIR_MODE);
    let Some(dir) = data.open_dir()? else {
        return Ok(sweep);
    };
    let networks = dir
        .entries()
        .map_err(|e| Error::io(format!("read {}", data_dir.display()), e))?;
    for network in networks
        .into_iter()
        .filter(|(_, is_dir)| *is_dir)
        .filter_map(|(name, _)| name.into_string().ok())
    {
        let Some(store) = Store::open_existing(&data, &network)? else {
            continue;
        };
        for record in store.records() {
            match netns::presence(&record.netns, None, record.proc_pid_ns) {
                Presence::Here => continue,
                Presence::Unknown(why) => {
                    sweep.kept.push(format!(
                        "kept {:?} of network {network} (container {}): {why}",
                        record.ips, record.container_id
                    ));
                    continue;
                }
                Presence::Gone(_) => {}
            }
            store.release_listed(&record.ips, &record.container_id, &record.ifname)?;
            store.remove_record(&record.container_id, &record.ifname);
            sweep.released.push(Orphan {
                network: network.clone(),
                record,
            });
        }
    }
    Ok(sweep)
}
