//! The verbs around an attachment's life: GC and STATUS (CNI 1.1), and the one log line
//! per invocation operators read.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::cni::env::{CniEnv, Command};
use crate::cni::result::CniResult;
use crate::cni::skel::Answer;
use crate::cni::version::{ResultShape, Version};
use crate::cni::{Error, Kind, Result};
use crate::ipam::store::Store;
use crate::ipam::Ipam;
use crate::plugin::config::{log_level_of, MacvlanConf};
use crate::plugin::master::resolve_master;
use crate::sys::confine::{self, Roots};
use crate::sys::netlink::Netlink;

/// GC: releases every claim of this network held by no valid attachment. Only claims
/// inside the config's own ranges are this network's to release: a config is a tenant's,
/// and its `name` and `dataDir` may name a store that other networks' claims live in.
pub fn gc(conf: &MacvlanConf, env: &CniEnv, ipam: &Ipam) -> Result<()> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    match ipam {
        Ipam::HostLocal(hl) => {
            let Some(store) = Store::open_existing(&hl.data_dir, &conf.name)? else {
                return Ok(());
            };
            let in_ranges =
                |ip: &std::net::IpAddr| hl.range_sets.iter().any(|s| s.range_of(*ip).is_some());
            // A claim recorded under another config's identity is that config's to release
            // (a same-named network sharing the store); one recorded under none (the
            // reference's, an older version's) is judged by the ranges alone.
            let identity = conf.claim_identity();
            let records = store.records();
            let foreign = |id: &str, ifname: &str| {
                records.iter().any(|r| {
                    r.container_id == id
                        && (r.ifname == ifname || ifname.is_empty())
                        && r.config.as_ref().is_some_and(|c| *c != identity)
                })
            };
            let ours = store.claims()?.into_iter().filter(|(ip, _)| in_ranges(ip));
            for (ip, holder) in ours {
                let keep = holder.is_some_and(|h| {
                    valid.contains(&(h.container_id.clone(), h.ifname.clone()))
                        || (h.ifname.is_empty()
                            && valid.iter().any(|(id, _)| *id == h.container_id))
                        || foreign(&h.container_id, &h.ifname)
                });
                if !keep {
                    store.release_ip(ip)?;
                }
            }
            for record in &records {
                if !valid.contains(&(record.container_id.clone(), record.ifname.clone()))
                    && record.ips.iter().all(in_ranges)
                    && record.config.as_ref().is_none_or(|c| *c == identity)
                {
                    store.remove_record(&record.container_id, &record.ifname);
                }
            }
            Ok(())
        }
        Ipam::Delegate(d) => d.exec("GC", env, &conf.raw).map(drop),
        Ipam::None => Ok(()),
    }
}

