//! The CNI skeleton: the one place that knows the protocol's rules, as the reference's
//! `pkg/skel` with its `CNIFuncs`. It reads the environment each verb needs, has the plugin
//! decode and validate its config, gates verbs by version, answers VERSION, turns every
//! failure (a panic included: code 999) into the error JSON in the version asked for, writes
//! the result in the config's version, and hands each verb to the plugin. It knows no
//! plugin: a plugin is its verbs (`Plugin`).

use std::net::IpAddr;
use std::ops::Deref;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::config::{self, NetConf};
use super::env::{CniEnv, Command};
use super::result::CniResult;
use super::version::{Version, LATEST, SUPPORTED};
use super::{Error, Kind, Result};

/// What the process prints on stdout and exits with.
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

/// What a verb answers, still typed: the skeleton writes `result` out in the config's
/// version; `notes` and `released` are for the plugin's own record of the call.
#[derive(Debug, Default)]
pub struct Answer {
    /// ADD's result.
    pub result: Option<CniResult>,
    pub notes: Vec<String>,
    /// The addresses a DEL released, for its log line.
    pub released: Vec<IpAddr>,
}

/// A plugin: its config and its verbs. The skeleton calls `parse` once per invocation
/// (VERSION aside), gates the verb by the config's version, then calls the verb, then
/// `finished`.
pub trait Plugin {
    /// The plugin's validated config, embedding the common keys.
    type Conf: Deref<Target = NetConf>;
    /// Decodes and validates the plugin's config (`command` says which verb it is for:
    /// DEL may read less of it).
    fn parse(&mut self, command: Command, raw: &Value) -> Result<Self::Conf>;
    fn add(&mut self, conf: &Self::Conf, env: &CniEnv) -> Result<Answer>;
    fn del(&mut self, conf: &Self::Conf, env: &CniEnv) -> Result<Answer>;
    fn check(&mut self, conf: &Self::Conf, env: &CniEnv) -> Result<Answer>;
    fn gc(&mut self, conf: &Self::Conf, env: &CniEnv) -> Result<Answer>;
    fn status(&mut self, conf: &Self::Conf, env: &CniEnv) -> Result<Answer>;
    /// After every invocation whose environment was valid: `raw` is the decoded config
    /// (when it decoded), `conf` the validated one (when it validated).
    fn finished(
        &mut self,
        _env: &CniEnv,
        _raw: Option<&Value>,
        _conf: Option<&Self::Conf>,
        _result: std::result::Result<&Answer, &Error>,
        _took: Duration,
    ) {
    }
}

/// When this process's CNI call started; unset in a process that is no CNI call.
static CALL_STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// How long this process's CNI call has run so far; None when it is no CNI call.
pub fn call_elapsed() -> Option<Duration> {
    CALL_STARTED.get().map(Instant::elapsed)
}

/// Runs one CNI invocation of `plugin`: environment from `lookup`, config from `stdin`.
pub fn run<P: Plugin>(
    plugin: &mut P,
    lookup: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Outcome {
    let started = Instant::now();
    // One call per process: what the call reports of itself (its time so far) starts here.
    let _ = CALL_STARTED.set(started);
    let input = config::decode(stdin);
    // Errors are reported in the config's version, when it names one we speak.
    let reply_version = requested_version(input.as_ref().ok());
    let result = match CniEnv::from_lookup(&lookup) {
        Ok(env) => {
            let mut conf = None;
            let result = dispatch_guarded(plugin, &env, &input, &mut conf);
            plugin.finished(
                &env,
                input.as_ref().ok(),
                conf.as_ref(),
                result.as_ref().map(|reply| &reply.answer),
                started.elapsed(),
            );
            // The result is written out here, in the config's version, and nowhere else.
            result.map(|reply| {
                reply.stdout.or_else(|| {
                    let version = &conf.as_ref()?.version;
                    Some(reply.answer.result?.to_json(version))
                })
            })
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: Some(e.to_json(&reply_version)),
            exit_code: 1,
        },
    }
}

/// A verb's answer, or VERSION's (which the skeleton writes itself).
struct Reply {
    answer: Answer,
    stdout: Option<Value>,
}

/// A bug must still answer in the protocol: a panic becomes an error JSON (code 999), not a
/// crash the runtime cannot read; ADD's undo has run on the unwind.
fn dispatch_guarded<P: Plugin>(
    plugin: &mut P,
    env: &CniEnv,
    input: &Result<Value>,
    conf: &mut Option<P::Conf>,
) -> Result<Reply> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(plugin, env, input, conf)
    }))
    .unwrap_or_else(|_| {
        Err(Error::new(Kind::Internal,
            "internal error in ros-macvlan (a bug: please report it with the config used); what the call had done was undone",
        ))
    })
}

/// Validates the config, gates the verb by its version, then runs the verb.
fn dispatch<P: Plugin>(
    plugin: &mut P,
    env: &CniEnv,
    input: &Result<Value>,
    slot: &mut Option<P::Conf>,
) -> Result<Reply> {
    if env.command == Command::Version {
        // VERSION may come with no config at all.
        return Ok(Reply {
            answer: Answer::default(),
            stdout: Some(version_info(input.as_ref().ok())),
        });
    }
    let raw = match input {
        Ok(v) => v,
        Err(e) => return Err(Error::new(Kind::Decode, e.to_string())),
    };
    let conf = slot.insert(plugin.parse(env.command, raw)?);
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
    let conf: &P::Conf = conf;
    let answer = match env.command {
        Command::Add => plugin.add(conf, env)?,
        Command::Del => plugin.del(conf, env)?,
        Command::Check => plugin.check(conf, env)?,
        Command::Gc => plugin.gc(conf, env)?,
        Command::Status => plugin.status(conf, env)?,
        Command::Version => unreachable!("answered above"),
    };
    Ok(Reply {
        answer,
        stdout: None,
    })
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
