//! What belongs to the node, not to one pod: the node policy (which masters, ranges, modes
//! and directories attachments may use), host access (the node's shim onto its pods'
//! macvlan LAN), duplicate detection's ARP probes (ADD's and the agent's), and the
//! plugin's install into the CNI bin dir with the policy's mirror (the agent's and the
//! `install` command's).

pub mod duplicate;
pub mod host_access;
pub mod install;
pub mod policy;
