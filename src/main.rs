//! Reads the environment and stdin, calls the library, prints, exits. No logic.

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        std::process::exit(ros_macvlan::tools::cli::main(&args));
    }
    ros_macvlan::sys::logging::init(log::LevelFilter::Warn);
    let mut stdin = Vec::new();
    // VERSION may come with no stdin at all; an unreadable stdin is judged as empty config.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = ros_macvlan::run_cni(|k| std::env::var(k).ok(), &stdin);
    if let Some(out) = outcome.stdout {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }
    std::process::exit(outcome.exit_code);
}
