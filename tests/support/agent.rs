//! The node agents the tests drive beyond what the demo does: started in a node namespace
//! with extra arguments, killed, and started again at the same place (socket and records).

use std::ops::Deref;
use std::process::Command;

use nix::sys::signal::Signal;
use ros_macvlan::tools::demo::scene::Agent;

use super::{plugin_bin, sh};

/// The demo's `Agent` (it derefs to one) and how to start it again.
pub struct TestAgent {
    agent: Agent,
    /// The node namespace it runs in (the test's own one when none) and its extra arguments.
    netns: Option<String>,
    args: Vec<String>,
    /// A command the agent runs under (`prlimit --nofile=...`), none when empty.
    under: Vec<String>,
}

impl TestAgent {
    /// An agent running in the node namespace `netns`, as the DaemonSet's process runs in the
    /// node's, with extra arguments (`--policy`, ...); its output goes to `log()`.
    pub fn start_in(netns: Option<&str>, args: &[&str]) -> TestAgent {
        TestAgent::start_under(&[], netns, args)
    }

    /// An agent's place with nobody listening yet: plugins pointed at it find no agent.
    pub fn not_started() -> TestAgent {
        TestAgent {
            agent: Agent::vacant(),
            netns: None,
            args: Vec::new(),
            under: Vec::new(),
        }
    }

    /// `start_in`, the agent run under `under` (a command and its arguments, which runs
    /// the rest: `prlimit --nofile=1024:1024`).
    pub fn start_under(under: &[&str], netns: Option<&str>, args: &[&str]) -> TestAgent {
        let mut agent = TestAgent {
            netns: netns.map(str::to_owned),
            args: args.iter().map(|a| a.to_string()).collect(),
            under: under.iter().map(|a| a.to_string()).collect(),
            ..TestAgent::not_started()
        };
        agent.restart();
        agent
    }

    /// Starts the agent (again) at its place, and waits until it answers.
    pub fn restart(&mut self) {
        let mut line: Vec<std::ffi::OsString> = self.under.iter().map(Into::into).collect();
        if let Some(ns) = &self.netns {
            line.extend(["ip", "netns", "exec", ns].map(Into::into));
        }
        line.push(plugin_bin().into());
        let mut program = Command::new(&line[0]);
        program.args(&line[1..]);
        self.agent.launch(program, &self.args);
    }

    /// Kills the agent at once (SIGKILL: it has no chance to tidy up).
    pub fn kill(&mut self) {
        self.agent.end(Signal::SIGKILL);
    }

    /// Stops the agent (SIGTERM), as the DaemonSet's pod ending would.
    pub fn stop(&mut self) {
        self.agent.end(Signal::SIGTERM);
    }
}

impl Deref for TestAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl TestAgent {
    /// Lowers the running agent's descriptor limit (soft) to the lowest descriptor it has
    /// free: every descriptor below the limit is in use, so the next one it opens fails
    /// with EMFILE, while all it holds stays open. The limit comes back on drop.
    pub fn exhaust_descriptors(&self) -> DescriptorLimit {
        let pid = self.pid().expect("the agent runs");
        let open: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the agent's descriptors")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
        let before = sh(&[
            "prlimit",
            "--pid",
            &pid.to_string(),
            "--nofile",
            "--raw",
            "--noheadings",
            "-o",
            "SOFT,HARD",
        ]);
        let mut limits = before.split_whitespace();
        let (soft, hard) = (
            limits.next().unwrap().to_owned(),
            limits.next().unwrap().to_owned(),
        );
        sh(&[
            "prlimit",
            "--pid",
            &pid.to_string(),
            &format!("--nofile={lowest_free}:{hard}"),
        ]);
        DescriptorLimit { pid, soft, hard }
    }
}

/// The agent's descriptor limit as it was, put back on drop.
pub struct DescriptorLimit {
    pid: u32,
    soft: String,
    hard: String,
}

impl Drop for DescriptorLimit {
    fn drop(&mut self) {
        let _ = Command::new("prlimit")
            .args([
                "--pid",
                &self.pid.to_string(),
                &format!("--nofile={}:{}", self.soft, self.hard),
            ])
            .status();
    }
}
