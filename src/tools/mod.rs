//! The operator's side: the CLI and what it runs (the node agent, host access, gc,
//! install, probe, doctor, ports, demo), and the namespace scenes of the demo and the tests.

pub mod agent;
pub mod cli;
pub mod demo;
pub mod doctor;
pub mod host_access;
pub mod host_keeper;
pub mod install;
pub mod probe;
pub mod rtps;
pub mod scene;
