//! The operator's subcommands (`ros-macvlan <subcommand>`), as opposed to CNI invocations.

use std::path::PathBuf;

use crate::ipam::host_local::DEFAULT_DATA_DIR;

pub fn main(args: &[String]) -> i32 {
    // Like other Unix tools, end quietly when the reader goes away (`probe | head`).
    // SAFETY: restoring the default disposition of SIGPIPE installs no handler.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    match args[0].as_str() {
        "demo" => crate::demo::run(),
        "install" => crate::install::main(&args[1..]),
        "gc" => gc(&args[1..]),
        "probe" => probe(&args[1..]),
        "doctor" => doctor(&args[1..]),
        "ports" => ports(&args[1..]),
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

/// Options shared by probe and doctor, parsed by hand: a handful of flags.
struct Flags {
    netns: Option<String>,
    iface: String,
    domain: u16,
    all_domains: bool,
    seconds: f64,
    json: bool,
    announce: bool,
}

fn parse_flags(args: &[String], usage: &str) -> Result<Flags, i32> {
    let mut f = Flags {
        netns: None,
        iface: "net1".into(),
        domain: 0,
        all_domains: false,
        seconds: 10.0,
        json: false,
        announce: false,
    };
    let mut it = args.iter();
    let bad = |what: &str| {
        eprintln!("{what}\nusage: {usage}");
        Err(2)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--netns" => f.netns = it.next().cloned(),
            "--iface" => match it.next() {
                Some(i) => f.iface = i.clone(),
                None => return bad("--iface needs a name"),
            },
            "--domain" => match it
                .next()
                .and_then(|d| d.parse::<u16>().ok())
                .filter(|d| *d <= crate::rtps::MAX_DOMAIN)
            {
                Some(d) => f.domain = d,
                None => return bad("--domain takes 0..232"),
            },
            "--all-domains" => f.all_domains = true,
            "--seconds" => match it
                .next()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| *s > 0.0 && *s <= 86400.0)
            {
                Some(s) => f.seconds = s,
                None => return bad("--seconds takes a positive number"),
            },
            "--json" => f.json = true,
            "--announce" => f.announce = true,
            other => return bad(&format!("unknown option {other}")),
        }
    }
    Ok(f)
}

const PROBE_USAGE: &str = "ros-macvlan probe [--netns PATH] [--iface net1] [--domain N | --all-domains] [--seconds S] [--json] [--announce]";
const DOCTOR_USAGE: &str =
    "ros-macvlan doctor [--netns PATH] [--iface net1] [--domain N] [--seconds S]";

fn probe(args: &[String]) -> i32 {
    let f = match parse_flags(args, PROBE_USAGE) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let opts = crate::probe::Options {
        netns: f.netns,
        iface: f.iface,
        domains: if f.all_domains {
            (0..=crate::rtps::MAX_DOMAIN).collect()
        } else {
            vec![f.domain]
        },
        seconds: f.seconds,
        json: f.json,
        announce: f.announce,
        live: true,
    };
    match crate::probe::run(&opts) {
        Ok(report) => {
            crate::probe::print_report(&opts, &report);
            0
        }
        Err(e) => {
            eprintln!("probe: {e}");
            1
        }
    }
}

fn doctor(args: &[String]) -> i32 {
    let f = match parse_flags(args, DOCTOR_USAGE) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let checks = crate::doctor::run(&crate::doctor::Options {
        netns: f.netns,
        iface: f.iface,
        domain: f.domain,
        seconds: f.seconds.min(60.0),
    });
    crate::doctor::print(&checks)
}

/// `ports --domain N`: the RTPS port mapping, for firewall rules.
fn ports(args: &[String]) -> i32 {
    use crate::rtps::*;
    let domain = match args {
        [flag, d] if flag == "--domain" => match d.parse::<u16>().ok().filter(|d| *d <= MAX_DOMAIN)
        {
            Some(d) => d,
            None => {
                eprintln!("--domain takes 0..{MAX_DOMAIN}");
                return 2;
            }
        },
        [] => 0,
        _ => {
            eprintln!("usage: ros-macvlan ports [--domain N]");
            return 2;
        }
    };
    println!("RTPS ports for ROS_DOMAIN_ID={domain} (UDP; PB=7400, DG=250, PG=2, d0=0, d1=10, d2=1, d3=11)");
    println!(
        "  discovery multicast  {SPDP_GROUP}:{}",
        discovery_multicast_port(domain)
    );
    println!(
        "  user multicast       {SPDP_GROUP}:{}",
        user_multicast_port(domain)
    );
    println!("  participant  discovery unicast  user unicast");
    let mut p = 0u16;
    while p < 120 && user_unicast_port(domain, p) <= 65535 {
        if p < 10 || p.is_multiple_of(10) {
            println!(
                "  {p:>11}  {:>17}  {:>12}",
                discovery_unicast_port(domain, p),
                user_unicast_port(domain, p)
            );
        }
        p += 1;
    }
    println!("  (participant N: discovery {} + 2N, user {} + 2N; open them for as many participants as a host runs)", discovery_unicast_port(domain, 0), user_unicast_port(domain, 0));
    0
}

const USAGE: &str = "usage: ros-macvlan <subcommand>
  (no subcommand)  run as a CNI plugin: CNI_COMMAND and friends in the environment, config on stdin
  demo             (root) build the guide's two-talkers-one-listener scene in namespaces and show discovery working
  install --cni-bin-dir DIR [--policy FILE --policy-dir DIR] [--verify] [--stay]
                   copy this binary into DIR atomically (the DaemonSet's job); --verify checks it is there
  gc [--data-dir DIR] [--every SECONDS]
                   release host-local claims whose pod's netns is gone (default dir /var/lib/cni/networks)
  probe            [--netns PATH] [--iface net1] [--domain N | --all-domains] [--seconds S] [--json] [--announce]
                   list the DDS participants this pod hears (SPDP decoded), optionally announcing one
  doctor           [--netns PATH] [--iface net1] [--domain N] [--seconds S]
                   check the pod's discovery path and say how to fix what is broken
  ports [--domain N]
                   the RTPS port mapping of a domain, for firewall rules
  version          print the version";
