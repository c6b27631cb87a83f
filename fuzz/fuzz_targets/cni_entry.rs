//! The CNI entry point as a runtime drives it: the environment and stdin both come from the
//! input. The input is `KEY=VALUE` lines (the environment), a NUL byte, then stdin.
//!
//! The target must never change the machine, so the paths through which an invocation could
//! reach the kernel or the disk are pinned to places nothing can be created in (the run
//! script adds an empty netns and an unprivileged user as a second fence):
//! - CNI_NETNS, when given, names a namespace that cannot exist: ADD and CHECK stop at
//!   opening it (before any change), DEL only releases claims in the store;
//! - `ipam.dataDir` is forced under /dev/null (not a directory: no store can be opened or
//!   created there), so DEL and GC find no claims and STATUS cannot create a store;
//! - CNI_PATH, when given, is the same non-directory: no IPAM plugin is ever executed;
//! - `logFile` is /dev/null.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Not a directory, so nothing below it can be opened or created, by root either.
const NOWHERE: &str = "/dev/null/ros-macvlan-fuzz";
/// A netns path that does not exist and cannot be created (procfs).
const ABSENT_NETNS: &str = "/proc/self/ns/ros-macvlan-fuzz-absent";

fuzz_target!(|data: &[u8]| {
    let (env_text, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut env: HashMap<String, String> = String::from_utf8_lossy(env_text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (key, pinned) in [("CNI_NETNS", ABSENT_NETNS), ("CNI_PATH", NOWHERE)] {
        if let Some(v) = env.get_mut(key).filter(|v| !v.is_empty()) {
            *v = pinned.to_owned();
        }
    }
    let stdin = confine(stdin);

    let out = ros_macvlan::run_cni(|k| env.get(k).cloned(), &stdin);

    let command = env.get("CNI_COMMAND").map(String::as_str);
    match out.exit_code {
        0 => assert!(
            !matches!(command, Some("ADD" | "CHECK")),
            "{command:?} succeeded without a namespace: {:?}",
            out.stdout
        ),
        1 => {
            let reply = out.stdout.expect("an error is reported on stdout");
            let code = reply["code"].as_u64().expect("an error has a numeric code");
            let msg = reply["msg"].as_str().unwrap_or_default();
            assert!(code > 0 && !msg.is_empty(), "{reply}");
            assert!(!msg.contains("internal error"), "a caught panic: {reply}");
        }
        other => panic!("exit code {other}"),
    }
});

/// The config with its file system paths pinned (see the top of the file). Input that is not
/// a JSON object passes unchanged: the plugin refuses it with the same parser.
fn confine(stdin: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(mut conf)) = serde_json::from_slice::<Value>(stdin) else {
        return stdin.to_vec();
    };
    conf.insert("logFile".into(), json!("/dev/null"));
    if let Some(Value::Object(ipam)) = conf.get_mut("ipam") {
        ipam.insert("dataDir".into(), json!(NOWHERE));
    }
    serde_json::to_vec(&Value::Object(conf)).expect("a Value serializes")
}
