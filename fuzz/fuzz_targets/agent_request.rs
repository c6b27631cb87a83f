//! What a local client sends on the node agent's socket, as the agent reads it: the bytes of
//! one connection go through `protocol::decode_request` (the agent's own decoding), and a
//! request that decodes is answered by `lifecycle::answer` (the agent's own handling) on
//! fresh duties, with the descriptors a plugin would pass along (a hold's socket, a relay's
//! listeners; /dev/null stands in, at most 4, what the agent's receive space takes). Any
//! input gets a decoding error or one reply line, never a panic, a hang or memory that grows.
//!
//! Nothing on the machine changes: the records' directory and the node policy are under
//! /dev/null (not a directory: nothing can be created there); holding and dropping only
//! changes the duties' maps; a relay's stand-in descriptors are no listeners, so it is
//! refused before any acceptor starts.

#![no_main]

use std::os::fd::OwnedFd;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ros_macvlan::agent::budget::{Pool, HEADROOM, NEEDED};
use ros_macvlan::agent::lifecycle::answer;
use ros_macvlan::agent::memberships::Memberships;
use ros_macvlan::agent::metrics::Metrics;
use ros_macvlan::agent::protocol::{decode_request, Request, MAX_MESSAGE};
use ros_macvlan::agent::records::RecordDir;
use ros_macvlan::agent::relays::Relays;
use serde_json::Value;

/// Beside a socket under a non-directory: no record can be read or written.
const SOCKET: &str = "/dev/null/ros-macvlan-fuzz/agent.sock";
/// The most descriptors one request brings (`receive_chunk`'s control space).
const MAX_FDS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let line_len = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let request = match decode_request(data) {
        Ok(request) => request,
        Err(_) => return, // the agent's refusal: "not a request: ..."
    };
    assert!(
        line_len + 1 < MAX_MESSAGE,
        "a line of {line_len} bytes decoded"
    );

    // What the agent decoded is what its client would send: one line, read back the same.
    let encoded = serde_json::to_vec(&request).expect("a request encodes");
    assert!(!encoded.contains(&b'\n'), "a request encodes on one line");
    let again = decode_request(&encoded).expect("a re-encoded request decodes");
    let (first, second) = (value(&request), value(&again));
    assert!(same(&first, &second), "{first} became {second}");
    // Padded (JSON allows the spaces) to the bound: refused; one byte less: decoded.
    if encoded.len() + 2 < MAX_MESSAGE {
        let mut padded = encoded.clone();
        padded.resize(MAX_MESSAGE - 2, b' ');
        padded.push(b'\n');
        assert!(
            decode_request(&padded).is_ok(),
            "a line one byte under the bound"
        );
        padded.insert(0, b' ');
        assert!(decode_request(&padded).is_err(), "a line at the bound");
    }

    let fds = match &request {
        Request::Hold { .. } => stand_ins(1),
        Request::Relay(record) => stand_ins(record.listen.len().min(MAX_FDS)),
        _ => Vec::new(),
    };
    let kind = match &request {
        Request::Hold { .. } => "hold",
        Request::Relay(_) => "relay",
        _ => "other",
    };
    let runtime = ros_macvlan::sys::runtime::process().expect("a runtime");
    let _in_it = runtime.enter();
    let socket = Path::new(SOCKET);
    let descriptors = Pool::leasing(NEEDED - HEADROOM);
    let mut memberships = Memberships::new(RecordDir::beside(socket), descriptors.clone());
    let mut relays = Relays::new(
        socket,
        "127.0.0.1:7448-7463".parse().expect("a pool"),
        descriptors.clone(),
        socket.with_file_name("policy.json"),
    );
    let mut metrics = Metrics::new(socket);
    let reply = answer(request, fds, &mut memberships, &mut relays, &mut metrics);

    assert_eq!(reply.last(), Some(&b'\n'), "a reply is a line");
    assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1, "one line");
    let reply: Value = serde_json::from_slice(&reply).expect("a reply is JSON");
    let ok = reply["ok"].as_bool().expect("a reply says ok");
    match kind {
        // Fresh duties hold one membership without asking anything of the system.
        "hold" => assert!(ok, "{reply}"),
        // A relay needs listening sockets, and /dev/null is none.
        "relay" => assert!(!ok && reply["error"].is_string(), "{reply}"),
        _ => assert!(ok, "{reply}"),
    }
    drop((memberships, relays));
    assert_eq!(descriptors.leased(), 0, "every lease came back");
});

/// Descriptors standing in for what a plugin passes along.
fn stand_ins(count: usize) -> Vec<OwnedFd> {
    (0..count)
        .map(|_| std::fs::File::open("/dev/null").expect("/dev/null").into())
        .collect()
}

fn value(request: &Request) -> Value {
    serde_json::to_value(request).expect("a request is a JSON value")
}

/// The same JSON, floats within their last digits (serde_json's default parsing is not
/// exact to the bit for every decimal it reads).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
