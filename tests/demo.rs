//! `ros-macvlan demo` shows the listener hearing both talkers and leaves nothing behind.

mod support;

use support::*;

#[test]
fn demo_shows_discovery_and_cleans_up() {
    if !require_root() {
        return;
    }
    let out = std::process::Command::new(plugin_bin())
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listener hears talker-1"), "{text}");
    assert!(text.contains("listener hears talker-2"), "{text}");
    let made: Vec<&str> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("namespaces: "))
        .expect("the demo names its namespaces")
        .split_whitespace()
        .collect();
    assert_eq!(made.len(), 5, "{text}");
    let after = sh(&["ip", "netns", "list"]);
    for ns in made {
        assert!(
            !after
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left behind:\n{after}"
        );
    }
}
