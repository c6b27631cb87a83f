//! `ros-macvlan install`: copies this binary into the node's CNI bin dir (`node::install`
//! does the copying, as it does for the agent at start), mirrors the node policy if asked,
//! and stays if asked.

use std::path::PathBuf;

use crate::node::install::{install, is_placed, sync_policy, Installed, BINARY_NAME};

/// `install --cni-bin-dir DIR [--policy FILE --policy-dir DIR] [--verify] [--stay]`:
/// `--verify` only reports whether DIR holds this exact binary (the DaemonSet's readiness
/// probe); `--policy` mirrors a ConfigMap's policy file into the node's policy dir; `--stay`
/// keeps running afterwards (the DaemonSet's main process).
/// What `ros-macvlan install` was asked to do.
pub struct Options {
    pub cni_bin_dir: PathBuf,
    /// The policy file (a ConfigMap mount) and where the plugin reads it.
    pub policy: Option<(PathBuf, PathBuf)>,
    pub verify: bool,
    pub stay: bool,
}

pub fn main(opts: &Options) -> i32 {
    let dir = &opts.cni_bin_dir;
    // Held from the start, so a SIGTERM during the copy waits for it and ends cleanly.
    let stop_signals = termination_signals();
    if opts.stay {
        if let Err(e) = stop_signals.thread_block() {
            log::error!("install: cannot wait for signals: {e}");
            return 1;
        }
    }
    let source = match std::env::current_exe() {
        Ok(s) => s,
        Err(e) => {
            log::error!("install: cannot find my own binary: {e}");
            return 1;
        }
    };
    let target = dir.join(BINARY_NAME);
    if opts.verify {
        let ok = is_placed(&source, &target, 0o755);
        println!(
            "{} {}",
            target.display(),
            if ok {
                "is installed and current"
            } else {
                "is missing or differs"
            }
        );
        return if ok { 0 } else { 1 };
    }
    match install(&source, dir) {
        Ok(Installed::Written) => println!(
            "installed {} (version {})",
            target.display(),
            env!("CARGO_PKG_VERSION")
        ),
        Ok(Installed::UpToDate) => println!(
            "{} is already current (version {})",
            target.display(),
            env!("CARGO_PKG_VERSION")
        ),
        Err(e) => {
            log::error!("install: cannot install into {}: {e}", dir.display());
            return 1;
        }
    }
    if let Some((src, pdir)) = &opts.policy {
        match sync_policy(src, pdir) {
            Ok(what) => println!("{what} ({})", pdir.display()),
            Err(e) => {
                log::error!(
                    "install: cannot install the node policy into {}: {e}",
                    pdir.display()
                );
                return 1;
            }
        }
    }
    if opts.stay {
        return wait_for_termination(&stop_signals);
    }
    0
}

/// As a container's PID 1, signals without a handler are ignored: wait for SIGTERM (or
/// SIGINT) explicitly so the pod stops at once instead of after its grace period.
fn termination_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Waits for SIGTERM or SIGINT, blocked since the start.
fn wait_for_termination(set: &nix::sys::signal::SigSet) -> i32 {
    match set.wait() {
        Ok(sig) => {
            println!("{sig:?} received, stopping");
            0
        }
        Err(e) => {
            log::error!("install: waiting for signals failed: {e}");
            1
        }
    }
}
