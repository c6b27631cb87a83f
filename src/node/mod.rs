//! What belongs to the node, not to one pod: the node policy (which masters, ranges, modes
//! and directories attachments may use), host access (the node's shim onto its pods'
//! macvlan LAN) and its keeper (which the agent runs).

pub mod host_access;
pub mod host_keeper;
pub mod policy;
