//! Address management: the built-in host-local, or delegation to any other IPAM plugin.

pub mod delegate;
pub mod host_local;
pub mod range;
pub mod store;

use std::net::IpAddr;

use crate::cni::config::NetConf;
use crate::cni::env::CniEnv;
use crate::cni::result::CniResult;
use crate::cni::{Error, Kind, Result};
use crate::sys::confine::{Readable, Roots};
use delegate::Delegate;
pub use host_local::Hints;
use host_local::{HostLocalConf, Owner};

/// The IPAM an attachment uses, validated before any side effect.
#[derive(Debug, Clone)]
pub enum Ipam {
    /// No `ipam` section: the interface gets no address.
    None,
    HostLocal(HostLocalConf),
    Delegate(Delegate),
}

impl Ipam {
    /// `data_roots`: where host-local's `dataDir` may lead on this node; `readable`: which
    /// files its `resolvConf` may name.
    pub fn from_conf(
        conf: &NetConf,
        env: &CniEnv,
        data_roots: &Roots,
        readable: &Readable,
    ) -> Result<Ipam> {
        match conf.ipam_type() {
            "" if conf.ipam.is_null() || conf.ipam.as_object().is_some_and(|o| o.is_empty()) => {
                Ok(Ipam::None)
            }
            "" => Err(Error::new(Kind::InvalidConfig, "ipam has no \"type\"")),
            "host-local" => Ok(Ipam::HostLocal(HostLocalConf::parse(
                &conf.ipam, data_roots, readable,
            )?)),
            other => Ok(Ipam::Delegate(Delegate::find(other, env)?)),
        }
    }

    /// The subnets addresses come from, where the config says (host-local's ranges); a
    /// delegated plugin's are its own business.
    pub fn subnets(&self) -> Vec<ipnetwork::IpNetwork> {
        match self {
            Ipam::HostLocal(hl) => hl
                .range_sets
                .iter()
                .flat_map(|set| set.0.iter().map(|r| r.subnet))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Obtains the addresses, routes and DNS of a new attachment; host-local follows the
    /// `hints` (passes over addresses found in use, starts a fresh store at the node's pick).
    pub fn add(&self, conf: &NetConf, env: &CniEnv, hints: Hints) -> Result<CniResult> {
        match self {
            Ipam::None => Ok(CniResult::default()),
            Ipam::HostLocal(hl) => {
                let owner = Owner {
                    container_id: &env.container_id,
                    ifname: &env.ifname,
                    netns: &env.netns,
                    pod_namespace: env.arg("K8S_POD_NAMESPACE"),
                    pod_name: env.arg("K8S_POD_NAME"),
                };
                let ips = hl.allocate(&conf.name, &owner, &conf.runtime_config.ips, hints)?;
                let dns = match hl.dns() {
                    Ok(dns) => dns,
                    Err(e) => {
                        let _ = hl.release(&conf.name, &env.container_id, &env.ifname, &[]);
                        return Err(e);
                    }
                };
                Ok(CniResult {
                    ips,
                    routes: hl.routes.clone(),
                    dns,
                    ..CniResult::default()
                })
            }
            Ipam::Delegate(d) => d.add(env, &conf.raw),
        }
    }

    /// Releases the attachment's addresses; releasing nothing is success.
    pub fn del(&self, conf: &NetConf, env: &CniEnv) -> Result<()> {
        match self {
            Ipam::None => Ok(()),
            Ipam::HostLocal(hl) => {
                // prevResult (sent with DEL by some runtimes) names the claims to release.
                let known: Vec<IpAddr> = conf
                    .prev_result
                    .as_ref()
                    .and_then(|p| CniResult::from_json(p).ok())
                    .map(|p| p.ips.iter().map(|i| i.address.ip()).collect())
                    .unwrap_or_default();
                hl.release(&conf.name, &env.container_id, &env.ifname, &known)
            }
            Ipam::Delegate(d) => d.exec("DEL", env, &conf.raw).map(drop),
        }
    }

    /// Verifies the attachment still holds the addresses its result names.
    pub fn check(&self, conf: &NetConf, env: &CniEnv, prev: &CniResult) -> Result<()> {
        match self {
            Ipam::None => Ok(()),
            Ipam::HostLocal(hl) => {
                let held = hl.held(&conf.name, &env.container_id, &env.ifname)?;
                let missing: Vec<IpAddr> = prev
                    .ips
                    .iter()
                    .map(|i| i.address.ip())
                    .filter(|ip| !held.contains(ip))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(Error::new(
                        Kind::CheckFailed,
                        format!(
                            "host-local holds no claim for {missing:?} of container {}",
                            env.container_id
                        ),
                    ))
                }
            }
            Ipam::Delegate(d) => d.exec("CHECK", env, &conf.raw).map(drop),
        }
    }
}
