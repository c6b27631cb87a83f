//! The node agent's part in host access: on every sweep it re-reads the node configuration
//! (the `hostAccess` list of the policy file it mirrors), puts back whatever of it is missing
//! (a shim deleted or down, a route gone, a master re-created), and takes host access off the
//! masters that left the list. What it set up is remembered in a file beside its socket, so
//! an entry removed while the agent was not running is still taken off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::node::host_access::{self, Spec};
use crate::node::policy::Policy;
use crate::sys::netlink::Netlink;

/// The file in the agent's directory where it notes the host access it set up.
pub const STATE_FILE: &str = "host-access.json";

pub struct Keeper {
    /// The node configuration to follow.
    config: PathBuf,
    /// What the agent set up: the masters it must take host access off when they leave the list.
    state: PathBuf,
    applied: Vec<Spec>,
    /// The last thing said per master (or about the configuration), so a lasting problem is
    /// logged once, not every sweep.
    said: HashMap<String, String>,
}

impl Keeper {
    pub fn new(config: PathBuf, agent_dir: &Path) -> Keeper {
        let state = agent_dir.join(STATE_FILE);
        let applied = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Keeper {
            config,
            state,
            applied,
            said: HashMap::new(),
        }
    }

    /// One round: make the node match the configuration.
    pub fn reconcile(&mut self) {
        let wanted: Vec<Spec> = match Policy::read(&self.config) {
            Ok(policy) => policy.map(|p| p.host_access().to_vec()).unwrap_or_default(),
            Err(e) => {
                // A broken file must not take host access away: keep what is there.
                self.say("config", format!("host access unchanged: {e}"), true);
                return;
            }
        };
        self.said.remove("config");
        if wanted.is_empty() && self.applied.is_empty() {
            return;
        }
        let nl = match Netlink::here() {
            Ok(nl) => nl,
            Err(e) => {
                self.say("config", format!("host access: {e}"), true);
                return;
            }
        };
        for gone in self
            .applied
            .iter()
            .filter(|a| !wanted.iter().any(|w| w.master == a.master))
        {
            match host_access::remove(&nl, &gone.master) {
                Ok(changes) => {
                    for c in changes {
                        log::info!("agent: host access on {}: {c} (left the list)", gone.master);
                    }
                }
                Err(e) => log::warn!("agent: host access on {}: {e}", gone.master),
            }
        }
        for spec in &wanted {
            match host_access::ensure(&nl, spec) {
                Ok(changes) if changes.is_empty() => {
                    self.say(&spec.master, "in place".into(), false);
                }
                Ok(changes) => {
                    for c in &changes {
                        log::info!("agent: host access on {}: {c}", spec.master);
                    }
                    self.said.insert(spec.master.clone(), "in place".into());
                }
                Err(e) => self.say(&spec.master, format!("host access: {e} (retrying)"), true),
            }
        }
        if wanted != self.applied {
            self.applied = wanted;
            if let Err(e) = serde_json::to_vec(&self.applied)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&self.state, b))
            {
                log::warn!(
                    "agent: cannot remember host access in {}: {e}",
                    self.state.display()
                );
            }
        }
    }

    fn say(&mut self, key: &str, what: String, error: bool) {
        if self.said.get(key) == Some(&what) {
            return;
        }
        if error {
            log::warn!("agent: {what}");
        } else if key != "config" {
            log::info!("agent: host access on {key}: {what}");
        }
        self.said.insert(key.to_owned(), what);
    }
}
