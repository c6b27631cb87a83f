//! README and docs/ stay true: every relative link leads to a file that exists (and every
//! `#anchor` to a heading there), and README's shell commands are ones that exist: the
//! scripts, the `ros-macvlan` subcommands and their options, the kustomize directories
//! (rendered by kubectl where it is installed) and manifests, the DaemonSet's name,
//! namespace, labels, binary and mounts the `kubectl` commands rely on, in the order an
//! install must happen. No root needed.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("a docs/ directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

/// The text without fenced code blocks and inline code, where `](` is not a link.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if fenced {
            out.push('\n');
            continue;
        }
        let mut code = false;
        for c in line.chars() {
            if c == '`' {
                code = !code;
            } else if !code {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of the Markdown links `[text](target)` in a page's prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    prose
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &prose[at + 2..];
            rest.find(')').map(|end| rest[..end].trim().to_owned())
        })
        .collect()
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (a repeated heading gets `-1`, `-2`, as GitHub does).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fenced = false;
    let mut out = HashSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#').replace('`', "").as_str());
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Middlewares: which shapes work, and what they need"),
        "middlewares-which-shapes-work-and-what-they-need"
    );
    assert_eq!(slug("Where an ADD's time goes"), "where-an-adds-time-goes");
    assert_eq!(
        slug("rmw_zenoh on ros-macvlan: the zenoh opt-in"),
        "rmw_zenoh-on-ros-macvlan-the-zenoh-opt-in"
    );
    assert_eq!(
        links("see [a](docs/a.md#x) and `[b](not/a/link)` and [c\nd](https://e)"),
        ["docs/a.md#x", "https://e"]
    );
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut checked = 0;
    for (page, text) in pages() {
        let dir = page.parent().unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            assert!(
                file.exists(),
                "{}: the link {target} leads to no file ({})",
                page.display(),
                file.display()
            );
            if !anchor.is_empty() {
                let there = std::fs::read_to_string(&file).unwrap();
                assert!(
                    anchors(&there).contains(anchor),
                    "{}: the link {target}: {} has no heading #{anchor}",
                    page.display(),
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} links: README links to docs/");
}

/// README links to every page of docs/, so none is an orphan.
#[test]
fn readme_links_every_page_of_docs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let linked: HashSet<String> = links(&readme)
        .into_iter()
        .map(|t| t.split('#').next().unwrap().to_owned())
        .collect();
    for (page, _) in pages().into_iter().skip(1) {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(linked.contains(&name), "README does not link {name}");
    }
}

/// README's shell commands, one a line, comments and prompts dropped, continuation lines of
/// a `for` loop kept as they are.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = t == "```sh";
            continue;
        }
        if in_sh && !t.is_empty() && !t.starts_with('#') {
            let command = t.split(" # ").next().unwrap().trim();
            let command = command.split("  #").next().unwrap().trim();
            out.push(command.to_owned());
        }
    }
    out
}

