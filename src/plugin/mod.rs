//! The macvlan attachment: its config, its verbs (`Macvlan`, the skeleton's `Plugin`), and
//! what one CNI invocation does to a pod and the node.

pub mod add;
pub mod attachment;
pub mod check;
pub mod config;
pub mod dad;
pub mod del;
pub mod diagnosis;
pub mod lifecycle;
pub mod master;
pub mod membership;
pub mod multicast;
pub mod reaper;
pub mod tenancy;
// Zenoh relay (issue 24): rmw_zenoh with no configuration.
pub mod zenoh_relay;

use std::time::Duration;

use serde_json::Value;

use crate::cni::env::{CniEnv, Command};
use crate::cni::skel::{self, Answer, Outcome, Plugin};
use crate::cni::{Error, Result};
use crate::ipam::Ipam;
use crate::node::policy::{AllowedDirs, Policy};
use attachment::{Attachment, Namespaces};
use config::MacvlanConf;
use lifecycle::LogSink;
use membership::AgentPlace;

/// Runs one CNI invocation of the macvlan plugin: environment from `lookup`, config from
/// `stdin`.
pub fn run_cni(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    skel::run(&mut Macvlan::default(), lookup, stdin)
}

/// The macvlan plugin's verbs, for the skeleton. It keeps where the call's log line goes:
/// the config's `logFile` once the whole config is valid and its paths are confined (a
/// refused config writes nowhere but stderr).
#[derive(Default)]
pub struct Macvlan {
    log: LogSink,
}

/// What every verb needs of the node beside the config, read and checked before it runs.
struct Prepared {
    /// Read once: it widens the allowed directories here and bounds ADD's master and
    /// ranges. A policy that cannot be read widens nothing (ADD refuses it on its own).
    policy: Result<Option<Policy>>,
    ipam: Ipam,
    agent: AgentPlace,
}

impl Prepared {
    fn attachment<'a>(&'a self, conf: &'a MacvlanConf, env: &'a CniEnv) -> Attachment<'a> {
        Attachment {
            conf,
            env,
            ipam: &self.ipam,
            agent: &self.agent,
        }
    }
}

impl Macvlan {
    fn prepare(&mut self, conf: &MacvlanConf, env: &CniEnv) -> Result<Prepared> {
        let policy = Policy::load();
        let allowed = AllowedDirs::new(policy.as_ref().ok().and_then(Option::as_ref));
        let ipam = Ipam::from_conf(conf, env, &allowed.data, &allowed.resolv_conf)?;
        let agent = AgentPlace::of_config(conf, &allowed.agent)?;
        self.log = LogSink::open(conf, &allowed.logs)?;
        Ok(Prepared {
            policy,
            ipam,
            agent,
        })
    }
}

impl Plugin for Macvlan {
    type Conf = MacvlanConf;

    fn parse(&mut self, command: Command, raw: &Value) -> Result<MacvlanConf> {
        if command == Command::Del {
            MacvlanConf::for_del(raw)
        } else {
            MacvlanConf::from_value(raw)
        }
    }

    fn add(&mut self, conf: &MacvlanConf, env: &CniEnv) -> Result<Answer> {
        let mut p = self.prepare(conf, env)?;
        p.agent.prepare()?;
        let ns = Namespaces::open(conf, &env.netns)?;
        let policy = std::mem::replace(&mut p.policy, Ok(None));
        add::add(&p.attachment(conf, env), &ns, policy).map(|added| Answer {
            result: Some(added.result),
            notes: added.notes,
            ..Answer::default()
        })
    }

    fn del(&mut self, conf: &MacvlanConf, env: &CniEnv) -> Result<Answer> {
        let p = self.prepare(conf, env)?;
        // DEL has no result to read the address from: its log line names what it releases.
        let released = match &p.ipam {
            Ipam::HostLocal(hl) => hl.recorded(&conf.name, &env.container_id, &env.ifname),
            _ => Vec::new(),
        };
        del::del(&p.attachment(conf, env)).map(|_| Answer {
            released,
            ..Answer::default()
        })
    }

    fn check(&mut self, conf: &MacvlanConf, env: &CniEnv) -> Result<Answer> {
        let p = self.prepare(conf, env)?;
        let ns = Namespaces::open(conf, &env.netns)?;
        check::check(&p.attachment(conf, env), &ns).map(|_| Answer::default())
    }

    fn gc(&mut self, conf: &MacvlanConf, env: &CniEnv) -> Result<Answer> {
        let p = self.prepare(conf, env)?;
        lifecycle::gc(conf, env, &p.ipam).map(|_| Answer::default())
    }

    fn status(&mut self, conf: &MacvlanConf, env: &CniEnv) -> Result<Answer> {
        let p = self.prepare(conf, env)?;
        lifecycle::status(conf, &p.ipam).map(|_| Answer::default())
    }

    fn finished(
        &mut self,
        env: &CniEnv,
        raw: Option<&Value>,
        conf: Option<&MacvlanConf>,
        result: std::result::Result<&Answer, &Error>,
        took: Duration,
    ) {
        let sink = std::mem::take(&mut self.log);
        lifecycle::log_invocation(env, raw, conf, result, took, sink);
    }
}
