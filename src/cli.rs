//! The operator's subcommands (`ros-macvlan <subcommand>`), as opposed to CNI invocations.

use std::path::PathBuf;

use crate::ipam::host_local::DEFAULT_DATA_DIR;

pub fn main(args: &[String]) -> i32 {
    match args[0].as_str() {
        "demo" => crate::demo::run(),
        "install" => crate::install::main(&args[1..]),
        "gc" => gc(&args[1..]),
        "version" | "--version" => {
            println!("ros-macvlan {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}

/// `gc [--data-dir DIR] [--every SECONDS]`: releases the claims of pods that are gone; with
/// `--every`, again and again (the DaemonSet's gc container).
fn gc(args: &[String]) -> i32 {
    let mut data_dir = PathBuf::from(DEFAULT_DATA_DIR);
    let mut every: Option<u64> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--data-dir", Some(d)) => data_dir = PathBuf::from(d),
            ("--every", Some(s)) if s.parse::<u64>().is_ok_and(|n| n > 0) => every = s.parse().ok(),
            _ => {
                eprintln!("usage: ros-macvlan gc [--data-dir DIR] [--every SECONDS]");
                return 2;
            }
        }
    }
    loop {
        let code = gc_once(&data_dir);
        match every {
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs)),
            None => return code,
        }
    }
}

fn gc_once(data_dir: &std::path::Path) -> i32 {
    match crate::lifecycle::release_orphans(data_dir) {
        Ok(released) => {
            for o in &released {
                let r = &o.record;
                println!(
                    "released {:?} of network {} (pod {}/{}, container {}, {}): netns {} is gone",
                    r.ips,
                    o.network,
                    r.pod_namespace.as_deref().unwrap_or("-"),
                    r.pod_name.as_deref().unwrap_or("-"),
                    r.container_id,
                    r.ifname,
                    r.netns
                );
            }
            println!(
                "gc: {} attachment(s) released under {}",
                released.len(),
                data_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("gc: {e}");
            1
        }
    }
}

const USAGE: &str = "usage: ros-macvlan <subcommand>
  (no subcommand)  run as a CNI plugin: CNI_COMMAND and friends in the environment, config on stdin
  demo             (root) build the guide's two-talkers-one-listener scene in namespaces and show discovery working
  install --cni-bin-dir DIR [--policy FILE --policy-dir DIR] [--verify] [--stay]
                   copy this binary into DIR atomically (the DaemonSet's job); --verify checks it is there
  gc [--data-dir DIR] [--every SECONDS]
                   release host-local claims whose pod's netns is gone (default dir /var/lib/cni/networks)
  version          print the version";
