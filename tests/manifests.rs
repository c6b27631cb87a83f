//! Install manifests and conf/ examples, checked offline: Kubernetes schemas
//! (kubernetes-validate), kustomize rendering (kubectl's own kustomize), and every
//! NetworkAttachmentDefinition's config through the plugin's own parser.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ros_macvlan::ipam::host_local::HostLocalConf;
use ros_macvlan::node::policy::AllowedDirs;
use ros_macvlan::plugin::config::MacvlanConf;
use support::*;

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn validate(validator: &Path, input: &[u8], what: &str) -> (bool, String) {
    let mut child = Command::new(validator)
        .args(["--strict", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{what}: {text}");
    (out.status.success() && !text.contains("ERROR"), text)
}

fn kustomize(kubectl: &Path, dir: &str) -> Vec<u8> {
    let out = Command::new(kubectl)
        .args([
            "kustomize",
            &format!("{}/{dir}", env!("CARGO_MANIFEST_DIR")),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn manifests_pass_the_kubernetes_schemas() {
    let Some(validator) = require_tool("kubernetes-validate") else {
        return;
    };
    // The judge itself rejects a broken manifest.
    let (ok, _) = validate(
        &validator,
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers: 3\n",
        "broken",
    );
    assert!(!ok, "kubernetes-validate accepted a broken pod");
    let files = yaml_files("conf").into_iter().chain(yaml_files("install"));
    for file in files.filter(|f| !f.ends_with("kustomization.yaml")) {
        let text = std::fs::read_to_string(&file).unwrap();
        // NetworkAttachmentDefinition is a CRD without a schema there: checked below.
        if text.contains("kind: NetworkAttachmentDefinition") && !text.contains("kind: Pod") {
            continue;
        }
        let (ok, log) = validate(&validator, text.as_bytes(), &file.display().to_string());
        assert!(ok, "{}: {log}", file.display());
    }
}

#[test]
fn kustomize_renders_base_and_microk8s_overlay() {
    let (Some(kubectl), Some(validator)) =
        (require_tool("kubectl"), require_tool("kubernetes-validate"))
    else {
        return;
    };
    for (dir, cni_bin) in [
        ("install/base", "/opt/cni/bin"),
        (
            "install/overlays/microk8s",
            "/var/snap/microk8s/current/opt/cni/bin",
        ),
    ] {
        let rendered = kustomize(&kubectl, dir);
        let (ok, log) = validate(&validator, &rendered, dir);
        assert!(ok, "{dir}: {log}");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_slice(&rendered)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let ds = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        assert_eq!(ds["metadata"]["namespace"], "kube-system");
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(
            spec["volumes"][0]["hostPath"]["path"].as_str(),
            Some(cni_bin),
            "{dir}"
        );
        assert_eq!(spec["tolerations"][0]["operator"], "Exists");
        let containers = spec["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "one container: the agent does it all");
        let c = &containers[0];
        let command: Vec<&str> = c["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(command[..2], ["/ros-macvlan", "agent"]);
        for duty in ["--socket", "--cni-bin-dir", "--policy", "--gc-data-dir"] {
            assert!(command.contains(&duty), "the agent is not given {duty}");
        }
        // Metrics on the declared port, on the node's loopback (hostNetwork: not the LAN).
        let at = command.iter().position(|a| *a == "--metrics-address");
        let address = at.and_then(|at| command.get(at + 1)).copied();
        assert_eq!(address, Some("127.0.0.1:9470"), "{dir}");
        assert_eq!(c["ports"][0]["name"], "metrics", "{dir}");
        assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(9470), "{dir}");
        assert!(
            c["resources"]["limits"]["memory"].is_string()
                && c["resources"]["requests"]["cpu"].is_string()
        );
        // Least privilege (docs/security.md): the runtime's syscall filter, no escalation,
        // every capability dropped but the two the agent uses.
        let sc = &c["securityContext"];
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{dir}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{dir}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{dir}");
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{dir}"
        );
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{dir}");
        let added: Vec<&str> = sc["capabilities"]["add"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(added, ["SYS_ADMIN", "NET_ADMIN", "NET_RAW"], "{dir}");
        assert!(c["readinessProbe"]["exec"]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a == "--verify"));
        let sa = docs
            .iter()
            .find(|d| d["kind"] == "ServiceAccount")
            .expect("a ServiceAccount");
        assert_eq!(sa["automountServiceAccountToken"], false);
        assert!(
            !docs
                .iter()
                .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role"),
            "the installer needs no API rights"
        );
    }
}

/// Every NAD config in conf/ is one the plugin accepts; every pod in conf/ asks for a NAD
/// that conf/ defines.
#[test]
fn conf_network_attachments_parse_with_the_plugins_own_parser() {
    let mut nads = Vec::new();
    let mut wanted = Vec::new();
    for file in yaml_files("conf") {
        let bytes = std::fs::read(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_slice(&bytes) {
            let doc: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            match doc["kind"].as_str() {
                Some("NetworkAttachmentDefinition") => {
                    assert_eq!(
                        doc["apiVersion"],
                        "k8s.cni.cncf.io/v1",
                        "{}",
                        file.display()
                    );
                    let config = doc["spec"]["config"]
                        .as_str()
                        .expect("spec.config is a JSON string");
                    let conf = MacvlanConf::parse(config.as_bytes()).unwrap_or_else(|e| {
                        panic!("{}: the plugin refuses this config: {e}", file.display())
                    });
                    assert_eq!(conf.plugin_type, "ros-macvlan");
                    if conf.ipam_type() == "host-local" {
                        let allowed = AllowedDirs::new(None);
                        HostLocalConf::parse(&conf.ipam, &allowed.data, &allowed.resolv_conf)
                            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    }
                    nads.push(doc["metadata"]["name"].as_str().unwrap().to_owned());
                }
                Some("Pod") => {
                    let ann =
                        doc["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"].as_str();
                    wanted.push(ann.expect("every example pod asks for ros-net").to_owned());
                }
                _ => {}
            }
        }
    }
    assert!(!nads.is_empty() && wanted.len() >= 5);
    for w in wanted {
        assert!(
            nads.contains(&w),
            "pods ask for {w}, conf/ defines {nads:?}"
        );
    }
}

/// The example node policy is one the plugin reads.
#[test]
fn policy_example_parses_as_a_policy() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("install/policy-example.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let json = doc["data"]["policy.json"].as_str().unwrap();
    serde_json::from_str::<ros_macvlan::node::policy::Policy>(json).unwrap();
}

/// The versions a text names as `ros-macvlan:X.Y.Z` or `ros-macvlan-X.Y.Z` (an image tag,
/// an archive's name), with the line each is on.
fn versions_named(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in text.lines() {
        for (at, _) in line.match_indices("ros-macvlan") {
            let rest = &line[at + "ros-macvlan".len()..];
            let Some(rest) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('-')) else {
                continue;
            };
            let version: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let version = version.trim_end_matches('.');
            if version.split('.').count() == 3 && version.split('.').all(|p| !p.is_empty()) {
                found.push((version.to_owned(), line.trim().to_owned()));
            }
        }
    }
    found
}

/// One version source: Cargo.toml's version is the binary's, the image's tag
/// (scripts/build-image.sh reads it), the manifests' (install/base/kustomization.yaml's
/// `newTag`, in every rendered DaemonSet) and every image or archive README and docs/ name.
#[test]
fn one_version_for_the_binary_the_image_and_the_manifests() {
    let version = env!("CARGO_PKG_VERSION");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let image = format!("localhost/ros-macvlan:{version}");

    let printed = Command::new(repo.join("scripts/build-image.sh"))
        .arg("--print")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            image.as_str(),
            &format!("target/image/ros-macvlan-{version}.oci.tar")
        ],
        "scripts/build-image.sh names another image than Cargo.toml's version"
    );

    let kustomization: serde_yaml::Value = serde_yaml::from_slice(
        &std::fs::read(repo.join("install/base/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let images = kustomization["images"].as_sequence().expect("images:");
    let ours = images
        .iter()
        .find(|i| i["name"] == "localhost/ros-macvlan")
        .expect("an images: entry for localhost/ros-macvlan");
    assert_eq!(
        ours["newTag"].as_str(),
        Some(version),
        "install/base/kustomization.yaml's newTag is not Cargo.toml's version: change them together"
    );

    let mut texts = vec![repo.join("README.md")];
    for dir in ["docs", "install", "scripts", "conf"] {
        if let Ok(entries) = std::fs::read_dir(repo.join(dir)) {
            texts.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    texts.extend(yaml_files("install"));
    for file in texts.iter().filter(|f| f.is_file()) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (named, line) in versions_named(&text) {
            assert_eq!(
                named,
                version,
                "{} names version {named} ({line}); Cargo.toml says {version}",
                file.display()
            );
        }
    }

    let Some(kubectl) = require_tool("kubectl") else {
        return;
    };
    for dir in ["install/base", "install/overlays/microk8s"] {
        let rendered = kustomize(&kubectl, dir);
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_slice(&rendered)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
            Some(image.as_str()),
            "{dir}"
        );
    }
}

#[test]
fn versions_are_found_in_tags_and_archive_names() {
    let text = "image: localhost/ros-macvlan:0.1.0\nctr import target/image/ros-macvlan-1.2.3.oci.tar\nros-macvlan-policy and ros-macvlan:host-access";
    let found: Vec<String> = versions_named(text).into_iter().map(|(v, _)| v).collect();
    assert_eq!(found, ["0.1.0", "1.2.3"]);
}
