//! ros-macvlan: a CNI plugin giving ROS 2 pods a macvlan interface on the node's LAN on
//! which DDS discovery works, and the node agent and operator tools around it.
//!
//! - `cni`: the protocol (environment, config, results per version, errors, the skeleton);
//! - `plugin`: the attachment (macvlan ADD/DEL/CHECK with rollback, multicast, memberships,
//!   DEL's link removal, node policy, duplicate detection, GC/STATUS);
//! - `ipam`: host-local (ranges, the shared store) and delegation to IPAM plugins;
//! - `sys`: network namespaces, netlink and confined paths, knowing nothing of CNI;
//! - `tools`: the operator CLI (agent, host access, gc, install, probe, doctor, ports, demo).

pub mod cni;
pub mod ipam;
pub mod node;
pub mod plugin;
pub mod sys;
pub mod tools;

pub use cni::skel::{Answer, Outcome};
pub use plugin::run_cni;
