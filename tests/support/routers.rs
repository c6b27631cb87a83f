//! Stand-ins for the node's Zenoh routers for pods (the agent's --zenoh-routers): listeners
//! in the node's namespace, each served by a function of the test's on a thread of its own.
//! The benchmark includes this file too (examples/bench.rs), its `super::Ns` the scene's.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Ns;

/// The listeners on `ports` of the node's loopback; stopped on drop.
pub struct StandInRouters {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl StandInRouters {
    /// Listens on 127.0.0.1:`ports` in `ns` (non-blocking), each served by `serve` until
    /// the stop flag it is given is set.
    pub fn start(
        ns: &Ns,
        ports: std::ops::RangeInclusive<u16>,
        serve: fn(TcpListener, &Arc<AtomicBool>),
    ) -> StandInRouters {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .map(|port| {
                let listener = ns
                    .handle()
                    .run(|| TcpListener::bind(("127.0.0.1", port)))
                    .unwrap()
                    .unwrap();
                listener.set_nonblocking(true).unwrap();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || serve(listener, &stop))
            })
            .collect();
        StandInRouters { stop, threads }
    }
}

impl Drop for StandInRouters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A router that accepts and never reads: what the pods send piles up in the agent's
/// relays (their worst case: tests/agent_bounds.rs, the benchmark's agent cost).
pub fn serve_sink(listener: TcpListener, stop: &Arc<AtomicBool>) {
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => held.push(s),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
