//! IPv6 duplicate address detection: ADD returns once the kernel has settled the new
//! link's IPv6 addresses, as the reference plugins do (ip.SettleAddresses), so every address
//! the result names is usable (not tentative) when the runtime starts the pod's processes.

use std::time::{Duration, Instant};

use crate::cni::{Error, Kind, Result};
use crate::sys::netlink::{AddressFlags, Rtnl};

/// The reference's bound on the wait.
const TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// Waits until no IPv6 address of link `index` (named `ifname`) is tentative; an address
/// the kernel found in use elsewhere on the LAN fails it, naming the address.
pub fn settle(nl: &dyn Rtnl, index: u32, ifname: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let addresses = nl.ipv6_address_flags(index)?;
        if let Some((addr, _)) = addresses
            .iter()
            .find(|(_, f)| f.contains(AddressFlags::Dadfailed))
        {
            return Err(Error::new(Kind::Netlink, format!(
                "IPv6 address {} on {ifname} failed duplicate address detection: another host on the LAN uses it",
                addr.ip()
            )));
        }
        if !addresses
            .iter()
            .any(|(_, f)| f.contains(AddressFlags::Tentative))
        {
            return Ok(());
        }
        if start.elapsed() > TIMEOUT {
            return Err(Error::new(Kind::Netlink, format!(
                "IPv6 addresses on {ifname} still tentative after {}s of duplicate address detection",
                TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}
