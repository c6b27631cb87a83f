//! Delegation to an IPAM plugin found in CNI_PATH, as the spec describes: the same
//! environment with our verb, the whole network config on stdin, its result on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::cni::env::CniEnv;
use crate::cni::result::CniResult;
use crate::cni::{Error, Kind, Result};

#[derive(Debug, Clone)]
pub struct Delegate {
    pub plugin: String,
    pub path: PathBuf,
}

impl Delegate {
    /// Finds the plugin binary. Its name must be a plain file name: a `type` such as
    /// `../../bin/sh` never leaves CNI_PATH.
    pub fn find(plugin: &str, env: &CniEnv) -> Result<Delegate> {
        if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("ipam.type {plugin:?} is not a plugin name"),
            ));
        }
        env.path
            .iter()
            .map(|dir| PathBuf::from(dir).join(plugin))
            .find(|p| p.is_file())
            .map(|path| Delegate {
                plugin: plugin.to_owned(),
                path,
            })
            .ok_or_else(|| {
                Error::new(Kind::InvalidConfig, format!(
                    "IPAM plugin {plugin:?} not found in CNI_PATH ({}); install it or use ipam.type host-local",
                    env.path.join(":")
                ))
            })
    }

    /// Runs the plugin with `verb`; returns its stdout JSON (Null when it printed nothing).
    pub fn exec(&self, verb: &str, env: &CniEnv, config: &Value) -> Result<Value> {
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &env.container_id)
            .env("CNI_NETNS", &env.netns)
            .env("CNI_IFNAME", &env.ifname)
            .env("CNI_ARGS", env.args_string())
            .env("CNI_PATH", env.path.join(":"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io(format!("run IPAM plugin {}", self.path.display()), e))?;
        let input =
            serde_json::to_vec(config).map_err(|e| Error::new(Kind::Decode, e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading its input is judged by its output below.
            let _ = stdin.write_all(&input);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("wait for IPAM plugin {}", self.plugin), e))?;
        let parsed: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).map_err(|e| {
                Error::new(
                    Kind::IpamPlugin,
                    format!("IPAM plugin {} printed invalid JSON: {e}", self.plugin),
                )
            })?
        };
        if out.status.success() {
            return Ok(parsed);
        }
        // The delegate's error object passes through with its own code, msg and details;
        // one that is not an error object is ours to describe.
        let text = |k: &str| parsed.get(k).and_then(Value::as_str).map(str::to_owned);
        match parsed.get("code").and_then(Value::as_u64) {
            Some(code) if code > 0 && code <= u64::from(u32::MAX) => Err(Error::delegated(
                code as u32,
                text("msg")
                    .unwrap_or_else(|| format!("IPAM plugin {} failed on {verb}", self.plugin)),
                text("details").unwrap_or_default(),
            )),
            _ => Err(Error::new(
                Kind::IpamPlugin,
                format!(
                    "IPAM plugin {} failed on {verb} ({}) without an error object",
                    self.plugin, out.status
                ),
            )),
        }
    }

    pub fn add(&self, env: &CniEnv, config: &Value) -> Result<CniResult> {
        CniResult::from_json(&self.exec("ADD", env, config)?)
            .map_err(|e| e.context(&format!("result of IPAM plugin {}", self.plugin)))
    }
}
