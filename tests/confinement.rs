//! What a NetworkAttachmentDefinition's author can make the plugin write on a node: `logFile`
//! and host-local's `dataDir` lead only into the directories the node allows (by default
//! /var/log/ros-macvlan, and /var/lib/cni and /run/cni), never out of them through `..` or a
//! symlink, and a refused config writes nowhere but stderr. The node policy widens them.

mod support;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::*;

/// A node with one pod, a data dir and a log dir the plugin allows, a directory outside
/// every allowed one (what a refused path aims at), and the node policy the plugin reads.
struct Scene {
    _lan: Lan,
    node: Node,
    pod: Pod,
    data: DataDir,
    logs: DataDir,
    outside: DataDir,
    /// Holds the policy file; absent until `allow` writes it.
    policy_dir: DataDir,
}

impl Scene {
    fn new() -> Scene {
        let lan = Lan::create();
        let node = Node::new(&lan);
        let pod = node.pod(30);
        Scene {
            _lan: lan,
            node,
            pod,
            data: DataDir::create(),
            logs: DataDir::logs(),
            outside: DataDir::scratch(),
            policy_dir: DataDir::scratch(),
        }
    }

    fn policy_file(&self) -> PathBuf {
        self.policy_dir.0.join("policy.json")
    }

    /// Writes the node policy.
    fn allow(&self, policy: Value) {
        std::fs::write(self.policy_file(), policy.to_string()).unwrap();
    }

    /// The guide's config with the scene's data dir.
    fn conf(&self) -> Value {
        guide(&self.data)
    }

    fn run(&self, verb: &str, conf: &Value) -> Reply {
        let netns = self.pod.ns.path();
        let policy = self.policy_file();
        let mut env = cni_env(verb, &self.pod, "net1", &netns);
        env.push(("ROS_MACVLAN_POLICY_FILE", policy.to_str().unwrap()));
        run_in(&self.node.ns.name, &plugin_bin(), &env, &conf.to_string())
    }

    /// A refused ADD: code 7, the message naming `allowed`, the runtime's log line on
    /// stderr, and nothing made: no file outside, no link, no claim.
    fn assert_refused(&self, conf: &Value, allowed: &str, case: &str) -> Reply {
        let r = self.run("ADD", conf);
        assert_eq!(r.err_code(), 7, "{case}: {}", r.json);
        assert!(r.msg().contains(allowed), "{case}: {}", r.msg());
        assert!(
            r.stderr.contains("ros-macvlan ADD"),
            "{case}: the log line goes to stderr: {:?}",
            r.stderr
        );
        assert_eq!(
            files_below(&self.outside.0),
            Vec::<PathBuf>::new(),
            "{case}: something was written outside"
        );
        assert_eq!(self.pod.ns.link_names(), ["lo", "eth0"], "{case}");
        assert!(self.data.claims("ros-net").is_empty(), "{case}");
        r
    }
}

/// Everything below `dir` (not following symlinks), sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_below(&path));
        }
        found.push(path);
    }
    found.sort();
    found
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn log_file_outside_the_log_directory_is_refused_and_nothing_is_written() {
    if !require_root() {
        return;
    }
    let s = Scene::new();
    let outside = s.outside.0.display().to_string();
    symlink(&s.outside.0, s.logs.0.join("out")).unwrap();
    // A dangling link: opening it with O_CREAT would create its target.
    symlink(
        s.outside.0.join("planted.log"),
        s.logs.0.join("planted.log"),
    )
    .unwrap();
    for (case, log_file) in [
        ("absolute path elsewhere", format!("{outside}/evil.log")),
        (
            "'..' out of the log directory",
            format!("{LOG_ROOT}/../../..{outside}/evil.log"),
        ),
        (
            "a directory symlink inside the log directory",
            s.logs.0.join("out/evil.log").display().to_string(),
        ),
        (
            "a file symlink inside the log directory",
            s.logs.0.join("planted.log").display().to_string(),
        ),
    ] {
        let mut conf = s.conf();
        conf["logFile"] = json!(log_file);
        let r = s.assert_refused(&conf, "logFile", case);
        if !case.contains("symlink") {
            assert!(r.msg().contains(LOG_ROOT), "{case}: {}", r.msg());
            assert!(r.msg().contains("\"logDirs\""), "{case}: {}", r.msg());
        }
    }
    // What the refusals left in the log directory: only the test's own links.
    assert_eq!(
        files_below(&s.logs.0),
        [s.logs.0.join("out"), s.logs.0.join("planted.log")]
    );
}

