//! The deployment files say what they must, and the capability set they
//! grant is enough for lbd on this kernel.

use std::time::Duration;

use lb_tests::{
    lbd::binary,
    netns::{Netns, veth},
    topology::Topology,
};
use serde::Deserialize;
use serde_yaml::Value;

fn daemonset() -> Value {
    let text = include_str!("../../deploy/kubernetes/lbd.yaml");
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet")
}

fn capabilities(ds: &Value) -> Vec<String> {
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|v| v.as_str().unwrap().to_lowercase())
        .collect()
}

#[test]
fn daemonset_has_host_network_bpffs_probes_and_a_minimal_capability_set() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        capabilities(&ds),
        ["bpf", "net_admin", "perfmon", "net_raw"]
    );
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let bpffs = mounts
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf")
        .expect("bpffs mounted");
    assert_eq!(bpffs["mountPropagation"], "HostToContainer");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == bpffs["name"])
        .unwrap();
    assert_eq!(
        volume["hostPath"]["path"], "/sys/fs/bpf",
        "pins must outlive the pod"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], 9464);
    }
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--metrics", "0.0.0.0:9464"]),
        "probes need the metrics endpoint: {args:?}"
    );
    // Each node tunnels from its own address, given by the downward API.
    assert!(
        args.windows(2)
            .any(|w| w == ["--tunnel-source-v4", "$(HOST_IP)"]),
        "{args:?}"
    );
    let host_ip = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOST_IP")
        .expect("HOST_IP env");
    assert_eq!(
        host_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    // The ConfigMap's configuration is valid.
    let text = include_str!("../../deploy/kubernetes/lbd.yaml");
    let cm = serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap();
    // Valid once the node's tunnel source is given, and only then.
    let json = cm["data"]["lbd.json"].as_str().unwrap();
    let node = lb_userspace::config::NodeOverrides {
        tunnel_source_v4: Some("198.51.100.2".parse().unwrap()),
        tunnel_source_v6: None,
    };
    lb_userspace::config::Config::from_json_for(json, &node).expect("ConfigMap config");
    assert!(lb_userspace::config::Config::from_json(json).is_err());
}

#[test]
fn systemd_unit_reloads_restarts_and_is_hardened() {
    let unit = include_str!("../../deploy/systemd/lbd.service");
    let get = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert!(get("ExecStart").contains("lbd --config /etc/lbd/lbd.json"));
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("Restart"), "on-failure");
    // lbd notifies readiness and pets the watchdog (cp_lbd checks that).
    assert_eq!(get("Type"), "notify");
    assert_eq!(get("NotifyAccess"), "main");
    assert_eq!(get("WatchdogSec"), "30s");
    assert_eq!(
        get("CapabilityBoundingSet"),
        "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW"
    );
    assert_eq!(
        get("AmbientCapabilities"),
        get("CapabilityBoundingSet"),
        "lbd runs as root with exactly these"
    );
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("ProtectSystem"), "strict");
    assert!(get("ReadWritePaths").contains("/sys/fs/bpf"));
}

