//! The operating system: network namespaces, netlink, and paths confined to allowed
//! directories. Nothing here knows CNI.

pub mod confine;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod runtime;
pub mod stable_hash;
