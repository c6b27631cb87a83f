//! README's first command, as a newcomer runs it on a machine where Rust was installed with
//! rustup for their user: root has no cargo there (`sudo cargo ...` fails), so the command
//! builds as the user and runs the binary with sudo. The build must give the static binary
//! the image ships, and the demo must run.

mod support;

use std::process::Command;

use support::*;

/// README's first command: the build part (run as the user) and the part after `sudo`.
fn readme_first_command() -> (String, String) {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .nth(1)
        .expect("README starts with a sh block");
    let command = line.split('#').next().unwrap().trim();
    let (build, run) = command
        .split_once(" && sudo ")
        .expect("README's first command builds as the user, then runs with sudo");
    (build.to_owned(), run.to_owned())
}

#[test]
fn readme_first_command_builds_static_as_a_user_and_runs_the_demo() {
    if !require_root() {
        return;
    }
    let (build, run) = readme_first_command();
    let user = "nobody";
    let home = DataDir::scratch();
    let h = home.path();
    sh(&[
        "git",
        "clone",
        "-q",
        env!("CARGO_MANIFEST_DIR"),
        &format!("{h}/src"),
    ]);
    sh(&["chown", "-R", &format!("{user}:"), h]);
    // The user's own toolchain: this machine's rustup, cargo and downloaded crates, seen
    // through bind mounts in a mount namespace of this test's own (root's home is closed to
    // other users); the user unpacks the crates into a registry of their own. The user's
    // PATH has cargo; root's environment plays no part in the build.
    let home_of_root = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let toolchain =
        std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home_of_root}/.cargo"));
    let rustup = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home_of_root}/.rustup"));
    let script = format!(
        "set -e
         mkdir -p {h}/.rustup {h}/.cargo/bin {h}/.cargo/registry/index {h}/.cargo/registry/cache
         chown {user}: {h}/.cargo {h}/.cargo/registry
         mount --bind {rustup} {h}/.rustup
         mount --bind {cargo}/bin {h}/.cargo/bin
         mount --bind {cargo}/registry/index {h}/.cargo/registry/index
         mount --bind {cargo}/registry/cache {h}/.cargo/registry/cache
         exec setpriv --reuid={user} --regid=nogroup --clear-groups \
           env -i HOME={h} PATH={h}/.cargo/bin:/usr/bin:/bin CARGO_NET_OFFLINE=true \
           sh -c 'cd {h}/src && {build}'",
        cargo = toolchain,
    );
    let built = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "`{build}` failed as {user}:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );

    // What it built is static, as the image ships it.
    let binary = glob_one(&format!("{h}/src/target"), "release/ros-macvlan");
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let ldd =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "{} is linked dynamically:\n{ldd}",
        binary.display()
    );

    // The part after `sudo`, as root.
    let demo = Command::new("sh")
        .args(["-c", &format!("cd {h}/src && {run}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&demo.stdout);
    assert!(demo.status.success(), "`{run}` failed:\n{text}");
    assert!(
        text.contains("OK: the listener hears both talkers"),
        "{text}"
    );
}

/// The one file `target/<triple>/<suffix>` below `target`.
fn glob_one(target: &str, suffix: &str) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(target)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(suffix))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}
