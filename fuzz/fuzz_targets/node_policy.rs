//! The node policy file (from a ConfigMap): parsed, then asked about a master and an
//! address taken from the input.

#![no_main]

use std::net::IpAddr;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use ros_macvlan::node::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = Policy::parse(data, PathBuf::from("/etc/cni/ros-macvlan/policy.json")) else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    for word in text.split(|c: char| c == '"' || c.is_whitespace()) {
        let _ = policy.check_master(word);
        if let Ok(ip) = word.parse::<IpAddr>() {
            let _ = policy.check_address(ip);
        }
    }
});
