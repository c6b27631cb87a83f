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

/// `gc [--data-dir DIR]`: releases the claims of pods that are gone.
fn gc(args: &[String]) -> i32 {
    let data_dir = match args {
        [] => PathBuf::from(DEFAULT_DATA_DIR),
        [flag, dir] if flag == "--data-dir" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: ros-macvlan gc [--data-dir DIR]");
            return 2;
        }
    };
    match crate::lifecycle::release_orphans(&data_dir) {
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
  install --cni-bin-dir DIR [--verify] [--stay]
                   copy this binary into DIR atomically (the DaemonSet's job); --verify checks it is there
  gc [--data-dir DIR]
                   release host-local claims whose pod's netns is gone (default dir /var/lib/cni/networks)
  version          print the version";
