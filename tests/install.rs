//! The DaemonSet's install step, raced against a runtime executing the installed plugin.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

#[test]
fn install_while_the_plugin_runs_never_breaks_an_execution() {
    let dir = DataDir::scratch();
    let bin_dir = dir.0.join("cni-bin");
    let installed = bin_dir.join("ros-macvlan");
    // A second, different build of the plugin (trailing bytes do not change how it runs), so
    // that every install really replaces the file.
    let variant = dir.0.join("variant/ros-macvlan");
    std::fs::create_dir_all(variant.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(plugin_bin()).unwrap();
    bytes.extend_from_slice(b"variant");
    std::fs::write(&variant, &bytes).unwrap();
    std::fs::set_permissions(&variant, std::fs::Permissions::from_mode(0o755)).unwrap();

    let run_install = |bin: &std::path::Path| {
        let out = Command::new(bin)
            .args(["install", "--cni-bin-dir"])
            .arg(&bin_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run_install(&plugin_bin()).starts_with("installed"));

    let stop = Arc::new(AtomicBool::new(false));
    let (runs, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let runner = {
        let (stop, runs, failures, installed) = (
            stop.clone(),
            runs.clone(),
            failures.clone(),
            installed.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // What a runtime does on every pod start: execute the plugin (VERSION here).
                let ok = Command::new(&installed)
                    .env_clear()
                    .env("CNI_COMMAND", "VERSION")
                    .output()
                    .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"{"));
                runs.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    for _ in 0..10 {
        run_install(&variant);
        run_install(&plugin_bin());
    }
    stop.store(true, Ordering::SeqCst);
    runner.join().unwrap();

    assert!(runs.load(Ordering::SeqCst) > 10, "the runner barely ran");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "an execution failed during install"
    );
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(plugin_bin()).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(run_install(&plugin_bin()).contains("already current"));
    let verify = Command::new(plugin_bin())
        .args(["install", "--verify", "--cni-bin-dir"])
        .arg(&bin_dir)
        .status()
        .unwrap();
    assert!(verify.success());
    let leftovers: Vec<_> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

#[test]
fn stay_keeps_running_until_sigterm() {
    let dir = DataDir::scratch();
    let mut child = KilledOnDrop(
        Command::new(plugin_bin())
            .args(["install", "--stay", "--cni-bin-dir"])
            .arg(dir.0.join("bin"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    // It says when the binary is in place (a debug build takes a while to copy).
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut said,
    )
    .unwrap();
    assert!(said.starts_with("installed"), "{said}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        child.try_wait().unwrap().is_none(),
        "--stay exited on its own"
    );
    assert!(dir.0.join("bin/ros-macvlan").is_file());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM should end it cleanly: {status:?}"
    );
}

/// A child process killed on drop, also when the test fails.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn policy_follows_the_config_map() {
    let dir = DataDir::scratch();
    let src = dir.0.join("configmap/policy.json");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    std::fs::write(&src, br#"{"masters": ["eth0"]}"#).unwrap();
    let node_dir = dir.0.join("etc-cni-ros-macvlan");
    let run = || {
        let out = Command::new(plugin_bin())
            .args(["install", "--cni-bin-dir"])
            .arg(dir.0.join("bin"))
            .arg("--policy")
            .arg(&src)
            .arg("--policy-dir")
            .arg(&node_dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run().contains("policy installed"));
    assert_eq!(
        std::fs::read(node_dir.join("policy.json")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert!(run().contains("policy current"));
    std::fs::remove_file(&src).unwrap();
    assert!(run().contains("policy removed"));
    assert!(!node_dir.join("policy.json").exists());
}

/// The plugin builds static (.cargo/config.toml), as the image ships it: what `cargo build
/// --release` gives a user runs on any node, whatever its libc.
#[test]
fn the_plugin_builds_static() {
    let out = Command::new("ldd").arg(plugin_bin()).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("statically linked") || text.contains("not a dynamic executable"),
        "{} is linked dynamically:\n{text}",
        plugin_bin().display()
    );
}
