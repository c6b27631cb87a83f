//! `ros-macvlan gc [--every SECONDS]`: rounds of the agent's leak collection
//! (`agent::leaks`) run by hand, each report printed.

use std::path::Path;
use std::time::Duration;

/// One round, or one every `every` seconds for ever; the last round's exit code.
pub fn main(data_dir: &Path, every: Option<u64>) -> i32 {
    loop {
        let code = match crate::agent::leaks::once(data_dir) {
            Ok(report) => {
                report.iter().for_each(|l| println!("{l}"));
                0
            }
            Err(e) => {
                log::error!("{e}");
                1
            }
        };
        match every {
            Some(secs) => std::thread::sleep(Duration::from_secs(secs)),
            None => return code,
        }
    }
}
