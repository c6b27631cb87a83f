//! The attachment: what one CNI invocation does to a pod and the node.

pub mod dad;
pub mod diagnosis;
pub mod duplicate;
pub mod lan_state;
pub mod lifecycle;
pub mod macvlan;
pub mod membership;
pub mod multicast;
pub mod policy;
pub mod reaper;
pub mod tenancy;
