//! The operator's subcommands (`ros-macvlan <subcommand>`), as opposed to CNI invocations.

pub fn main(args: &[String]) -> i32 {
    match args[0].as_str() {
        "demo" => crate::demo::run(),
        "install" => crate::install::main(&args[1..]),
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

const USAGE: &str = "usage: ros-macvlan <subcommand>
  (no subcommand)  run as a CNI plugin: CNI_COMMAND and friends in the environment, config on stdin
  demo             (root) build the guide's two-talkers-one-listener scene in namespaces and show discovery working
  install --cni-bin-dir DIR [--verify] [--stay]
                   copy this binary into DIR atomically (the DaemonSet's job); --verify checks it is there
  version          print the version";
