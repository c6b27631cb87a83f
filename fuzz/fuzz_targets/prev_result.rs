//! prevResult (sent with CHECK and DEL) and a delegated IPAM plugin's result: parsed, then
//! written out in the shape of every version we speak.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ros_macvlan::cni::result::CniResult;
use ros_macvlan::cni::version::{Version, SUPPORTED};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(result) = CniResult::from_json(&json) else {
        return;
    };
    for v in SUPPORTED {
        let version = Version::parse(Some(v)).expect("a supported version");
        let _ = result.to_json(&version);
    }
});