/// STATUS: ready when the master is there and up and an address is left to hand out.
pub fn status(conf: &MacvlanConf, ipam: &Ipam) -> Result<()> {
    let nl = Netlink::here()?;
    let master = resolve_master(&nl, conf, ipam)
        .map(|(link, _)| link)
        .map_err(|e| Error::new(Kind::NotAvailable, e.to_string()))?;
    if !master.is_up() {
        return Err(Error::new(
            Kind::NotAvailable,
            format!("master interface {} is down; bring it up", master.name),
        ));
    }
    if let Ipam::HostLocal(hl) = ipam {
        let store = Store::open(&hl.data_dir, &conf.name)?;
        for (i, set) in hl.range_sets.iter().enumerate() {
            let free = set
                .candidates(None)
                .any(|(ip, _)| store.holder_of(ip).is_none());
            if !free {
                return Err(Error::new(
                    Kind::NoAddressesLeft,
                    format!(
                        "range set {i} of network {} has no free address left",
                        conf.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where the log line of an invocation goes: stderr, unless the config is valid and names a
/// `logFile` in a directory the node allows for logs.
#[derive(Debug, Default)]
pub enum LogSink {
    #[default]
    Stderr,
    File(File),
}

impl LogSink {
    /// For a validated config: its `logFile`, confined to `roots` and opened now, so that a
    /// path the node does not allow refuses the invocation (code 7) before it changes
    /// anything. A file that cannot be opened for another reason (a full or read-only disk)
    /// does not fail the attachment: the line goes to stderr.
    pub fn open(conf: &MacvlanConf, roots: &Roots) -> Result<LogSink> {
        let path = match &conf.log_file {
            None | Some(Value::Null) => return Ok(LogSink::Stderr),
            Some(Value::String(s)) if s.is_empty() => return Ok(LogSink::Stderr),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(Error::new(
                    Kind::InvalidConfig,
                    format!("logFile must be a path, not {other}"),
                ))
            }
        };
        let (dir, name) = roots.confine_file("logFile", path)?;
        if conf.log_level == "none" {
            return Ok(LogSink::Stderr);
        }
        match dir.append_file(&name) {
            Ok(f) => Ok(LogSink::File(f)),
            Err(e @ confine::Error::Io { .. }) => {
                log::warn!("ros-macvlan: cannot open logFile ({e}); logging to stderr");
                Ok(LogSink::Stderr)
            }
            Err(refused) => Err(refused.into()),
        }
    }
}

/// One line per ADD, DEL and CHECK: the pod, container, interface, address, duration and
/// outcome, to `sink`. `logLevel` "error" logs failures only, "none" nothing.
pub fn log_invocation(
    env: &CniEnv,
    raw: Option<&Value>,
    conf: Option<&MacvlanConf>,
    result: std::result::Result<&Answer, &Error>,
    took: Duration,
    sink: LogSink,
) {
    if !matches!(env.command, Command::Add | Command::Del | Command::Check) {
        return;
    }
    // A refused config's line still follows its `logLevel`.
    let level = match conf {
        Some(c) => c.log_level.as_str(),
        None => log_level_of(raw.and_then(|r| r.get("logLevel"))),
    };
    if level == "none" || (level == "error" && result.is_ok()) {
        return;
    }
    let pod = format!(
        "{}/{}",
        env.arg("K8S_POD_NAMESPACE").unwrap_or("-"),
        env.arg("K8S_POD_NAME").unwrap_or("-")
    );
    let address = result
        .ok()
        .and_then(|answer| {
            let added = answer.result.as_ref()?;
            written_address(added, &conf?.version)
        })
        .map(|a| a.to_string())
        .or_else(|| {
            let released = result.ok()?.released.first()?;
            Some(released.to_string())
        })
        .unwrap_or_else(|| "-".to_owned());
    let outcome = match result {
        Ok(answer) if answer.notes.is_empty() => "ok".to_owned(),
        Ok(answer) => format!("ok; {}", answer.notes.join("; ")),
        Err(e) => format!("error {}: {e}", e.code()),
    };
    let line = format!(
        "ros-macvlan {} pod={pod} container={} if={} address={address} took={:.1}ms {outcome}\n",
        env.command.as_str(),
        env.container_id,
        env.ifname,
        took.as_secs_f64() * 1000.0
    );
    match sink {
        LogSink::File(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        LogSink::Stderr => eprint!("{line}"),
    }
}

/// The address a result names first as it is written in `version`: the first of `ips`, or
/// the old form's `ip4` (which holds the first IPv4 address only).
fn written_address(result: &CniResult, version: &Version) -> Option<ipnetwork::IpNetwork> {
    match version.shape() {
        ResultShape::Legacy => result.ips.iter().find(|i| i.address.is_ipv4()),
        _ => result.ips.first(),
    }
    .map(|i| i.address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::result::IpConfig;

    #[test]
    fn the_logged_address_is_the_one_the_written_result_names_first() {
        let ip = |a: &str| IpConfig {
            address: a.parse().unwrap(),
            gateway: None,
            interface: Some(0),
        };
        let r = CniResult {
            ips: vec![ip("2001:db8::5/64"), ip("198.51.100.7/24")],
            ..CniResult::default()
        };
        let at =
            |v: &str| written_address(&r, &Version::parse(Some(v)).unwrap()).map(|a| a.to_string());
        assert_eq!(at("1.0.0").as_deref(), Some("2001:db8::5/64"));
        assert_eq!(at("0.2.0").as_deref(), Some("198.51.100.7/24"));
    }
}