/// Both BIRD configurations of deploy/bird/ parse (`bird -p`, which reads
/// the file and exits), as shipped and with every define changed the way
/// docs/cluster.md says; and the LB node's names the defaults of lbd's
/// `announce`. cp_announce runs them.
#[test]
fn bird_configurations_parse_and_match_lbds_defaults() {
    use lb_tests::bird::{LB_NODE_CONF, ROUTER_CONF, bird_binary, with_defines};
    let parse = |name: &str, text: &str| {
        let path = std::env::temp_dir().join(format!("lbt-bird-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(bird_binary())
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run bird -p");
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    parse("lb-node.conf", LB_NODE_CONF);
    parse("router.conf", ROUTER_CONF);
    parse(
        "lb-node-edited.conf",
        &with_defines(
            LB_NODE_CONF,
            &[
                ("LB_TABLE", "1000"),
                ("LB_PROTOCOL", "210"),
                ("NODE_ID", "192.0.2.12"),
                ("NODE_AS", "4200000001"),
                ("NODE_V4", "192.0.2.12"),
                ("NODE_V6", "2001:db8:1::12"),
            ],
        ),
    );
    // Something BIRD refuses is caught: the test can fail.
    let path = std::env::temp_dir().join(format!("lbt-bird-{}-bad", std::process::id()));
    std::fs::write(&path, LB_NODE_CONF.replace("learn;", "lern;")).unwrap();
    let out = std::process::Command::new(bird_binary())
        .args(["-p", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());

    let defaults = lb_userspace::config::Announce::default();
    assert!(LB_NODE_CONF.contains(&format!("define LB_TABLE    = {};", defaults.table)));
    assert!(LB_NODE_CONF.contains(&format!("define LB_PROTOCOL = {};", defaults.protocol)));
}

#[test]
fn dockerfile_builds_from_source_in_two_stages() {
    let text = include_str!("../../deploy/Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(text.contains("cargo build --release --locked -p lb-userspace --bins"));
    assert!(text.contains("COPY --from=build /src/target/release/lbd"));
}

/// lbd with only the DaemonSet's capabilities starts, and its health
/// checks pass, including the probe through the tunnel (raw sockets): in
/// the lab topology with one backend, the backend must come up.
#[test]
fn deploy_lbd_runs_with_only_the_daemonset_capabilities() {
    let caps: Vec<String> = capabilities(&daemonset())
        .iter()
        .map(|c| format!("+{c}"))
        .collect();
    let topo = Topology::new(1);
    let _server = topo.backends[0].serve();
    let dir = std::env::temp_dir().join(format!("lbt-caps-{}-0", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin_dir = format!("/sys/fs/bpf/lbt-caps-{}-0", std::process::id());
    let check = serde_json::json!({"type": "http", "interval_ms": 200, "timeout_ms": 100});
    let mut config = topo.lbd_config(80, "tcp", check);
    config["pin_dir"] = pin_dir.clone().into();
    config["state_file"] = dir.join("state.json").display().to_string().into();
    config["control"] = serde_json::json!({"socket": dir.join("lbd.sock")});
    let path = dir.join("lbd.json");
    std::fs::write(&path, config.to_string()).unwrap();
    // bpffs is mounted, as on a node; only the granted capabilities remain.
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", topo.lb.name))
        .arg("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg(binary("lbd"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = dir.join("lbd.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < deadline {
        let out = std::process::Command::new(binary("lbctl"))
            .arg("--socket")
            .arg(&socket)
            .args(["--json", "backend", "list"])
            .output()
            .unwrap();
        if out.status.success() {
            last = serde_json::from_slice(&out.stdout).unwrap();
            if last[0]["health"] == "up" {
                break;
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        last,
        serde_json::Value::Null,
        "lbd did not start with {caps:?}: {stderr}"
    );
    assert_eq!(
        (&last[0]["health"], &last[0]["last_check"]),
        (
            &"up".into(),
            &"HTTP 200; through the tunnel: SYN-ACK".into()
        ),
        "checks fail with {caps:?}: {last}\n{stderr}"
    );
}

/// Every metric the Grafana dashboard queries is one lbd exports.
#[test]
fn grafana_dashboard_queries_only_metrics_lbd_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/lbd-dashboard.json")).unwrap();
    let exported = lb_userspace::metrics::EXPORTED;
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("lb_") {
                    names.insert(word.to_string());
                }
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        // Counters are exposed as NAME_total, histograms as NAME_bucket.
        let family = name.trim_end_matches("_total").trim_end_matches("_bucket");
        assert!(
            exported.iter().any(|(n, _)| format!("lb_{n}") == family),
            "{name} is not exported"
        );
    }
}

/// The backend unit's own commands, with its own capability set, attach
/// lb_decap to an interface, accepting tunnels from the sources the unit
/// names (never from any source), and detach it.
#[test]
fn deploy_lb_decap_unit_commands_attach_and_detach() {
    let unit = include_str!("../../deploy/systemd/lb-decap.service");
    let get = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(get("Type"), "oneshot");
    assert_eq!(get("RemainAfterExit"), "yes");
    let caps: Vec<String> = get("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    // systemd's expansion: ${VAR} as one word, $VAR split on spaces.
    let expand = |line: &str, iface: &str| -> Vec<String> {
        let mut words = Vec::new();
        for word in line.split_whitespace() {
            let var = word.trim_start_matches('$').trim_matches(['{', '}']);
            match env.iter().find(|(k, _)| k == var) {
                Some(_) if var == "LB_DECAP_INTERFACE" => words.push(iface.to_string()),
                Some((_, v)) => words.extend(v.split_whitespace().map(str::to_string)),
                None => words.push(word.to_string()),
            }
        }
        words
    };
    let ns = Netns::new("decapunit");
    veth(&ns, "a0", &ns, "b0");
    let pin_dir = format!("/sys/fs/bpf/lbt-decapunit-{}-0", std::process::id());
    let run_words = |words: &[String]| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg("setpriv")
            .arg(format!("--bounding-set=-all,{}", caps.join(",")))
            .arg(binary("lb-decap"))
            .args(["--pin-dir", &pin_dir])
            .args(&words[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{words:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run = |line: &str| {
        let words = expand(line, "a0");
        assert!(words[0].ends_with("/lb-decap"), "{words:?}");
        run_words(&words)
    };
    let start = expand(get("ExecStart"), "a0");
    assert!(
        !start.iter().any(|w| w == "--allow-any-source"),
        "the shipped unit must not opt out of the source check: {start:?}"
    );
    let sources: Vec<String> = start
        .windows(2)
        .filter(|w| w[0] == "--allow-source")
        .map(|w| {
            lb_userspace::decap_sources::parse_source(&w[1])
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!sources.is_empty(), "{start:?}");
    run(get("ExecStart"));
    let attached = ns.exec(&["ip", "-details", "link", "show", "a0"]);
    let status: serde_json::Value = serde_json::from_str(&run_words(&[
        start[0].clone(),
        "status".into(),
        "--json".into(),
    ]))
    .unwrap();
    run(get("ExecStop"));
    let detached = ns.exec(&["ip", "-details", "link", "show", "a0"]);
    let _ = std::fs::remove_dir_all(&pin_dir);
    assert!(attached.contains("prog/xdp"), "{attached}");
    assert_eq!(status["allowed_sources"], serde_json::json!(sources));
    assert!(!detached.contains("prog/xdp"), "{detached}");
}

/// `cargo xtask package` builds a Debian package that dpkg installs into a
/// clean root: the three binaries, the units pointing at them, a man page
/// for every command and subcommand, completions for three shells, the
/// example configurations, JSON and TOML (which `lbd --check` accepts, run
/// from the installed tree) and the docs.
#[test]
fn deploy_package_installs_into_a_clean_root_and_lbd_checks_from_it() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("lbt-package-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let out = std::process::Command::new("cargo")
        .args(["xtask", "package", "--debug", "--out"])
        .arg(&dir)
        .current_dir(workspace)
        .output()
        .expect("run cargo xtask package");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    let deb = dir.join(format!("lbd_{version}_amd64.deb"));

    let root = dir.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("run");
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // libc6 is the host's; the clean root has no package database of it.
    run(std::process::Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-script-chrootless", "-i"])
        .arg(&deb));
    let status = run(std::process::Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "lbd"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains(&format!("Version: {version}")), "{status}");

    let installed = |path: &str| root.join(path);
    for bin in ["lbd", "lbctl", "lb-decap"] {
        assert!(installed(&format!("usr/bin/{bin}")).is_file(), "{bin}");
        for completion in [
            format!("usr/share/bash-completion/completions/{bin}"),
            format!("usr/share/zsh/vendor-completions/_{bin}"),
            format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
        ] {
            let text = std::fs::read_to_string(installed(&completion)).unwrap();
            assert!(text.contains(bin), "{completion}");
        }
    }
    let unit = std::fs::read_to_string(installed("lib/systemd/system/lbd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/lbd --config"), "{unit}");
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    let decap_unit =
        std::fs::read_to_string(installed("lib/systemd/system/lb-decap.service")).unwrap();
    assert!(decap_unit.contains("ExecStart=/usr/bin/lb-decap attach"));
    // A page for every command, down to each subcommand.
    for page in [
        "lbd",
        "lbctl",
        "lbctl-conn-list",
        "lbctl-node-drain",
        "lbctl-backend-drain",
        "lb-decap-attach",
    ] {
        assert!(
            installed(&format!("usr/share/man/man1/{page}.1.gz")).is_file(),
            "{page}"
        );
    }
    for doc in [
        "operations.md",
        "configuration.md",
        "cluster.md",
        "examples/bird/lb-node.conf",
    ] {
        assert!(
            installed(&format!("usr/share/doc/lbd/{doc}")).is_file(),
            "{doc}"
        );
    }
    // Both examples, the JSON one and the commented TOML one.
    for example in ["lbd.json", "lbd.toml"] {
        let file = installed(&format!("usr/share/doc/lbd/examples/{example}"));
        let check = run(std::process::Command::new(installed("usr/bin/lbd"))
            .arg("--config")
            .arg(&file)
            .arg("--check"));
        assert_eq!(check, format!("{}: ok\n", file.display()));
    }
}

/// Removes a directory when dropped, also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
