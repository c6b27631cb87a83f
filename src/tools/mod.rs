//! The operator's side: the CLI and what it runs (the node agent from `agent`, gc,
//! install, probe and doctor (finding a pod by name in `pod`) with their RTPS and Zenoh scouting decoders, ports, and the demo
//! with its namespace scenes, which the benchmark and the integration tests build on).

pub mod cli;
pub mod demo;
pub mod doctor;
pub mod gc;
pub mod install;
pub mod pod;
pub mod ports;
pub mod probe;
pub mod rtps;
pub mod uninstall;
pub mod zenoh;
