//! The CNI skeleton: the one place that knows the protocol's rules. It reads the
//! environment each verb needs, decodes and validates the config, gates verbs by version,
//! answers VERSION, turns every failure (a panic included: code 999) into the error JSON in
//! the version asked for, writes the one log line, and hands each verb to the plugin.

use std::time::Instant;

use serde_json::{json, Value};

use super::config::{self, NetConf};
use super::env::{CniEnv, Command};
use super::version::{Version, LATEST, SUPPORTED};
use super::{Error, Kind, Result};
use crate::ipam::Ipam;
use crate::plugin::lifecycle::{self, LogSink};
use crate::plugin::policy::{AllowedDirs, Policy};
use crate::plugin::{macvlan, membership};

/// What the process prints on stdout and exits with.
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

/// Runs one CNI invocation: environment from `lookup`, config from `stdin`.
pub fn run_cni(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let started = Instant::now();
    let input = config::decode(stdin);
    // Errors are reported in the config's version, when it names one we speak.
    let reply_version = requested_version(input.as_ref().ok());
    let result = match CniEnv::from_lookup(&lookup) {
        Ok(env) => {
            let mut log = LogSink::Stderr;
            let result = dispatch_guarded(&env, &input, &mut log);
            lifecycle::log_invocation(&env, input.as_ref().ok(), &result, started.elapsed(), log);
            result
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(answer) => Outcome {
            stdout: answer.stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: Some(e.to_json(&reply_version)),
            exit_code: 1,
        },
    }
}

/// What a verb answers on stdout, and what the log line should say beside the outcome.
#[derive(Debug, Default)]
pub struct Answer {
    pub stdout: Option<Value>,
    pub notes: Vec<String>,
    /// The addresses a DEL released, for its log line.
    pub released: Vec<std::net::IpAddr>,
}

impl Answer {
    fn silent() -> Answer {
        Answer::default()
    }
    fn json(v: Value) -> Answer {
        Answer {
            stdout: Some(v),
            ..Answer::default()
        }
    }
}

/// A bug must still answer in the protocol: a panic becomes an error JSON (code 999), not a
/// crash the runtime cannot read; ADD's undo has run on the unwind.
fn dispatch_guarded(env: &CniEnv, input: &Result<Value>, log: &mut LogSink) -> Result<Answer> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(env, input, log)))
        .unwrap_or_else(|_| {
            Err(Error::new(Kind::Internal,
                "internal error in ros-macvlan (a bug: please report it with the config used); what the call had done was undone",
            ))
        })
}

/// Validates the config, then runs the verb. `log` becomes the config's `logFile` only once
/// the whole config is valid and its paths are confined: a refused config writes nowhere but
/// stderr.
fn dispatch(env: &CniEnv, input: &Result<Value>, log: &mut LogSink) -> Result<Answer> {
    if env.command == Command::Version {
        // VERSION may come with no config at all.
        return Ok(Answer::json(version_info(input.as_ref().ok())));
    }
    let raw = match input {
        Ok(v) => v,
        Err(e) => return Err(Error::new(Kind::Decode, e.to_string())),
    };
    let conf = if env.command == Command::Del {
        NetConf::for_del(raw)?
    } else {
        NetConf::from_value(raw)?
    };
    match env.command {
        Command::Check if !conf.version.supports_check() => {
            return Err(Error::new(
                Kind::IncompatibleVersion,
                format!(
                    "CHECK needs cniVersion 0.4.0 or later; the config says {}",
                    conf.version.as_str()
                ),
            ))
        }
        Command::Gc => require_1_1(&conf.version, "GC")?,
        Command::Status => require_1_1(&conf.version, "STATUS")?,
        _ => {}
    }
    // Read once: it widens the allowed directories here and bounds ADD's master and ranges.
    // A policy that cannot be read widens nothing (ADD refuses it on its own).
    let policy = Policy::load();
    let allowed = AllowedDirs::new(policy.as_ref().ok().and_then(Option::as_ref));
    let ipam = Ipam::from_conf(&conf, env, &allowed.data, &allowed.resolv_conf)?;
    let agent = membership::AgentPlace::of_config(&conf, &allowed.agent)?;
    *log = LogSink::open(raw, &allowed.logs)?;
    match env.command {
        Command::Add => {
            agent.prepare()?;
            let ns = macvlan::Namespaces::open(&conf, &env.netns)?;
            macvlan::add(&conf, env, &ipam, &agent, &ns, policy).map(|added| Answer {
                stdout: Some(added.result.to_json(&conf.version)),
                notes: added.notes,
                ..Answer::default()
            })
        }
        Command::Del => {
            // DEL has no result to read the address from: its log line names what it releases.
            let released = match &ipam {
                crate::ipam::Ipam::HostLocal(hl) => {
                    hl.recorded(&conf.name, &env.container_id, &env.ifname)
                }
                _ => Vec::new(),
            };
            macvlan::del(&conf, env, &ipam, &agent).map(|_| Answer {
                released,
                ..Answer::silent()
            })
        }
        Command::Check => {
            let ns = macvlan::Namespaces::open(&conf, &env.netns)?;
            macvlan::check(&conf, env, &ipam, &agent, &ns).map(|_| Answer::silent())
        }
        Command::Gc => lifecycle::gc(&conf, env, &ipam).map(|_| Answer::silent()),
        Command::Status => lifecycle::status(&conf, &ipam).map(|_| Answer::silent()),
        Command::Version => unreachable!("answered above"),
    }
}

fn require_1_1(v: &Version, verb: &str) -> Result<()> {
    if v.supports_gc_and_status() {
        Ok(())
    } else {
        Err(Error::new(
            Kind::IncompatibleVersion,
            format!(
                "{verb} needs cniVersion 1.1.0; the config says {}",
                v.as_str()
            ),
        ))
    }
}

/// VERSION: answers in the version asked for (when we speak it) with every version we speak.
fn version_info(input: Option<&Value>) -> Value {
    json!({ "cniVersion": requested_version(input), "supportedVersions": SUPPORTED })
}

/// The `cniVersion` the config asks for when it is one we speak, else the latest.
fn requested_version(input: Option<&Value>) -> String {
    input
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_owned())
}
