//! The operating system: network namespaces and netlink. Nothing here knows CNI.

pub mod netlink;
pub mod netns;
pub mod stable_hash;