#[test]
fn data_dir_outside_the_state_directories_is_refused_and_nothing_is_written() {
    if !require_root() {
        return;
    }
    let s = Scene::new();
    let outside = s.outside.0.display().to_string();
    symlink(&s.outside.0, s.data.0.join("out")).unwrap();
    for (case, data_dir) in [
        ("absolute path elsewhere", outside.clone()),
        (
            "'..' out of /run/cni",
            format!("{DATA_ROOT}/../..{outside}"),
        ),
        (
            "a symlink inside the data directory",
            s.data.0.join("out").display().to_string(),
        ),
        (
            "a path through a symlink inside the data directory",
            s.data.0.join("out/deeper").display().to_string(),
        ),
    ] {
        let mut conf = s.conf();
        conf["ipam"]["dataDir"] = json!(data_dir);
        let r = s.assert_refused(&conf, "ipam.dataDir", case);
        if !case.contains("symlink") {
            assert!(
                r.msg().contains("/var/lib/cni, /run/cni") && r.msg().contains("\"dataDirs\""),
                "{case}: {}",
                r.msg()
            );
        }
        // DEL of the same config writes nothing there either.
        assert_eq!(s.run("DEL", &conf).err_code(), 7, "{case}");
        assert_eq!(files_below(&s.outside.0), Vec::<PathBuf>::new(), "{case}");
    }
    // The network's own directory a symlink out of an allowed data dir.
    symlink(&s.outside.0, s.data.0.join("ros-net")).unwrap();
    s.assert_refused(
        &s.conf(),
        "symbolic link",
        "the network directory a symlink",
    );
}

/// A config refused for anything else does not write its logFile either, allowed or not.
#[test]
fn an_invalid_config_writes_nowhere_but_stderr() {
    if !require_root() {
        return;
    }
    let s = Scene::new();
    for log_file in [s.outside.0.join("evil.log"), s.logs.0.join("ros.log")] {
        let mut conf = s.conf();
        conf["mode"] = json!("bogus");
        conf["logFile"] = json!(log_file);
        s.assert_refused(&conf, "mode \"bogus\" is unknown", "unknown mode");
        assert!(!log_file.exists(), "{} was written", log_file.display());
    }
    // The same for a config whose IPAM part is refused.
    let mut conf = s.conf();
    conf["ipam"]["ranges"][0][0]["rangeStart"] = json!("203.0.113.1");
    conf["logFile"] = json!(s.logs.0.join("ros.log"));
    s.assert_refused(&conf, "rangeStart", "range outside its subnet");
    assert_eq!(files_below(&s.logs.0), Vec::<PathBuf>::new());
}

#[test]
fn the_node_policy_allows_other_directories() {
    if !require_root() {
        return;
    }
    let s = Scene::new();
    let log_root = s.outside.0.join("logs");
    let data_root = s.outside.0.join("ipam");
    let log_file = log_root.join("sub/ros.log");
    let mut conf = s.conf();
    conf["logFile"] = json!(log_file);
    conf["ipam"]["dataDir"] = json!(data_root);

    // Without the policy: refused, and nothing made.
    let r = s.run("ADD", &conf);
    assert_eq!(r.err_code(), 7, "{}", r.json);
    assert_eq!(files_below(&s.outside.0), Vec::<PathBuf>::new());

    s.allow(json!({"logDirs": [log_root], "dataDirs": [data_root]}));
    let r = s.run("ADD", &conf);
    let address = r.ok()["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip = address.split('/').next().unwrap();
    assert!(
        data_root.join("ros-net").join(ip).is_file(),
        "claim in the policy's data dir"
    );
    let line = std::fs::read_to_string(&log_file).unwrap();
    assert!(line.contains("ADD") && line.contains(&address), "{line}");
    // The plugin made the log directories 0750 and the file 0640, owned by root.
    assert_eq!(mode(&log_root), 0o750);
    assert_eq!(mode(&log_root.join("sub")), 0o750);
    assert_eq!(mode(&log_file), 0o640);
    assert_eq!(std::fs::metadata(&log_file).unwrap().uid(), 0);

    s.run("DEL", &conf).ok();
    assert!(!data_root.join("ros-net").join(ip).exists());
    assert_eq!(
        std::fs::read_to_string(&log_file).unwrap().lines().count(),
        2
    );
    assert_eq!(s.pod.ns.link_names(), ["lo", "eth0"]);
}

/// The default log directory is allowed as it is, and a file there is created 0640.
#[test]
fn a_log_file_in_the_default_directory_is_written() {
    if !require_root() {
        return;
    }
    let s = Scene::new();
    let log_file = s.logs.0.join("ros.log");
    let mut conf = s.conf();
    conf["logFile"] = json!(log_file);
    let r = s.run("ADD", &conf);
    r.ok();
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(mode(&log_file), 0o640);
    s.run("DEL", &conf).ok();
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains("ros-macvlan ADD") && log.contains("ros-macvlan DEL"),
        "{log}"
    );
}

/// `agentSocket` names where the plugin writes membership records: only below the node
/// agent's directory (/run/ros-macvlan), never out of it through `..` or a symlink.
#[test]
fn agent_socket_outside_the_agents_directory_is_refused() {
    if !require_root() {
        return;
    }
    let s = Scene::new();
    let outside = s.outside.0.display().to_string();
    let agent = no_agent();
    let link = agent.socket().parent().unwrap().to_owned();
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(&s.outside.0, &link).unwrap();
    for (case, socket) in [
        ("absolute path elsewhere", format!("{outside}/agent.sock")),
        (
            "'..' out of the agent's directory",
            format!("/run/ros-macvlan/../..{outside}/agent.sock"),
        ),
        (
            "a directory symlink inside the agent's directory",
            agent.socket().display().to_string(),
        ),
    ] {
        let mut conf = s.conf();
        conf["agentSocket"] = json!(socket);
        s.assert_refused(&conf, "agentSocket", case);
    }
}
