//! ros-macvlan: a CNI plugin giving ROS 2 pods a macvlan interface on the node's LAN on
//! which DDS discovery works, and the node agent and operator tools around it.
//!
//! - `cni`: the protocol (environment, config, results per version, errors, the skeleton);
//! - `plugin`: the attachment (macvlan ADD/DEL/CHECK with rollback, multicast, the hand-over
//!   of memberships and Zenoh relays to the agent, DEL's link removal, GC/STATUS);
//! - `agent`: the node agent (its protocol with the plugin and its client, its records, one
//!   module per duty, one lifecycle that owns them);
//! - `node`: what belongs to the node (policy, host access, ARP duplicate detection, the
//!   plugin's install);
//! - `ipam`: host-local (ranges, the shared store) and delegation to IPAM plugins;
//! - `sys`: network namespaces, netlink and confined paths, knowing nothing of CNI;
//! - `tools`: the operator CLI (host access, gc, install, probe, doctor, ports, demo).

pub mod agent;
pub mod cni;
pub mod ipam;
pub mod node;
pub mod plugin;
pub mod sys;
pub mod tools;

pub use cni::skel::{Answer, Outcome};
pub use plugin::run_cni;
