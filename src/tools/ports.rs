//! `ros-macvlan ports`: the RTPS port mapping of a ROS domain, for firewall rules.

use crate::tools::rtps::*;

/// The RTPS port mapping, for firewall rules.
pub fn print(domain: u16) -> i32 {
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
    if let Some((low, high)) = ephemeral_port_range() {
        let ports = domain_ports(domain);
        if *ports.start() <= high && low <= *ports.end() {
            let safe: Vec<u16> = (0..=MAX_DOMAIN)
                .filter(|d| {
                    let p = domain_ports(*d);
                    *p.end() < low || high < *p.start()
                })
                .collect();
            println!(
                "warning: ports {}-{} of domain {domain} fall in this node's ephemeral port range {low}-{high} (net.ipv4.ip_local_port_range): the kernel may give one of them to any process's outgoing connection, and a DDS participant then cannot bind it. Choose a ROS_DOMAIN_ID in {}, or reserve the ports: sysctl -w net.ipv4.ip_local_reserved_ports={}-{}",
                ports.start(),
                ports.end(),
                spans(&safe),
                ports.start(),
                ports.end()
            );
        }
    }
    0
}

/// The kernel's ephemeral port range in this network namespace.
fn ephemeral_port_range() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// `[0, 1, 2, 5, 6]` as "0-2, 5-6".
fn spans(values: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let start = values[i];
        while i + 1 < values.len() && values[i + 1] == values[i] + 1 {
            i += 1;
        }
        out.push(if start == values[i] {
            start.to_string()
        } else {
            format!("{start}-{}", values[i])
        });
        i += 1;
    }
    out.join(", ")
}