fn help(args: &[&str]) -> String {
    let out = Command::new(plugin_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "ros-macvlan {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `ros-macvlan --help` lists.
fn subcommands() -> Vec<String> {
    help(&["--help"])
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The DaemonSet as install/base renders it offline (its file).
fn daemonset() -> serde_yaml::Value {
    serde_yaml::from_slice(&std::fs::read(repo().join("install/base/daemonset.yaml")).unwrap())
        .unwrap()
}

#[test]
fn readme_commands_exist_as_written() {
    let commands = readme_commands();
    assert!(commands.len() > 10, "{commands:?}");
    let subs = subcommands();
    assert!(subs.contains(&"doctor".to_owned()), "{subs:?}");
    let ds = daemonset();
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let binary = container["command"][0].as_str().unwrap();
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    let name = ds["metadata"]["name"].as_str().unwrap();
    let namespace = ds["metadata"]["namespace"].as_str().unwrap();
    let label = ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        .as_str()
        .unwrap();
    let kubectl = require_tool("kubectl");

    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        for w in &words {
            let w = w.trim_matches(|c| c == '"' || c == '\'' || c == ';');
            if let Some(script) = w.strip_prefix("scripts/") {
                let path = repo().join("scripts").join(script);
                let mode = std::fs::metadata(&path)
                    .unwrap_or_else(|_| panic!("{command}: scripts/{script} does not exist"))
                    .permissions();
                use std::os::unix::fs::PermissionsExt;
                assert!(mode.mode() & 0o111 != 0, "{command}: {w} is not executable");
            }
            if w.starts_with("conf/") || w.starts_with("install/") {
                assert!(repo().join(w).exists(), "{command}: {w} does not exist");
            }
        }
        // `ros-macvlan SUB --opt ...` (also `/ros-macvlan` in the DaemonSet's container and
        // the binary just built): SUB exists and takes every option given.
        let is_binary = |w: &&str| {
            ["ros-macvlan", "/ros-macvlan"].contains(w)
                || w.ends_with("release/ros-macvlan")
                || w.ends_with("bin/ros-macvlan")
        };
        if let Some(at) = words.iter().position(is_binary) {
            let sub = *words
                .get(at + 1)
                .unwrap_or_else(|| panic!("{command}: ros-macvlan with no subcommand"));
            assert!(
                subs.iter().any(|s| s == sub),
                "{command}: ros-macvlan has no subcommand {sub} ({subs:?})"
            );
            let sub_help = help(&[sub, "--help"]);
            for opt in words[at + 2..].iter().filter(|w| w.starts_with("--")) {
                assert!(
                    sub_help.contains(&format!("{opt} ")) || sub_help.contains(&format!("{opt}\n")),
                    "{command}: ros-macvlan {sub} takes no {opt}"
                );
            }
            if words[0] == "kubectl" {
                assert_eq!(
                    words[at], binary,
                    "{command}: the image's binary is {binary}"
                );
            }
        }
        if words.first() == Some(&"kubectl") {
            // Paths given to the binary in the DaemonSet's container are its mounts.
            if words.contains(&"exec") {
                for w in words.iter().filter(|w| w.starts_with('/') && **w != binary) {
                    assert!(
                        mounts
                            .iter()
                            .any(|m| *w == *m || w.starts_with(&format!("{m}/"))),
                        "{command}: {w} is none of the container's mounts {mounts:?}"
                    );
                }
            }
            if words.contains(&"kube-system") || command.contains("ds/") {
                assert!(
                    words.contains(&namespace),
                    "{command}: the DaemonSet is in {namespace}"
                );
            }
            if let Some(ds_ref) = words.iter().find(|w| w.starts_with("ds/")) {
                assert_eq!(*ds_ref, format!("ds/{name}"), "{command}");
            }
            if let Some(selector) = words
                .iter()
                .find(|w| w.starts_with("app.kubernetes.io/name="))
            {
                assert_eq!(
                    *selector,
                    format!("app.kubernetes.io/name={label}"),
                    "{command}"
                );
            }
            if let Some(at) = words.iter().position(|w| *w == "-k") {
                let dir = words[at + 1];
                assert!(
                    repo().join(dir).is_dir(),
                    "{command}: {dir} is no directory"
                );
                if let Some(kubectl) = &kubectl {
                    let out = Command::new(kubectl)
                        .arg("kustomize")
                        .arg(repo().join(dir))
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{command}: kubectl kustomize {dir}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
}

/// README's install steps come in the order they must happen: build the image, import it,
/// apply the DaemonSet, wait for its rollout, the NAD, a pod.
#[test]
fn readme_installs_in_order() {
    let commands = readme_commands();
    let first = |what: &str| {
        commands
            .iter()
            .position(|c| c.contains(what))
            .unwrap_or_else(|| panic!("README has no command with {what}"))
    };
    let order = [
        first("scripts/build-image.sh"),
        first("images import"),
        first("kubectl apply -k install/"),
        first("kubectl rollout status"),
        first("kubectl apply -f conf/ros-net.yaml"),
        first("kubectl apply -f conf/example4"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "README's install steps are out of order: {order:?}"
    );
    // The archive README imports is the one scripts/build-image.sh makes.
    let printed = Command::new(repo().join("scripts/build-image.sh"))
        .arg("--print")
        .output()
        .unwrap();
    let archive = String::from_utf8(printed.stdout).unwrap();
    let archive = archive.lines().nth(1).unwrap().to_owned();
    for c in commands.iter().filter(|c| c.contains(".oci.tar")) {
        assert!(
            c.contains(&archive),
            "{c}: scripts/build-image.sh makes {archive}"
        );
    }
}

/// Multus on MicroK8s comes from the community add-ons: README says to enable them first.
#[test]
fn readme_enables_the_community_addons_before_multus() {
    let commands = readme_commands();
    let community = commands
        .iter()
        .position(|c| c == "microk8s enable community")
        .expect("README enables the community add-ons");
    let multus = commands
        .iter()
        .position(|c| c == "microk8s enable multus")
        .expect("README enables multus");
    assert!(community < multus);
    assert!(Path::new(&repo().join("LICENSE")).is_file());
}
