//! The process's one tokio runtime, a current-thread one, built on first use and kept for
//! the life of the process. The plugin's netlink exchanges run on it (sys::netlink); the
//! node agent's loop runs on it too, and the agent's blocking work (host access, on the
//! runtime's blocking pool) has its exchanges driven by that same loop: a second thread that
//! calls `block_on` waits for the loop to drive its future rather than starting a runtime.
//!
//! A forked child is the one exception: it shares the parent's epoll instance, which the
//! parent tears down when it exits, so it builds a runtime of its own (`Netlink::for_child`).

use std::sync::OnceLock;

use tokio::runtime::Runtime;

static PROCESS: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The process's runtime; the error says why it could not be built.
pub fn process() -> Result<&'static Runtime, String> {
    PROCESS
        .get_or_init(|| build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// A current-thread runtime with IO and time, for the process or a forked child.
pub fn build() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
