//! The process's logger: `log` records on stderr with a timestamp and a level, filtered by
//! `ROS_MACVLAN_LOG` (env_logger's syntax: `debug`, or `ros_macvlan::agent::lan_watch=debug`).
//! The node agent and the operator tools log at `info` by default; the plugin, whose one
//! line per invocation goes to its own log (plugin::lifecycle), only at `warn`, so that a
//! runtime that keeps a plugin's stderr sees what went wrong and nothing else.

use std::io::Write;

/// The environment variable that sets the filter.
pub const FILTER_VAR: &str = "ROS_MACVLAN_LOG";

/// Starts logging for this process, `default` being the filter when `ROS_MACVLAN_LOG` is
/// unset. A second call changes nothing.
pub fn init(default: log::LevelFilter) {
    let env = env_logger::Env::new().filter_or(FILTER_VAR, default.as_str());
    let _ = env_logger::Builder::from_env(env)
        .format(|out, record| {
            writeln!(
                out,
                "{} {:<5} {}",
                out.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .try_init();
}
