//! The operator's side: the CLI and what it runs (the node agent, gc,
//! install, probe and doctor with their RTPS and Zenoh scouting decoders, ports, and the demo
//! with its namespace scenes, which the benchmark and the integration tests build on).

pub mod agent;
pub mod cli;
pub mod demo;
pub mod doctor;
pub mod gc;
pub mod install;
pub mod lan_watch;
pub mod ports;
pub mod probe;
// Zenoh relay (issue 24): the agent's side.
pub mod relay;
pub mod rtps;
pub mod uninstall;
pub mod zenoh;
