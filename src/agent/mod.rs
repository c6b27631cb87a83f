//! The node agent (`ros-macvlan agent`, the DaemonSet's one long-running process): what
//! must outlive a plugin call.
//!
//! - `protocol` and `client`: what the plugin (and the operator's tools) ask of the agent on
//!   its socket, one request type and one reply type, and the client end that asks;
//! - `records`: what the plugin writes beside the socket for the agent (memberships, Zenoh
//!   relays), the directory that keeps them, its listing and its sorting against what the
//!   agent holds;
//! - one module per duty: `memberships` (the sockets that hold the pods' group
//!   memberships), `relays` (the pods' Zenoh relays), `lan_watch` with `lan_state` (probing
//!   ahead and watching the pods' addresses on the LAN, and the files ADD reads of it),
//!   `host_keeper` (host access) and `leaks` (claims of pods that are gone);
//! - `metrics` and `metrics_endpoint`: what it holds and does, for Prometheus, and the
//!   HTTP endpoint that serves them;
//! - `lifecycle`: the one loop that owns every duty, serves the socket and stops them all;
//!   `supervise`: what it does when a duty fails (logged, then started again or the agent
//!   stops).
//!
//! The plugin imports this module's protocol, client and records; no duty imports the
//! plugin.

pub mod budget;
pub mod client;
pub mod host_keeper;
pub mod lan_state;
pub mod lan_watch;
pub mod leaks;
pub mod lifecycle;
pub mod memberships;
pub mod metrics;
pub mod metrics_endpoint;
pub mod protocol;
pub mod records;
pub mod relays;
pub mod supervise;
