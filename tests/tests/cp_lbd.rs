//! lbd and lbctl against the real kernel: lbd attached natively to a veth
//! in a namespace the test creates, client traffic from a second namespace.

use std::{
    net::{TcpListener, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use lb_common::{
    Reason,
    maps::{LAYOUT_VERSION, MAP_CONNS, MAP_GLOBAL_STATS, MAP_LAYOUT_VERSION, MAP_PREV_OWNERS},
    stats::REASON_COUNT,
};
use lb_tests::{
    capture::Capture,
    lbd::{Lbd, Paths},
    netns::{Netns, veth},
    pins,
};
use lb_userspace::layout::{self, MapShape, PinOwner};
use serde_json::{Value, json};

const VIP: &str = "198.51.100.10";
const VIP_REF: &str = "198.51.100.10:53/udp";
const CLIENT: &str = "203.0.113.7";
const B1: &str = "198.51.100.101";
const B2: &str = "198.51.100.102";
const B3: &str = "198.51.100.103";

/// An LB namespace (lb0) and a client namespace (cl0) joined by a veth; the
/// client routes the VIP to the LB, the LB's tunnels come back to the
/// client's MAC (its "gateway"), where they are simply dropped.
struct Site {
    lb: Netns,
    client: Netns,
    client_mac: String,
}

impl Site {
    fn new() -> Self {
        let lb = Netns::new("cplb");
        let client = Netns::new("cpcl");
        // Backends answer health checks from inside the LB namespace.
        for b in [B1, B2, B3] {
            lb.exec(&["ip", "addr", "add", &format!("{b}/32"), "dev", "lo"]);
        }
        let site = Self {
            lb,
            client,
            client_mac: String::new(),
        };
        let client_mac = site.create_link();
        Self { client_mac, ..site }
    }

    /// Make the lb0-cl0 veth and the client's side of it; the client's MAC.
    /// Made again after `delete_link`, cl0 keeps the MAC it had (the
    /// configuration's gateway), lb0 gets a new index and a new MAC.
    fn create_link(&self) -> String {
        veth(&self.lb, "lb0", &self.client, "cl0");
        if !self.client_mac.is_empty() {
            self.client
                .exec(&["ip", "link", "set", "cl0", "address", &self.client_mac]);
        }
        let lb_mac = self.lb.mac_text("lb0");
        let client = &self.client;
        client.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "cl0"]);
        client.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "cl0"]);
        client.exec(&[
            "ip",
            "neigh",
            "replace",
            VIP,
            "lladdr",
            &lb_mac,
            "dev",
            "cl0",
            "nud",
            "permanent",
        ]);
        client.mac_text("cl0")
    }

    /// Delete lb0 (and with it its peer cl0), as when a NIC is unplugged.
    fn delete_link(&self) {
        self.lb.exec(&["ip", "link", "del", "lb0"]);
    }

    fn config(&self, backends: &[&str], check: Value) -> Value {
        json!({
            "interfaces": [{"name": "lb0"}],
            "tunnel_source": {"ipv4": "198.51.100.2"},
            "next_hop": {"fib": false, "gateway_mac": self.client_mac},
            "tables": {"ring_size": 4093, "conn_entries": 4096, "max_vips": 8, "max_backends": 64},
            "vips": [{
                "address": VIP, "port": 53, "protocol": "udp",
                "health_check": check,
                "backends": backends.iter().map(|b| json!({"address": b})).collect::<Vec<_>>(),
            }],
        })
    }

    /// Send one UDP datagram to the VIP from each client port: flows seen
    /// once, on probation in the data plane.
    fn send_flows(&self, ports: std::ops::Range<u16>) {
        self.send_datagrams(ports, 1);
    }

    /// Send two UDP datagrams to the VIP from each client port: established
    /// flows, in the connection table.
    fn establish_flows(&self, ports: std::ops::Range<u16>) {
        self.send_datagrams(ports, 2);
    }

    /// Send `count` TCP ACKs to the VIP's port 80 from the client's
    /// `port`, as from a connection in progress (no backend answers here,
    /// so there is no real one): enough of them make a connection entry.
    fn send_tcp_acks(&self, port: u16, count: usize) {
        use socket2::{Domain, Protocol, Socket, Type};
        let packet =
            lb_tests::packets::tcp4(CLIENT, port, VIP, 80, lb_tests::packets::Tcp::Ack, b"");
        self.client.enter(|| {
            // IPPROTO_RAW: the packet goes with the header built here.
            let raw = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_RAW)),
            )
            .expect("raw socket");
            let to = std::net::SocketAddr::new(VIP.parse().unwrap(), 0);
            for _ in 0..count {
                raw.send_to(&packet, &to.into()).expect("send an ACK");
            }
        });
    }

    fn send_datagrams(&self, ports: std::ops::Range<u16>, each: usize) {
        self.client.enter(|| {
            for port in ports {
                let s = UdpSocket::bind((CLIENT, port)).expect("bind client port");
                for _ in 0..each {
                    s.send_to(b"query", (VIP, 53)).expect("send");
                }
            }
        });
    }
}

/// A valid configuration that needs no interface until lbd attaches.
fn base_config() -> Value {
    json!({
        "interfaces": [{"name": "lbt-none0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "vips": [{
            "address": VIP, "port": 53, "protocol": "udp",
            "backends": [{"address": B1}, {"address": B2}],
        }],
    })
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counter(lbd: &Lbd, name: &str) -> u64 {
    lbd.json(&["status"])["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn cp_every_lbctl_verb_changes_the_running_state() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("verbs"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );

    let status = lbd.json(&["status"]);
    assert_eq!(status["interfaces"][0]["mode"], "native", "{status}");
    assert_eq!(status["vips"], 1);
    assert_eq!(status["backends"], 2);

    let vips = lbd.json(&["vip", "list"]);
    assert_eq!(vips[0]["address"], VIP);
    assert_eq!(vips[0]["in_table"], 2);

    lbd.json(&["backend", "add", VIP_REF, B3, "--weight", "3"]);
    let list = lbd.json(&["backend", "list", VIP_REF]);
    let weights: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [1, 1, 3]);

    lbd.json(&["backend", "weight", VIP_REF, B1, "5"]);
    assert_eq!(lbd.json(&["backend", "list"])[0]["weight"], 5);

    lbd.json(&["backend", "drain", VIP_REF, B2]);
    let b2 = &lbd.json(&["backend", "list"])[1];
    assert_eq!(
        (b2["state"].as_str(), b2["in_table"].as_bool()),
        (Some("drain"), Some(false)),
        "{b2}"
    );
    assert!(b2["drain_remaining_s"].as_u64().is_some());
    lbd.json(&["backend", "undrain", VIP_REF, B2]);
    assert_eq!(lbd.json(&["backend", "list"])[1]["in_table"], true);

    lbd.json(&["backend", "del", VIP_REF, B3]);
    assert_eq!(lbd.json(&["backend", "list"]).as_array().unwrap().len(), 2);

    lbd.json(&[
        "vip",
        "add",
        "198.51.100.11:80/tcp",
        "--affinity",
        "--name",
        "web",
    ]);
    lbd.json(&["backend", "add", "198.51.100.11:80/tcp", B3]);
    let vips = lbd.json(&["vip", "list"]);
    assert_eq!(vips[1]["name"], "web");
    assert_eq!(vips[1]["affinity"], true);

    // Traffic, then stats and flow.
    site.send_flows(40000..40020);
    wait_for("20 forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 20
    });
    let stats = lbd.json(&["stats", "--interval", "0.2"]);
    assert_eq!(stats["vips"][0]["packets"], 20, "{stats}");
    // One datagram each: the flows are on probation.
    let flow = lbd.json(&["flow", CLIENT, "40000", VIP, "53", "udp"]);
    assert!(
        flow["reason"]
            .as_str()
            .unwrap()
            .starts_with("probation entry"),
        "{flow}"
    );
    let backend = flow["backend"].as_str().unwrap();
    assert!([B1, B2].contains(&backend), "{flow}");
    let fresh = lbd.json(&["flow", CLIENT, "1", VIP, "53", "udp"]);
    assert!(
        fresh["reason"].as_str().unwrap().starts_with("table slot"),
        "{fresh}"
    );

    // config dump -> apply -f round trip, after deleting the second VIP.
    lbd.json(&["vip", "del", "198.51.100.11:80/tcp"]);
    let dump = lbd.json(&["config", "dump"]);
    assert_eq!(dump["vips"].as_array().unwrap().len(), 1);
    let file = lbd.paths.dir.join("dump.json");
    std::fs::write(&file, serde_json::to_vec(&dump).unwrap()).unwrap();
    lbd.json(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(lbd.json(&["config", "dump"]), dump);

    // `top` shows every VIP and backend with rates, health, weight, state.
    let top = lbd.ctl(&["top", "--once"]);
    let screen = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{top:?}");
    assert!(
        screen.contains("VIP / BACKEND") && screen.contains(VIP_REF),
        "{screen}"
    );
    for b in [B1, B2] {
        assert!(
            screen
                .lines()
                .any(|l| l.contains(b) && l.contains("unchecked") && l.contains("active")),
            "{b} in {screen}"
        );
    }

    // Human-readable output is a table with a header.
    let text = lbd.ctl(&["backend", "list"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).starts_with("VIP"),
        "{text:?}"
    );
}

#[test]
fn cp_bad_configs_and_calls_are_rejected_and_change_nothing() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("bad"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    let before = lbd.json(&["config", "dump"]);
    let file = lbd.paths.dir.join("bad.json");
    let cases: [(Value, &str); 4] = [
        (
            json!({"weight": 0}),
            "vips[0].backends[0].weight: 0 is out of range 1..=1000",
        ),
        (
            json!({"address": "10.0.0.300"}),
            "vips[0].backends[0].address: invalid IP address syntax",
        ),
        (
            json!({"wieght": 2}),
            "vips[0].backends[0].wieght: unknown field `wieght`",
        ),
        (
            json!({"address": B2}),
            "vips[0].backends[1].address: 198.51.100.102 is listed twice in this VIP",
        ),
    ];
    for (patch, message) in cases {
        let mut bad = before.clone();
        for (k, v) in patch.as_object().unwrap() {
            bad["vips"][0]["backends"][0][k] = v.clone();
        }
        assert_apply_refused(&lbd, &file, &bad, message, &before);
    }
    // Bad CLI calls: unknown VIP, unknown backend, bad weight.
    for (args, message) in [
        (
            vec!["backend", "drain", "198.51.100.99:53/udp", B1],
            "no VIP 198.51.100.99:53/udp",
        ),
        (
            vec!["backend", "del", VIP_REF, B3],
            "has no backend 198.51.100.103",
        ),
        (
            vec!["backend", "weight", VIP_REF, B1, "0"],
            "weight: 0 is out of range",
        ),
    ] {
        let out = lbd.ctl(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "expected {message:?} in {err:?}");
    }
    assert_eq!(lbd.json(&["config", "dump"]), before);
    assert!(lbd.ctl(&["status"]).status.success());
}

/// `health_check.through_tunnel` exists only where there is a tunnel: on
/// an `l2_dsr` VIP, set either way, `lbd --check` and `lbctl apply` reject
/// it naming the field, and the running configuration stays as it was.
#[test]
fn cp_through_tunnel_on_an_l2_dsr_vip_is_rejected_naming_the_field() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("thrutun"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    let before = lbd.json(&["config", "dump"]);
    let file = lbd.paths.dir.join("l2dsr.json");
    let path = file.to_str().unwrap();
    let message = "vips[0].health_check.through_tunnel: does not apply to l2_dsr forwarding: there is no tunnel to probe through";
    // Without the FIB an l2_dsr backend needs its MAC.
    let l2_dsr = |check: Value| {
        let mut c = before.clone();
        c["vips"][0]["forwarding"] = "l2_dsr".into();
        c["vips"][0]["health_check"] = check;
        for (i, b) in c["vips"][0]["backends"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            b["mac"] = format!("02:00:5e:00:53:0{i}").into();
        }
        c
    };
    for through_tunnel in [true, false] {
        let bad =
            l2_dsr(json!({"type": "udp", "payload": "ping", "through_tunnel": through_tunnel}));
        std::fs::write(&file, serde_json::to_vec(&bad).unwrap()).unwrap();
        let out = lbd_output(&["--check", "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "lbd --check accepted {bad}");
        assert_eq!(err.trim(), format!("lbd: {path}: {message}"));
        let out = lbd.ctl(&["apply", "-f", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "lbctl apply accepted {bad}");
        assert_eq!(err.trim(), format!("lbctl: {message}"));
        assert_eq!(lbd.json(&["config", "dump"]), before, "state changed");
    }
    // Without the field the same VIP is fine: its checks go direct.
    let good = l2_dsr(json!({"type": "udp", "payload": "ping"}));
    std::fs::write(&file, serde_json::to_vec(&good).unwrap()).unwrap();
    let out = lbd.ctl(&["apply", "-f", path]);
    assert!(out.status.success(), "{out:?}");
    let now = lbd.json(&["config", "dump"]);
    assert_eq!(now["vips"][0]["forwarding"], "l2_dsr");
    assert_eq!(
        now["vips"][0]["health_check"]["through_tunnel"],
        Value::Null
    );
}

/// Bad load-report settings (`vips[].balancing`) are rejected by `lbctl
/// apply` with the field's path, one line, and the running configuration
/// stays; a good one is applied and `lbctl vip show` reports its source.
#[test]
fn cp_bad_load_report_settings_are_rejected_naming_the_field() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("lrbad"),
        site.config(&[B1, B2], json!({"type": "tcp"})),
    );
    let before = lbd.json(&["config", "dump"]);
    let file = lbd.paths.dir.join("balancing.json");
    let path = file.to_str().unwrap();
    let cases: [(Value, &str); 4] = [
        (
            json!({"mode": "load", "source": "header"}),
            "vips[0].balancing.source: header is read from the HTTP health check's response: needs health_check.type http, not tcp",
        ),
        (
            json!({"mode": "load", "source": "prometheus"}),
            "vips[0].balancing.prometheus: source prometheus needs the gauges to scrape: give prometheus.metrics",
        ),
        (
            json!({"mode": "load", "hard_limit": {"metric": "m", "above": 1}}),
            "vips[0].balancing.hard_limit: needs a value the backends report: source prometheus or header",
        ),
        (
            json!({"mode": "load", "source": "prometheus",
                   "prometheus": {"metrics": {"vllm:num_requests_waiting": 1}, "scrape_every": 2}}),
            "vips[0].balancing.prometheus.scrape_every: unknown field `scrape_every`",
        ),
    ];
    for (balancing, message) in cases {
        let mut bad = before.clone();
        bad["vips"][0]["balancing"] = balancing;
        assert_apply_refused(&lbd, &file, &bad, message, &before);
    }
    let mut good = before.clone();
    good["vips"][0]["balancing"] = json!({"mode": "load", "source": "prometheus",
        "prometheus": {"metrics": {"vllm:num_requests_waiting": 1}, "capacity": 8}});
    std::fs::write(&file, serde_json::to_vec(&good).unwrap()).unwrap();
    let out = lbd.ctl(&["apply", "-f", path]);
    assert!(out.status.success(), "{out:?}");
    let show = lbd.json(&["vip", "show", VIP_REF]);
    assert_eq!(
        (&show["mode"], &show["source"]),
        (&json!("load"), &json!("prometheus"))
    );
    // Nothing serves /metrics here: every backend's report is missing.
    assert!(
        show["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["report"]["stale"] == true),
        "{show}"
    );
    let out = lbd.ctl(&["vip", "show", "198.51.100.99:53/udp"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VIP 198.51.100.99:53/udp"));
}

/// Run `lbd` with `args` (no namespace: these fail before attaching).
fn lbd_output(args: &[&str]) -> std::process::Output {
    Command::new(lb_tests::lbd::binary("lbd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run lbd")
}

/// The configuration file the helper wrote for `lbd`.
fn written_config(lbd: &Lbd) -> Value {
    lbd.config_file()
}

/// Replace `lbd`'s configuration file with `config` (in the file's
/// format) and send it SIGHUP.
fn write_and_sighup(lbd: &Lbd, config: &Value) {
    lb_tests::lbd::write_config(&lbd.paths.config, config);
    sighup(lbd);
}

/// Send `lbd` SIGHUP: re-read its configuration file.
fn sighup(lbd: &Lbd) {
    let pid = lbd.pid().expect("lbd pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Run lbd to its exit in the site's LB namespace, over `lbd`'s pins, with
/// `config` written to `name` in `lbd`'s directory. Bounded: an lbd that
/// wrongly starts is stopped after 30 s.
fn lbd_once(site: &Site, lbd: &Lbd, name: &str, config: &Value) -> std::process::Output {
    let path = lbd.paths.dir.join(name);
    std::fs::write(&path, config.to_string()).unwrap();
    Command::new("timeout")
        .arg("30")
        .arg("nsenter")
        .arg(format!("--net=/var/run/netns/{}", site.lb.name))
        .arg(lb_tests::lbd::binary("lbd"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run lbd")
}

/// The maps `lbd` pinned, opened directly (the sizes are `Site::config`'s).
fn pinned_maps(lbd: &Lbd) -> lb_userspace::maps::Maps {
    let sizes = lb_userspace::datapath::MapSizes {
        max_vips: 8,
        max_backends: 64,
        ring_size: 4093,
        conn_entries: 4096,
        probation_entries: lb_common::maps::probation_entries_for(4096),
        frag_entries: lb_common::maps::DEFAULT_FRAG_ENTRIES,
    };
    let mut dp = lb_userspace::datapath::Datapath::open_pinned(
        sizes,
        &lbd.paths.pin_dir,
        lb_userspace::layout::PinOwner::LBD,
    )
    .expect("open the pinned maps");
    lb_userspace::maps::Maps::take(&mut dp.ebpf, sizes.ring_size).expect("maps")
}

#[test]
fn cp_lbd_check_reports_a_bad_config_once_on_stderr() {
    let paths = Paths::new("check");
    let file = paths.config.to_str().unwrap().to_string();
    let mut bad = base_config();
    bad["vips"][0]["backends"][0]["weight"] = 0.into();
    std::fs::write(&file, serde_json::to_vec(&bad).unwrap()).unwrap();
    let problem = "vips[0].backends[0].weight: 0 is out of range 1..=1000";

    let out = lbd_output(&["--config", &file, "--check"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout, "", "nothing on standard output");
    assert_eq!(stderr, format!("lbd: {file}: {problem}\n"));

    // As a JSON log line instead, still once and on standard error.
    let out = lbd_output(&["--config", &file, "--check", "--log-format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.matches(problem).count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let line: Value = serde_json::from_str(stderr.trim()).expect("a JSON log line");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(
        line["fields"]["error"],
        format!("{file}: {problem}"),
        "{line}"
    );

    // A missing file: its name once.
    let missing = format!("{file}.missing");
    let out = lbd_output(&["--config", &missing, "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.matches(&missing).count(), 1, "{stderr}");
    assert!(stderr.contains("the file cannot be read"), "{stderr}");

    // A good file: "ok" on standard output, nothing else.
    std::fs::write(&file, serde_json::to_vec(&base_config()).unwrap()).unwrap();
    let out = lbd_output(&["--config", &file, "--check"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{file}: ok\n")
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&paths.dir);
}

#[test]
fn cp_lbd_startup_failure_names_each_cause_once() {
    let paths = Paths::new("startfail");
    let mut config = base_config();
    // Far more connection-table entries than the kernel creates a map for
    // (on an interface that exists: those are checked first). A small
    // probation table, so the connection table is the map that fails.
    config["tables"] = json!({"conn_entries": 4_000_000_000u32, "probation_entries": 1024});
    config["interfaces"] = json!([{"name": "lo"}]);
    config["pin_dir"] = paths.pin_dir.display().to_string().into();
    config["control"] = json!({"socket": paths.socket.display().to_string()});
    std::fs::write(&paths.config, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = lbd_output(&["--config", paths.config.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&paths.pin_dir);
    let _ = std::fs::remove_dir_all(&paths.dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("lbd: starting: loading the data plane"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("failed to create map `CONNS`").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("map error").count(), 1, "{stderr}");
}

#[test]
fn cp_control_socket_refuses_a_non_root_user() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("perm"),
        site.config(&[B1], json!({"type": "none"})),
    );
    let mode = std::fs::metadata(&lbd.paths.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600);
    // The temp dir must be traversable for the test; the socket itself is not.
    let _ = Command::new("chmod")
        .arg("755")
        .arg(&lbd.paths.dir)
        .status();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lb_tests::lbd::binary("lbctl"))
        .arg("--socket")
        .arg(&lbd.paths.socket)
        .arg("status")
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(lbd.ctl(&["status"]).status.success(), "root still gets in");
}

#[test]
fn cp_sigkill_and_restart_keep_connections_and_forwarding() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("restart"),
        site.config(&[B1, B2, B3], json!({"type": "none"})),
    );
    site.establish_flows(41000..41050);
    wait_for("100 forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 100
    });
    let conns_before = lbd.json(&["status"])["connection_entries"]
        .as_u64()
        .unwrap();
    assert!(conns_before >= 50, "{conns_before}");
    let owners: Vec<Value> = (41000..41050)
        .map(|p| lbd.json(&["flow", CLIENT, &p.to_string(), VIP, "53", "udp"])["backend"].clone())
        .collect();

    lbd.kill();
    // With lbd dead the program still forwards (the pinned link holds it).
    site.establish_flows(41050..41060);
    std::thread::sleep(Duration::from_millis(300));
    lbd.restart();
    let status = lbd.json(&["status"]);
    assert_eq!(status["adopted_running_data_plane"], true);
    assert_eq!(status["interfaces"][0]["replaced_existing_program"], true);
    assert!(
        status["counters"]["tx"].as_u64().unwrap() >= 120,
        "forwarded while lbd was down: {status}"
    );
    assert!(status["connection_entries"].as_u64().unwrap() >= conns_before + 10);

    // Every established flow is still pinned to the same backend, even
    // after the table changes.
    lbd.json(&["backend", "weight", VIP_REF, B1, "7"]);
    for (i, p) in (41000..41050).enumerate() {
        let flow = lbd.json(&["flow", CLIENT, &p.to_string(), VIP, "53", "udp"]);
        assert!(
            flow["reason"]
                .as_str()
                .unwrap()
                .starts_with("connection entry"),
            "{flow}"
        );
        assert_eq!(flow["backend"], owners[i], "flow from port {p} moved");
    }
    site.send_flows(41060..41070);
    wait_for("packets after the restart", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 130
    });
}

/// `lbctl status`' occupancy of `table` (`connections` or `probation`).
fn occupancy(lbd: &Lbd, table: &str) -> (u64, u64) {
    let t = &lbd.json(&["status"])["occupancy"][table];
    (
        t["entries"].as_u64().unwrap(),
        t["capacity"].as_u64().unwrap(),
    )
}

#[test]
fn cp_status_and_metrics_show_table_occupancy_rising_with_flows() {
    let site = Site::new();
    let lbd = Lbd::start_with(
        &site.lb,
        Paths::new("occupancy"),
        site.config(&[B1, B2], json!({"type": "none"})),
        &["--metrics", "127.0.0.1:9464"],
    );
    let status = lbd.json(&["status"]);
    assert_eq!(
        status["occupancy"]["counted_by"], "kernel element count",
        "{status}"
    );
    assert_eq!(status["occupancy"]["exact"], true);
    assert_eq!(occupancy(&lbd, "connections"), (0, 4096));
    assert_eq!(occupancy(&lbd, "probation"), (0, 512));
    // One datagram per flow: the probation table fills.
    site.send_flows(45000..45040);
    wait_for("40 flows on probation", Duration::from_secs(5), || {
        occupancy(&lbd, "probation").0 == 40
    });
    assert_eq!(occupancy(&lbd, "connections").0, 0);
    // A second datagram each: promoted into the connection table, and more.
    site.send_flows(45000..45040);
    site.establish_flows(45040..45060);
    wait_for("60 connections", Duration::from_secs(5), || {
        occupancy(&lbd, "connections").0 == 60
    });
    assert_eq!(occupancy(&lbd, "probation").0, 0);
    let text = String::from_utf8(lbd.ctl(&["status"]).stdout).unwrap();
    assert!(
        text.contains("connections 60/4096 (1.5%)  probation 0/512 (0.0%)"),
        "{text}"
    );
    // Metrics are refreshed once a second.
    wait_for("occupancy in the metrics", Duration::from_secs(5), || {
        let text = scrape(&site);
        text.contains("lb_conn_table_entries{table=\"connections\"} 60")
            && text.contains("lb_conn_table_entries{table=\"probation\"} 0")
            && text.contains("lb_conn_table_capacity{table=\"connections\"} 4096")
            && text.contains("lb_conn_table_capacity{table=\"probation\"} 512")
    });
}

#[test]
fn cp_failed_health_checks_take_a_backend_out_and_back() {
    let site = Site::new();
    // TCP checks on port 8053 of each backend address, fast; the backends
    // are addresses of the LB namespace, with no tunnel to probe through.
    let check = json!({"type": "tcp", "port": 8053, "interval_ms": 100, "timeout_ms": 50, "rise": 2, "fall": 3, "through_tunnel": false});
    let listeners: Vec<TcpListener> = site.lb.enter(|| {
        [B1, B2]
            .iter()
            .map(|b| TcpListener::bind((*b, 8053)).expect("listen"))
            .collect()
    });
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("health"),
        site.config(&[B1, B2], check),
    );
    let health = |i: usize| {
        lbd.json(&["backend", "list"])[i]["health"]
            .as_str()
            .unwrap()
            .to_string()
    };
    wait_for("both backends up", Duration::from_secs(5), || {
        health(0) == "up" && health(1) == "up"
    });

    drop(listeners);
    let down_at = Instant::now();
    wait_for("B1 down", Duration::from_secs(5), || health(0) == "down");
    // fall x interval = 300 ms, plus scheduling slack.
    assert!(
        down_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        down_at.elapsed()
    );
    assert_eq!(lbd.json(&["vip", "list"])[0]["in_table"], 0);
    let b = &lbd.json(&["backend", "list"])[0];
    assert!(b["last_check"].as_str().unwrap().contains("refused"), "{b}");

    let _back = site
        .lb
        .enter(|| TcpListener::bind((B1, 8053)).expect("listen again"));
    wait_for("B1 up again", Duration::from_secs(5), || health(0) == "up");
    assert_eq!(lbd.json(&["vip", "list"])[0]["in_table"], 1);
}

#[test]
fn cp_drain_timeout_cuts_the_backend_off() {
    let site = Site::new();
    let mut config = site.config(&[B1, B2], json!({"type": "none"}));
    config["vips"][0]["drain_timeout_s"] = json!(1);
    let lbd = Lbd::start(&site.lb, Paths::new("drain"), config);
    lbd.json(&["backend", "drain", VIP_REF, B1]);
    let b1 = &lbd.json(&["backend", "list"])[0];
    assert_eq!(b1["state"], "drain");
    // The backend is cut off within a tick of the timeout: down in the
    // data plane, so even its established flows move.
    wait_for("the drain to expire", Duration::from_secs(5), || {
        lbd.log().contains("drain timeout expired")
    });
    let b1 = &lbd.json(&["backend", "list"])[0];
    assert_eq!(
        (b1["drain_remaining_s"].as_u64(), b1["in_table"].as_bool()),
        (Some(0), Some(false)),
        "{b1}"
    );
    assert_eq!(lbd.json(&["vip", "list"])[0]["in_table"], 1);
    assert!(lbd.log().contains("drain timeout expired"), "{}", lbd.log());
}

#[test]
fn cp_sighup_reloads_the_file_and_keeps_state_on_a_bad_one() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("hup"),
        site.config(&[B1], json!({"type": "none"})),
    );
    let mut file = written_config(&lbd);
    file["vips"][0]["backends"] = json!([{"address": B1}, {"address": B2}]);
    write_and_sighup(&lbd, &file);
    wait_for("reload", Duration::from_secs(5), || {
        lbd.json(&["backend", "list"]).as_array().unwrap().len() == 2
    });

    let good = lbd.json(&["config", "dump"]);
    file["vips"][0]["backends"][1]["weight"] = json!(-1);
    write_and_sighup(&lbd, &file);
    wait_for("rejection logged", Duration::from_secs(5), || {
        lbd.log().contains("reload rejected")
    });
    assert!(
        lbd.log().contains("vips[0].backends[1].weight"),
        "{}",
        lbd.log()
    );
    assert_eq!(lbd.json(&["config", "dump"]), good);
}

#[test]
fn cp_control_socket_answers_garbage_with_an_error_and_stays_up() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("garbage"),
        site.config(&[B1], json!({"type": "none"})),
    );
    // A client that connects and stalls does not hold the others up.
    let _stalled = UnixStream::connect(&lbd.paths.socket).unwrap();
    for request in [
        &b"{not json\n"[..],
        b"{\"cmd\":\"reboot\"}\n",
        b"\xff\xfe\n",
    ] {
        let mut s = UnixStream::connect(&lbd.paths.socket).unwrap();
        s.write_all(request).unwrap();
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["ok"], false);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed request"),
            "{reply}"
        );
    }
    // Half-written: the client gives up mid-request.
    let mut half = UnixStream::connect(&lbd.paths.socket).unwrap();
    half.write_all(br#"{"cmd":"sta"#).unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    BufReader::new(&half).read_line(&mut reply).unwrap();
    assert!(reply.contains("malformed request"), "{reply}");
    // Many clients at once all get answers.
    let socket = lbd.paths.socket.clone();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.write_all(b"{\"cmd\":\"vip_list\"}\n").unwrap();
                let mut reply = String::new();
                BufReader::new(&s).read_line(&mut reply).unwrap();
                serde_json::from_str::<Value>(&reply).unwrap()["ok"] == true
            })
        })
        .collect();
    assert!(clients.into_iter().all(|c| c.join().unwrap()));
    let mut big = UnixStream::connect(&lbd.paths.socket).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..5 {
        if big.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    let _ = BufReader::new(&big).read_line(&mut reply);
    assert!(reply.contains("request larger than"), "{reply}");
    assert!(lbd.ctl(&["status"]).status.success());
}

/// The metrics text lbd serves on 127.0.0.1:9464 in `site`'s LB namespace.
fn scrape(site: &Site) -> String {
    use std::io::{Read, Write};
    site.lb.enter(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
}

/// `lbctl stats`' packet count of backend `addr`, if it is listed.
fn backend_packets(lbd: &Lbd, addr: &str) -> Option<u64> {
    let stats = lbd.json(&["stats", "--interval", "0.1"]);
    stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == addr)
        .map(|b| b["packets"].as_u64().unwrap())
}

#[test]
fn cp_a_removed_backend_loses_its_series_and_its_recycled_id_starts_from_zero() {
    let site = Site::new();
    let mut config = site.config(&[B1, B2], json!({"type": "none"}));
    // Two backend ids only: a backend added after one is removed gets the
    // removed one's id.
    config["tables"]["max_backends"] = 2.into();
    let lbd = Lbd::start_with(
        &site.lb,
        Paths::new("recycle"),
        config,
        &["--metrics", "127.0.0.1:9464"],
    );
    site.send_flows(44000..44020);
    wait_for("traffic on both backends", Duration::from_secs(5), || {
        backend_packets(&lbd, B1).unwrap_or(0) > 0 && backend_packets(&lbd, B2).unwrap_or(0) > 0
    });
    let b1_series = format!("backend=\"{B1}\"");
    wait_for("B1's series", Duration::from_secs(5), || {
        scrape(&site).contains(&b1_series)
    });

    lbd.json(&["backend", "del", VIP_REF, B1]);
    lbd.json(&["backend", "add", VIP_REF, B3]);
    assert_eq!(
        backend_packets(&lbd, B3),
        Some(0),
        "B3 inherited B1's counts"
    );
    // Counters are copied once a second: B3's series shows up, B1's goes.
    let b3_series = format!("lb_backend_packets_total{{vip=\"{VIP_REF}\",backend=\"{B3}\"}} 0");
    wait_for(
        "B3's series, and none of B1",
        Duration::from_secs(5),
        || {
            let text = scrape(&site);
            text.contains(&b3_series) && !text.contains(&b1_series)
        },
    );
    // The VIP's series goes with the VIP.
    lbd.json(&["vip", "del", VIP_REF]);
    let vip_series = format!("vip=\"{VIP_REF}\"");
    wait_for(
        "no series of the removed VIP",
        Duration::from_secs(5),
        || !scrape(&site).contains(&vip_series),
    );
}

#[test]
fn cp_metrics_endpoint_serves_prometheus_text() {
    use std::io::{Read, Write};
    let site = Site::new();
    let lbd = Lbd::start_with(
        &site.lb,
        Paths::new("metrics"),
        site.config(&[B1, B2], json!({"type": "none"})),
        &["--metrics", "127.0.0.1:9464"],
    );
    site.send_flows(43000..43010);
    wait_for("forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 10
    });
    let scrape = || {
        site.lb.enter(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        })
    };
    // Counters are copied once a second.
    wait_for("metrics with the traffic", Duration::from_secs(5), || {
        scrape().contains("lb_vip_packets_total{vip=\"198.51.100.10:53/udp\"} 10")
    });
    let text = scrape();
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    for needle in [
        "lb_packets_total{reason=\"tx\",verdict=\"forwarded\"} 10",
        "lb_events_total{event=\"new_flow\"} 10",
        "lb_build_info{version=\"",
        "lb_backend_up{vip=\"198.51.100.10:53/udp\",backend=\"198.51.100.101\"} 1",
        "lb_attached",
        "lb_table_rebuilds_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Verdicts and events are two families: summing packets adds no event.
    assert!(
        !text.contains("lb_packets_total{reason=\"new_flow\"")
            && !text.contains("lb_packets_total{reason=\"conn_miss\""),
        "{text}"
    );
    let new_flows: u64 = text
        .lines()
        .filter(|l| l.starts_with("lb_backend_new_flows_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(new_flows, 10);
}

/// Pinned maps keep their sizes: a restart with other `tables` sizes is
/// refused, naming each difference, and the running program keeps
/// forwarding; with the old sizes lbd starts and adopts it again.
#[test]
fn cp_restart_with_other_table_sizes_is_refused_and_forwarding_goes_on() {
    let site = Site::new();
    let config = site.config(&[B1, B2], json!({"type": "none"}));
    let mut lbd = Lbd::start(&site.lb, Paths::new("sizes"), config);
    let tx_before = counter(&lbd, "tx");
    lbd.kill();
    let mut bigger = written_config(&lbd);
    bigger["tables"]["conn_entries"] = json!(8192);
    bigger["tables"]["max_backends"] = json!(128);
    let out = lbd_once(&site, &lbd, "bigger.json", &bigger);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failure = stderr
        .lines()
        .find(|l| l.starts_with("lbd: "))
        .unwrap_or_else(|| panic!("no failure line in:\n{stderr}"));
    assert_eq!(
        failure,
        "lbd: starting: tables.max_backends is 128 but the pinned map holds 64; \
         tables.conn_entries is 8192 but the pinned map holds 4096; \
         tables.probation_entries (by default conn_entries / 8) is 1024 but the pinned map holds 512: table sizes \
         change only with `lbd --teardown` first (drops connections), or revert the config"
    );
    // The refused start changed nothing: the pinned program forwards, and
    // lbd with the old sizes adopts it again.
    site.send_flows(42000..42010);
    std::thread::sleep(Duration::from_millis(300));
    lbd.restart();
    assert_eq!(lbd.json(&["status"])["adopted_running_data_plane"], true);
    assert!(counter(&lbd, "tx") >= tx_before + 10);
}

/// A start that fails on the host's side (an interface that does not
/// exist) fails before writing anything: the running data plane keeps the
/// configuration it had.
#[test]
fn cp_start_with_a_missing_interface_leaves_the_running_data_plane_as_it_was() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("noiface"),
        site.config(&[B1], json!({"type": "none"})),
    );
    lbd.kill();
    let mut broken = written_config(&lbd);
    broken["interfaces"] = json!([{"name": "lb0"}, {"name": "nosuch0"}]);
    broken["vips"][0]["backends"] = json!([{"address": B2}]);
    broken["vips"].as_array_mut().unwrap().push(
        json!({"address": VIP, "port": 80, "protocol": "tcp", "backends": [{"address": B3}]}),
    );
    let out = lbd_once(&site, &lbd, "broken.json", &broken);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interfaces: nosuch0: interface \"nosuch0\" does not exist"),
        "{stderr}"
    );
    // Read the pinned maps directly: one VIP, backed by B1, as before.
    let maps = pinned_maps(&lbd);
    let vips = maps.vips().unwrap();
    assert_eq!(vips.len(), 1, "no VIP was added");
    let backends: Vec<_> = maps
        .backends()
        .unwrap()
        .into_iter()
        .filter(|(_, b)| b.flags != 0)
        .map(|(_, b)| {
            lb_userspace::addr::from_map(&b.addr, b.family)
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(backends, [B1], "the backends are the running ones");
}

/// `--tunnel-source-v4` wins over the file at start, on SIGHUP and on
/// `lbctl apply`, and is what the data plane tunnels from.
#[test]
fn cp_tunnel_source_flag_wins_over_every_configuration_applied() {
    const NODE: &str = "198.51.100.3";
    let site = Site::new();
    let lbd = Lbd::start_with(
        &site.lb,
        Paths::new("node"),
        site.config(&[B1], json!({"type": "none"})),
        &["--tunnel-source-v4", NODE],
    );
    let outer_source = |lbd: &Lbd| lbd.json(&["config", "dump"])["tunnel_source"]["ipv4"].clone();
    assert_eq!(outer_source(&lbd), NODE);

    // The file names another source; a reload keeps this host's.
    let mut file = written_config(&lbd);
    file["vips"][0]["backends"] = json!([{"address": B1}, {"address": B2}]);
    write_and_sighup(&lbd, &file);
    wait_for("reload", Duration::from_secs(5), || {
        lbd.json(&["backend", "list"]).as_array().unwrap().len() == 2
    });
    assert_eq!(outer_source(&lbd), NODE);

    // lbctl apply of a file with no tunnel source at all is valid here.
    file.as_object_mut().unwrap().remove("tunnel_source");
    let path = lbd.paths.dir.join("no-source.json");
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    lbd.json(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(outer_source(&lbd), NODE);

    // The data plane tunnels from it (the golden tests check that the
    // program writes LB_CONFIG's source into every outer header).
    let maps = pinned_maps(&lbd);
    let source: std::net::Ipv4Addr = maps.config().unwrap().outer_src_v4.into();
    assert_eq!(source.to_string(), NODE);
}

/// A veth pair `a`-`b` inside the LB namespace. `b` has GRO on: a veth
/// drops frames redirected into its peer by XDP unless it has GRO or an
/// XDP program of its own.
fn lb_veth_pair(site: &Site, a: &str, b: &str) {
    site.lb
        .exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
    site.lb.exec(&["ip", "link", "set", a, "up"]);
    site.lb.exec(&["ip", "link", "set", b, "up"]);
    site.lb.exec(&["ethtool", "-K", b, "gro", "on"]);
}

/// With `next_hop.egress_interface`, lbd gives the data plane that
/// interface's index and MAC: frames sent out of it carry its MAC.
#[test]
fn cp_egress_interface_gives_the_data_plane_its_index_and_mac() {
    let site = Site::new();
    lb_veth_pair(&site, "out0", "out1");
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["next_hop"]["egress_interface"] = json!("out0");
    let lbd = Lbd::start(&site.lb, Paths::new("egress"), config);
    let maps = pinned_maps(&lbd);
    let live = maps.config().unwrap();
    assert_eq!(live.egress_ifindex, site.lb.ifindex("out0"));
    assert_eq!(live.egress_mac, site.lb.mac("out0"));
}

/// An interface as the data plane knows it: ifindex and MAC.
type Port = (u32, [u8; 6]);

/// What the data plane sends out of, as its maps say: the configured
/// egress and the TX ports.
fn data_plane_egress(lbd: &Lbd) -> (Port, Vec<Port>) {
    let maps = pinned_maps(lbd);
    let live = maps.config().unwrap();
    (
        (live.egress_ifindex, live.egress_mac),
        maps.tx_ports().unwrap(),
    )
}

/// Send one datagram to the VIP and return the tunnelled frame (IPv4,
/// protocol 4, to B1) that `capture` sees.
fn tunnelled_to_b1(site: &Site, capture: &Capture, port: u16) -> Vec<u8> {
    site.send_flows(port..port + 1);
    let b1: std::net::Ipv4Addr = B1.parse().unwrap();
    capture
        .find(Duration::from_secs(5), |f| {
            f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 4 && f[30..34] == b1.octets()
        })
        .expect("a tunnelled frame on the egress interface's peer")
}

/// Turning `next_hop.fib` off at run time (SIGHUP) with an
/// `egress_interface` set gives the data plane that interface: frames to
/// the gateway leave through it, with its MAC. Changing the interface
/// itself (`lbctl apply`) moves them again, and the old port is closed.
#[test]
fn cp_fib_turned_off_at_run_time_sends_out_of_the_egress_interface() {
    let site = Site::new();
    lb_veth_pair(&site, "out0", "out1");
    lb_veth_pair(&site, "out2", "out3");
    let lb0 = (site.lb.ifindex("lb0"), site.lb.mac("lb0"));
    let out0 = (site.lb.ifindex("out0"), site.lb.mac("out0"));
    let out2 = (site.lb.ifindex("out2"), site.lb.mac("out2"));
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["next_hop"]["fib"] = json!(true);
    config["next_hop"]["egress_interface"] = json!("out0");
    let lbd = Lbd::start(&site.lb, Paths::new("fiboff"), config);
    assert_eq!(data_plane_egress(&lbd), ((0, [0; 6]), vec![lb0]));

    let mut file = written_config(&lbd);
    file["next_hop"]["fib"] = json!(false);
    let capture = Capture::open(&site.lb, "out1");
    write_and_sighup(&lbd, &file);
    wait_for("reload", Duration::from_secs(5), || {
        lbd.json(&["config", "dump"])["next_hop"]["fib"] == json!(false)
    });
    assert_eq!(data_plane_egress(&lbd), (out0, vec![lb0, out0]));
    let redirected = counter(&lbd, "redirect");
    let frame = tunnelled_to_b1(&site, &capture, 41000);
    assert_eq!(
        (frame[..6].to_vec(), frame[6..12].to_vec()),
        (site.client.mac("cl0").to_vec(), out0.1.to_vec()),
        "gateway MAC from out0's MAC"
    );
    assert_eq!(counter(&lbd, "redirect"), redirected + 1);

    file["next_hop"]["egress_interface"] = json!("out2");
    let path = lbd.paths.dir.join("out2.json");
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    lbd.json(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(data_plane_egress(&lbd), (out2, vec![lb0, out2]));
    let capture = Capture::open(&site.lb, "out3");
    let frame = tunnelled_to_b1(&site, &capture, 41001);
    assert_eq!(frame[6..12], out2.1);
}

/// The reverse: turning `next_hop.fib` on at run time (`lbctl apply`)
/// takes the configured egress away from the data plane (the FIB chooses
/// interfaces now) and closes its port; SIGHUP back to the file with `fib`
/// off restores both.
#[test]
fn cp_fib_turned_on_at_run_time_takes_the_egress_interface_away() {
    let site = Site::new();
    lb_veth_pair(&site, "out0", "out1");
    let lb0 = (site.lb.ifindex("lb0"), site.lb.mac("lb0"));
    let out0 = (site.lb.ifindex("out0"), site.lb.mac("out0"));
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["next_hop"]["egress_interface"] = json!("out0");
    let lbd = Lbd::start(&site.lb, Paths::new("fibon"), config);
    assert_eq!(data_plane_egress(&lbd), (out0, vec![lb0, out0]));

    let file = written_config(&lbd);
    let mut fib_on = file.clone();
    fib_on["next_hop"]["fib"] = json!(true);
    let path = lbd.paths.dir.join("fib-on.json");
    std::fs::write(&path, serde_json::to_vec(&fib_on).unwrap()).unwrap();
    lbd.json(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(data_plane_egress(&lbd), ((0, [0; 6]), vec![lb0]));

    write_and_sighup(&lbd, &file);
    wait_for("reload", Duration::from_secs(5), || {
        lbd.json(&["config", "dump"])["next_hop"]["fib"] == json!(false)
    });
    assert_eq!(data_plane_egress(&lbd), (out0, vec![lb0, out0]));
    let capture = Capture::open(&site.lb, "out1");
    let frame = tunnelled_to_b1(&site, &capture, 41002);
    assert_eq!(frame[6..12], out0.1);
}

/// `ip netns exec` gives lbd a private /sys without the host's bpffs: a
/// bpffs lbd mounted there would vanish with it and forwarding would stop
/// when it exits. lbd and lb-decap refuse, saying what to do instead, and
/// pin nothing.
#[test]
fn cp_lbd_and_lb_decap_refuse_a_private_bpffs_under_ip_netns_exec() {
    let site = Site::new();
    let paths = Paths::new("netnsexec");
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["pin_dir"] = paths.pin_dir.display().to_string().into();
    config["control"] = json!({ "socket": paths.socket.display().to_string() });
    std::fs::write(&paths.config, config.to_string()).unwrap();
    let run = |program: &str, args: &[&str]| {
        // Bounded: an lbd that wrongly started would otherwise run on.
        Command::new("timeout")
            .args(["20", "ip", "netns", "exec", &site.lb.name])
            .arg(lb_tests::lbd::binary(program))
            .args(args)
            .output()
            .expect("run under ip netns exec")
    };
    let lbd = run("lbd", &["--config", paths.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&lbd.stderr);
    assert!(!lbd.status.success(), "lbd must refuse: {stderr}");
    assert!(
        stderr.contains("mount namespace other than the host's") && stderr.contains("nsenter"),
        "{stderr}"
    );
    assert!(!paths.pin_dir.exists(), "nothing pinned");

    let decap_pins = paths.dir.join("decap-pins");
    let decap_pins = format!(
        "/sys/fs/bpf/{}",
        decap_pins.file_name().unwrap().to_str().unwrap()
    );
    let decap = run(
        "lb-decap",
        &[
            "--pin-dir",
            &decap_pins,
            "attach",
            "-i",
            "lb0",
            "-a",
            B1,
            "--allow-source",
            "198.51.100.2",
        ],
    );
    let stderr = String::from_utf8_lossy(&decap.stderr);
    assert!(!decap.status.success(), "lb-decap must refuse: {stderr}");
    assert!(
        stderr.contains("mount namespace other than the host's"),
        "{stderr}"
    );
    // lb0 carries no program: forwarding never depended on a vanishing pin.
    let link = site.lb.exec(&["ip", "link", "show", "lb0"]);
    assert!(!link.contains("xdp"), "{link}");
}

/// The VIP as lbd left it in the pinned maps and as traffic finds it: its
/// live ring holds exactly `members`, its affinity flag is `affinity`, and
/// fresh UDP flows from `ports` reach only `members` (all one backend with
/// affinity: they come from one client), none dropped.
fn assert_serves(
    site: &Site,
    lbd: &Lbd,
    members: &[&str],
    affinity: bool,
    ports: std::ops::Range<u16>,
) {
    use std::collections::BTreeSet;
    let ids: Vec<(String, u32)> = lbd
        .json(&["backend", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| Some((b["address"].as_str()?.to_string(), b["id"].as_u64()? as u32)))
        .collect();
    let want: BTreeSet<u32> = ids
        .iter()
        .filter(|(a, _)| members.contains(&a.as_str()))
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(want.len(), members.len(), "ids of {members:?} in {ids:?}");
    let (maps, meta) = pinned_vip(lbd, VIP, 53, lb_userspace::config::Protocol::Udp);
    assert_eq!(
        meta.flags & lb_common::maps::VIP_F_AFFINITY != 0,
        affinity,
        "{meta:?}"
    );
    let ring: BTreeSet<u32> = (0..4093)
        .map(|slot| maps.ring_slot(&meta, slot).unwrap())
        .collect();
    assert_eq!(ring, want, "live ring {} of the VIP", meta.active_ring);
    drop(maps);

    let all = [B1, B2, B3];
    let packets = || all.map(|b| backend_packets(lbd, b).unwrap_or(0));
    let before = packets();
    let drops = counter(lbd, "drop_no_backend");
    let n = ports.len() as u64;
    site.send_flows(ports);
    let mut after = before;
    wait_for(
        "every flow forwarded or dropped",
        Duration::from_secs(5),
        || {
            after = packets();
            let moved: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
            moved + counter(lbd, "drop_no_backend") - drops >= n
        },
    );
    assert_eq!(counter(lbd, "drop_no_backend"), drops, "flows dropped");
    let deltas: Vec<(&str, u64)> = all
        .iter()
        .zip(after.iter().zip(before))
        .map(|(b, (a, x))| (*b, a - x))
        .collect();
    for (b, d) in &deltas {
        assert!(
            members.contains(b) || *d == 0,
            "{b} is not a member: {deltas:?}"
        );
    }
    if affinity {
        assert!(deltas.iter().any(|(_, d)| *d == n), "affinity: {deltas:?}");
    }
}

/// Defect: a reload that changed a VIP's members and flags together undid
/// the ring flip: the VIP kept its old ring (removed backends' flows
/// dropped, an added backend idle). Members and affinity now change
/// together at a SIGHUP, at `lbctl apply`, and at a restart after the file
/// was edited while lbd was down.
#[test]
fn cp_members_and_flags_changed_together_apply_at_sighup_lbctl_apply_and_restart() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("flip"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    assert_serves(&site, &lbd, &[B1, B2], false, 41000..41020);

    let mut file = written_config(&lbd);
    let backends = |list: &[&str]| {
        json!(
            list.iter()
                .map(|b| json!({"address": b}))
                .collect::<Vec<_>>()
        )
    };
    file["vips"][0]["backends"] = backends(&[B2, B3]);
    file["vips"][0]["affinity"] = json!(true);
    write_and_sighup(&lbd, &file);
    wait_for("reload", Duration::from_secs(5), || {
        lbd.json(&["vip", "list"])[0]["affinity"] == json!(true)
    });
    assert_serves(&site, &lbd, &[B2, B3], true, 41100..41120);

    file["vips"][0]["backends"] = backends(&[B1, B3]);
    file["vips"][0]["affinity"] = json!(false);
    let applied = lbd.paths.dir.join("apply.json");
    std::fs::write(&applied, file.to_string()).unwrap();
    lbd.json(&["apply", "-f", applied.to_str().unwrap()]);
    assert_serves(&site, &lbd, &[B1, B3], false, 41200..41220);

    lbd.kill();
    file["vips"][0]["backends"] = backends(&[B1, B2]);
    file["vips"][0]["affinity"] = json!(true);
    std::fs::write(&lbd.paths.config, file.to_string()).unwrap();
    lbd.restart();
    assert_serves(&site, &lbd, &[B1, B2], true, 41300..41320);
}

/// A TOML configuration file, comments and all, serves like a JSON one: at
/// start, at SIGHUP (the file's extension says how it is written) and
/// through `lbctl apply -f FILE.toml`; `lbctl config dump --format toml`
/// writes the running configuration as a TOML file that lbd takes back
/// unchanged.
#[test]
fn cp_lbd_serves_from_a_toml_config_at_start_sighup_and_apply() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("toml").toml(),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    let text = std::fs::read_to_string(&lbd.paths.config).unwrap();
    assert!(
        text.starts_with("# ") && text.contains("[[vips]]"),
        "{text}"
    );
    assert_serves(&site, &lbd, &[B1, B2], false, 42000..42020);

    let mut file = written_config(&lbd);
    file["vips"][0]["backends"] = json!([{"address": B2}, {"address": B3}]);
    write_and_sighup(&lbd, &file);
    wait_for("reload", Duration::from_secs(5), || {
        lbd.json(&["backend", "list"])[0]["address"] == B2
    });
    assert_serves(&site, &lbd, &[B2, B3], false, 42100..42120);

    file["vips"][0]["backends"] = json!([{"address": B1}, {"address": B3}]);
    file["vips"][0]["affinity"] = json!(true);
    let applied = lbd.paths.dir.join("apply.toml");
    lb_tests::lbd::write_config(&applied, &file);
    lbd.json(&["apply", "-f", applied.to_str().unwrap()]);
    assert_serves(&site, &lbd, &[B1, B3], true, 42200..42220);

    let running = lbd.json(&["config", "dump"]);
    let out = lbd.ctl(&["config", "dump", "--format", "toml"]);
    assert!(out.status.success(), "{out:?}");
    let toml = String::from_utf8(out.stdout).unwrap();
    let as_json = lb_userspace::config::Config::from_json(&running.to_string()).unwrap();
    assert_eq!(
        lb_userspace::config::Config::from_toml(&toml),
        Ok(as_json),
        "{toml}"
    );
    let dumped = lbd.paths.dir.join("dump.toml");
    std::fs::write(&dumped, &toml).unwrap();
    lbd.json(&["apply", "-f", dumped.to_str().unwrap()]);
    assert_eq!(lbd.json(&["config", "dump"]), running);
    // --json asks for JSON: it does not go with --format toml.
    let both = lbd.ctl(&["--json", "config", "dump", "--format", "toml"]);
    assert!(!both.status.success());
}

/// The line of the `weight` of the second backend of the first VIP in a
/// TOML dump (1-based), and the text with that value replaced by `value`.
fn second_backend_weight(toml: &str, value: &str) -> (usize, String) {
    let mut lines: Vec<String> = toml.lines().map(String::from).collect();
    let second = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "[[vips.backends]]")
        .nth(1)
        .expect("a second backend")
        .0;
    let at = (second..lines.len())
        .find(|i| lines[*i].starts_with("weight = "))
        .expect("its weight");
    lines[at] = format!("weight = {value}");
    (at + 1, lines.join("\n"))
}

/// A TOML file with a problem is refused whichever way it comes (`lbd
/// --check`, SIGHUP, `lbctl apply`), with the field's path as for JSON and,
/// where the parser knows it, the line; the running state stays as it was.
/// A file named neither .json nor .toml is refused, not guessed at.
#[test]
fn cp_a_bad_toml_config_is_refused_with_its_path_and_line_and_changes_nothing() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("badtoml").toml(),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    let before = lbd.json(&["config", "dump"]);
    let out = lbd.ctl(&["config", "dump", "--format", "toml"]);
    assert!(out.status.success(), "{out:?}");
    let dump = String::from_utf8(out.stdout).unwrap();

    let (line, wrong_type) = second_backend_weight(&dump, "\"heavy\"");
    let (_, out_of_range) = second_backend_weight(&dump, "0");
    let syntax = dump.replacen("mtu = ", "mtu = = ", 1);
    let syntax_line = syntax
        .lines()
        .position(|l| l.starts_with("mtu = ="))
        .unwrap()
        + 1;
    let cases = [
        (
            wrong_type,
            format!(
                "vips[0].backends[1].weight: invalid type: string \"heavy\", expected u32 (TOML at line {line} column 10)"
            ),
        ),
        (
            out_of_range,
            "vips[0].backends[1].weight: 0 is out of range 1..=1000".to_string(),
        ),
        (
            syntax,
            format!("invalid TOML at line {syntax_line} column 7: "),
        ),
    ];
    let file = lbd.paths.dir.join("bad.toml");
    let path = file.to_str().unwrap();
    for (text, message) in &cases {
        std::fs::write(&file, text).unwrap();
        let out = lbd.ctl(&["apply", "-f", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(
            err.contains(message.as_str()),
            "expected {message:?} in {err:?}"
        );
        assert_eq!(err.lines().count(), 1, "one-line reason: {err:?}");
        assert_eq!(lbd.json(&["config", "dump"]), before, "after {message}");

        let out = lbd_output(&["--config", path, "--check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with(&format!("lbd: {path}: {message}")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    // SIGHUP with the wrongly typed weight in lbd's own file.
    std::fs::write(&lbd.paths.config, &cases[0].0).unwrap();
    sighup(&lbd);
    wait_for("rejection logged", Duration::from_secs(5), || {
        lbd.log().contains("reload rejected")
    });
    assert!(lbd.log().contains(cases[0].1.as_str()), "{}", lbd.log());
    assert_eq!(lbd.json(&["config", "dump"]), before);
    assert_serves(&site, &lbd, &[B1, B2], false, 42300..42320);
    // A good file again, for the teardown at the end.
    std::fs::write(&lbd.paths.config, &dump).unwrap();

    // Any name but *.toml is read as JSON, as before TOML was accepted:
    // a deployment whose file is called lbd.conf keeps working.
    let conf = lbd.paths.dir.join("lbd.conf");
    std::fs::write(&conf, before.to_string()).unwrap();
    let conf = conf.to_str().unwrap();
    let out = lbd.ctl(&["apply", "-f", conf]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lbd_output(&["--config", conf, "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lbd.json(&["config", "dump"]), before);
}

/// Make a pinned map read-only for every writer from now on
/// (BPF_MAP_FREEZE): lbd's next write to it fails.
fn freeze_pinned_map(path: &std::path::Path) {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_FREEZE: libc::c_long = 22;
    let map = aya::maps::MapData::from_pin(path).expect("pinned map");
    let mut attr = [0u8; 128];
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    attr[..4].copy_from_slice(&fd.to_ne_bytes());
    // SAFETY: a zeroed bpf_attr with map_fd set, of its full size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_FREEZE, attr.as_ptr(), attr.len()) };
    assert_eq!(rc, 0, "BPF_MAP_FREEZE: {}", std::io::Error::last_os_error());
}

/// An apply that fails half-way (here: the global configuration map
/// refuses writes) is rolled back: the VIP serves its old members with its
/// old flags, and the running configuration is unchanged.
#[test]
fn cp_a_failed_apply_restores_members_and_flags_together() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("restore"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    let before = lbd.json(&["config", "dump"]);
    freeze_pinned_map(&lbd.paths.pin_dir.join(lb_common::maps::MAP_CONFIG));

    let mut file = written_config(&lbd);
    file["vips"][0]["backends"] = json!([{"address": B2}, {"address": B3}]);
    file["vips"][0]["affinity"] = json!(true);
    file["mtu"] = json!(1400);
    let path = lbd.paths.dir.join("apply.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let out = lbd.ctl(&["apply", "-f", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the apply must fail");
    assert!(stderr.contains("LB_CONFIG"), "{stderr}");
    assert_eq!(lbd.json(&["config", "dump"]), before);
    assert_serves(&site, &lbd, &[B1, B2], false, 41400..41420);
    assert!(
        !lbd.log().contains("restoring the previous state failed"),
        "{}",
        lbd.log()
    );
}

/// Defect: `lbctl flow` reported a connection entry as holding even when
/// the data plane would find it stale (its backend id since recycled to
/// another VIP's backend) and reschedule the flow. It now answers what the
/// program does, and the next packet agrees.
#[test]
fn cp_flow_reports_a_stale_entry_as_the_data_plane_treats_it() {
    let site = Site::new();
    let mut config = site.config(&[B1, B2], json!({"type": "none"}));
    // Two backend ids: the one B1 frees is the one B3 gets.
    config["tables"]["max_backends"] = 2.into();
    let lbd = Lbd::start(&site.lb, Paths::new("stale"), config);
    site.send_flows(42000..42020);
    wait_for("20 forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 20
    });
    let on_b1 = (42000..42020)
        .find(|p| lbd.json(&["flow", CLIENT, &p.to_string(), VIP, "53", "udp"])["backend"] == B1)
        .expect("a flow pinned to B1");
    let port = on_b1.to_string();

    lbd.json(&["backend", "del", VIP_REF, B1]);
    lbd.json(&["vip", "add", "198.51.100.11:53/udp"]);
    lbd.json(&["backend", "add", "198.51.100.11:53/udp", B3]);
    let flow = lbd.json(&["flow", CLIENT, &port, VIP, "53", "udp"]);
    assert_eq!(flow["backend"], B2, "{flow}");
    let reason = flow["reason"].as_str().unwrap();
    assert!(reason.contains("rescheduled"), "{flow}");
    assert!(flow["stale_entry"].is_string(), "{flow}");

    // The data plane does what lbctl said.
    let b2 = backend_packets(&lbd, B2).unwrap();
    let rescheduled = counter(&lbd, "conn_rescheduled");
    site.send_flows(on_b1..on_b1 + 1);
    wait_for("the packet on B2", Duration::from_secs(5), || {
        backend_packets(&lbd, B2).unwrap() == b2 + 1
    });
    assert_eq!(counter(&lbd, "conn_rescheduled"), rescheduled + 1);
    assert_eq!(backend_packets(&lbd, B3), Some(0));
}

/// A group and two real users, one in it and one not, removed on drop.
struct Accounts {
    group: String,
    member: String,
    outsider: String,
}

impl Accounts {
    fn new() -> Self {
        let id = std::process::id();
        let accounts = Self {
            group: format!("lbtg{id}"),
            member: format!("lbtm{id}"),
            outsider: format!("lbto{id}"),
        };
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        run(&["groupadd", &accounts.group]);
        for (user, groups) in [
            (&accounts.member, accounts.group.as_str()),
            (&accounts.outsider, ""),
        ] {
            let mut args = vec![
                "useradd",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ];
            if !groups.is_empty() {
                args.extend(["--groups", groups]);
            }
            args.push(user);
            run(&args);
        }
        accounts
    }

    /// Run lbctl as `user`, with the groups the user database gives it.
    fn lbctl_as(&self, user: &str, socket: &std::path::Path) -> std::process::Output {
        Command::new("setpriv")
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups")
            .arg(lb_tests::lbd::binary("lbctl"))
            .arg("--socket")
            .arg(socket)
            .arg("status")
            .output()
            .expect("setpriv")
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in [&self.member, &self.outsider] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// With `control.group` the socket is 0660 and owned by that group: a real
/// non-root user in the group gets in, one outside it does not. lbd runs
/// under a umask of 0 here: the socket's mode does not depend on it.
#[test]
fn cp_control_group_lets_its_members_in_and_no_one_else() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let accounts = Accounts::new();
    let site = Site::new();
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["control"] = json!({"group": accounts.group});
    // SAFETY: umask swaps the process's mask; lbd inherits 0 from us.
    let previous = unsafe { libc::umask(0) };
    let lbd = Lbd::start_with(&site.lb, Paths::new("group"), config, &[]);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let meta = std::fs::metadata(&lbd.paths.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let gid = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == accounts.group).then(|| f[2].parse::<u32>().unwrap())
        })
        .unwrap();
    assert_eq!(meta.gid(), gid);
    let _ = std::fs::set_permissions(&lbd.paths.dir, std::fs::Permissions::from_mode(0o755));

    let member = accounts.lbctl_as(&accounts.member, &lbd.paths.socket);
    assert!(member.status.success(), "member refused: {member:?}");
    assert!(
        String::from_utf8_lossy(&member.stdout).contains("lbd"),
        "{member:?}"
    );
    let outsider = accounts.lbctl_as(&accounts.outsider, &lbd.paths.socket);
    assert!(!outsider.status.success(), "outsider let in: {outsider:?}");
    assert!(
        String::from_utf8_lossy(&outsider.stderr).contains("Permission denied"),
        "{outsider:?}"
    );
}

/// The id lbd gave backend `addr`.
fn backend_id(lbd: &Lbd, addr: &str) -> u32 {
    lbd.json(&["backend", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .and_then(|b| b["id"].as_u64())
        .expect("backend listed with an id") as u32
}

/// The row of backend `addr` in `lbctl backend list`.
fn backend_row(lbd: &Lbd, addr: &str) -> Value {
    lbd.json(&["backend", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .cloned()
        .expect("backend listed")
}

/// A backend drained at t with a 6 s timeout is cut at t+6 s (give or
/// take a tick) although lbd was SIGKILLed and restarted in between, and
/// the edits made with lbctl (the drain, a weight) are still there after
/// the restart. A SIGHUP brings back the file's contents.
#[test]
fn cp_drain_deadline_and_lbctl_edits_survive_sigkill_and_restart() {
    use lb_common::maps::BACKEND_F_DOWN;
    let site = Site::new();
    let mut config = site.config(&[B1, B2, B3], json!({"type": "none"}));
    config["vips"][0]["drain_timeout_s"] = json!(6);
    let mut lbd = Lbd::start(&site.lb, Paths::new("resume"), config);
    lbd.json(&["backend", "weight", VIP_REF, B3, "4"]);
    let b1 = backend_id(&lbd, B1);
    let drained = Instant::now();
    lbd.json(&["backend", "drain", VIP_REF, B1]);

    std::thread::sleep(Duration::from_secs(3));
    lbd.kill();
    lbd.restart();
    let row = backend_row(&lbd, B1);
    assert_eq!(row["state"], "drain", "the drain was lost: {row}");
    let left = row["drain_remaining_s"].as_u64().unwrap();
    assert!(left <= 3, "the drain timer started over: {row}");
    assert_eq!(
        backend_row(&lbd, B3)["weight"],
        4,
        "the weight edit was lost"
    );
    assert!(
        lbd.log().contains("resuming the saved runtime state"),
        "{}",
        lbd.log()
    );

    // When the data plane first shows it cut, measured from the drain.
    let down = || pinned_maps(&lbd).backend(b1).unwrap().flags & BACKEND_F_DOWN != 0;
    let at = loop {
        let now = drained.elapsed();
        if down() {
            break now;
        }
        assert!(now < Duration::from_secs(10), "never cut");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        at >= Duration::from_secs(5) && at <= Duration::from_secs(8),
        "cut {at:?} after the drain, not 6 s ± 1 tick"
    );

    // The file is the source of truth: SIGHUP returns to it.
    write_and_sighup(&lbd, &written_config(&lbd));
    wait_for("the file's state back", Duration::from_secs(5), || {
        backend_row(&lbd, B1)["state"] == "active" && backend_row(&lbd, B3)["weight"] == 1
    });
}

/// An operator who edits the file while lbd is down gets the file: the
/// saved edits are not resumed, and lbd says why.
#[test]
fn cp_a_file_edited_while_lbd_was_down_wins_over_saved_edits() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("filewins"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    lbd.json(&["backend", "weight", VIP_REF, B2, "5"]);
    lbd.kill();
    let mut file = written_config(&lbd);
    file["vips"][0]["backends"] =
        json!([{"address": B1}, {"address": B2, "weight": 2}, {"address": B3}]);
    std::fs::write(&lbd.paths.config, file.to_string()).unwrap();
    lbd.restart();
    assert_eq!(backend_row(&lbd, B2)["weight"], 2);
    assert_eq!(backend_row(&lbd, B3)["state"], "active");
    assert!(
        lbd.log().contains("the configuration file changed since"),
        "{}",
        lbd.log()
    );
}

/// Run lbd over `lbd`'s pins with `config` and expect it to refuse with
/// exactly `failure`, leaving every pin as it was (the same maps, the same
/// links to the same programs), while the running program keeps
/// forwarding the flows from `ports`.
fn assert_refused_and_untouched(
    site: &Site,
    lbd: &Lbd,
    config: &Value,
    failure: &str,
    ports: std::ops::Range<u16>,
) {
    let pin_dir = &lbd.paths.pin_dir;
    let before = pins::objects(pin_dir);
    let stats = pin_dir.join(MAP_GLOBAL_STATS);
    let tx_before = pins::count(&stats, Reason::Tx as u32);
    let out = lbd_once(site, lbd, "refused.json", config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("lbd: "))
        .unwrap_or_else(|| panic!("no failure line in:\n{stderr}"));
    assert_eq!(line, failure);
    assert_eq!(pins::objects(pin_dir), before, "a pin changed");
    let sent = ports.len() as u64;
    site.send_flows(ports);
    wait_for(
        "the running program forwarding",
        Duration::from_secs(5),
        || pins::count(&stats, Reason::Tx as u32) >= tx_before + sent,
    );
}

/// A pinned map whose layout is not this lbd's (here a connection table
/// whose entries are 8 bytes longer, as a release with another
/// `ConnEntry` would pin) is refused before anything is loaded, naming the
/// map, the difference and what to do: no pin changes and the running
/// program keeps forwarding. With the original map back, lbd adopts it all.
#[test]
fn cp_a_pinned_map_of_another_layout_is_refused_naming_it_and_nothing_changes() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("layout"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    site.establish_flows(43000..43010);
    wait_for("20 forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 20
    });
    lbd.kill();
    let conns = lbd.paths.pin_dir.join(MAP_CONNS);
    let ours = pins::shape(&conns);
    let original = pins::replace(
        &conns,
        MapShape {
            value_size: ours.value_size + 8,
            ..ours
        },
    );
    let failure = format!(
        "lbd: starting: loading the data plane (pins in {}): pinned map CONNS: value size 24, \
         this lbd needs 16: run the lbd version that pinned them, or `lbd --teardown` first \
         (drops connections)",
        lbd.paths.pin_dir.display()
    );
    assert_refused_and_untouched(&site, &lbd, &written_config(&lbd), &failure, 43010..43020);

    pins::restore(&conns, &original);
    lbd.restart();
    let status = lbd.json(&["status"]);
    assert_eq!(status["adopted_running_data_plane"], true);
    assert!(
        status["connection_entries"].as_u64().unwrap() >= 10,
        "{status}"
    );
}

/// A counter map pinned by an lbd that had fewer reasons (rows are added
/// at the end of the table) grows to this lbd's reasons: the counts it
/// held are kept, and the counters it lacked count from zero.
#[test]
fn cp_a_pinned_counter_map_with_fewer_reasons_grows_and_keeps_its_counts() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("grow"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    lbd.kill();
    let stats = lbd.paths.pin_dir.join(MAP_GLOBAL_STATS);
    let ours = pins::shape(&stats);
    assert_eq!(ours.max_entries, REASON_COUNT);
    // As an lbd from before new_flow and the reasons after it left it.
    let older = Reason::NewFlow as u32;
    let _running = pins::replace(
        &stats,
        MapShape {
            max_entries: older,
            ..ours
        },
    );
    let mut counts = pins::counters(&stats);
    pins::set_count(&mut counts, Reason::Tx as u32, &[1000, 234]);
    pins::set_count(&mut counts, Reason::ConnMiss as u32, &[56]);
    drop(counts);

    lbd.restart();
    let grown = format!("GLOBAL_STATS: grown from {older} to {REASON_COUNT} counters, counts kept");
    assert!(lbd.log().contains(&grown), "{}", lbd.log());
    assert_eq!(pins::shape(&stats).max_entries, REASON_COUNT);
    assert_eq!(counter(&lbd, "tx"), 1234);
    assert_eq!(counter(&lbd, "conn_miss"), 56);
    for missing in &Reason::ALL[older as usize..] {
        assert_eq!(counter(&lbd, missing.name()), 0, "{}", missing.name());
    }
    site.send_flows(43100..43110);
    wait_for("10 more forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 1244
    });
    assert_eq!(counter(&lbd, "conn_miss"), 66);
    assert_eq!(
        counter(&lbd, "new_flow"),
        10,
        "a counter the old map lacked"
    );
}

/// Pins of a newer layout version than this lbd's (a newer lbd pinned
/// them, and this is a downgrade past a layout change) are refused, saying
/// so: nothing changes and forwarding goes on.
#[test]
fn cp_pins_of_a_newer_layout_version_are_refused() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("newer"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    lbd.kill();
    let pin_dir = lbd.paths.pin_dir.clone();
    let version = || layout::read_version(&pin_dir, PinOwner::LBD).unwrap();
    assert_eq!(version(), Some(LAYOUT_VERSION));
    layout::write_version(&pin_dir, LAYOUT_VERSION + 1).unwrap();
    let failure = format!(
        "lbd: starting: loading the data plane (pins in {}): the pinned maps have layout \
         version {}, newer than this lbd's {LAYOUT_VERSION}: they were pinned by a newer lbd \
         (a downgrade past a layout change); run that version or a newer one, or \
         `lbd --teardown` first (drops connections)",
        pin_dir.display(),
        LAYOUT_VERSION + 1
    );
    assert_refused_and_untouched(&site, &lbd, &written_config(&lbd), &failure, 43200..43210);
    assert_eq!(version(), Some(LAYOUT_VERSION + 1));

    layout::write_version(&pin_dir, LAYOUT_VERSION).unwrap();
    lbd.restart();
    assert_eq!(lbd.json(&["status"])["adopted_running_data_plane"], true);
}

/// Pre-release builds of second chance pinned `PREV_OWNERS` with one
/// owner per slot, two slots to an entry, and one expiry per VIP in
/// `PREV_OWNERS_UNTIL` (layout 2). Read as this lbd's per-slot values they
/// would name wrong owners with wrong expiries: they are made anew, empty,
/// saying so, the old expiry map goes, and everything else is adopted.
#[test]
fn cp_pins_of_the_pre_release_previous_owner_layout_are_made_anew() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("prevowners"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    site.establish_flows(43400..43410);
    wait_for("20 forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 20
    });
    lbd.kill();
    let pin_dir = lbd.paths.pin_dir.clone();
    let prev_owners = pin_dir.join(MAP_PREV_OWNERS);
    let ours = pins::shape(&prev_owners);
    let _running = pins::replace(
        &prev_owners,
        MapShape {
            max_entries: ours.max_entries.div_ceil(2),
            ..ours
        },
    );
    let until = pin_dir.join(layout::LAYOUT_2_PREV_OWNERS_UNTIL);
    pins::create(
        &until,
        MapShape {
            map_type: ours.map_type,
            key_size: 4,
            value_size: 8,
            flags: 0,
            max_entries: 64,
        },
    );
    layout::write_version(&pin_dir, 2).unwrap();

    lbd.restart();
    let made_anew = "PREV_OWNERS: a pre-release layout (one expiry per VIP), made anew with an \
                     expiry per slot; the previous owners it held are forgotten";
    assert!(lbd.log().contains(made_anew), "{}", lbd.log());
    assert_eq!(pins::shape(&prev_owners), ours);
    assert!(!until.exists(), "PREV_OWNERS_UNTIL left pinned");
    assert_eq!(
        layout::read_version(&pin_dir, PinOwner::LBD).unwrap(),
        Some(LAYOUT_VERSION)
    );
    let status = lbd.json(&["status"]);
    assert_eq!(status["adopted_running_data_plane"], true);
    assert!(
        status["connection_entries"].as_u64().unwrap() >= 10,
        "{status}"
    );
}

/// v0.1.0 pinned no layout version: such pins are the first layout, are
/// adopted with their connections, and get this lbd's version.
#[test]
fn cp_pins_without_a_layout_version_are_adopted_as_the_first_layout() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("unversioned"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    site.establish_flows(43300..43310);
    wait_for("20 forwarded packets", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 20
    });
    lbd.kill();
    let pin_dir = lbd.paths.pin_dir.clone();
    std::fs::remove_file(pin_dir.join(MAP_LAYOUT_VERSION)).unwrap();
    lbd.restart();
    let status = lbd.json(&["status"]);
    assert_eq!(status["adopted_running_data_plane"], true);
    assert!(
        status["connection_entries"].as_u64().unwrap() >= 10,
        "{status}"
    );
    assert_eq!(
        layout::read_version(&pin_dir, PinOwner::LBD).unwrap(),
        Some(LAYOUT_VERSION)
    );
}

/// An `l2_dsr` backend must be on a link of the LB: lbd asks the kernel's
/// routes. One behind a router is refused at start, on SIGHUP, by
/// `lbctl apply` and by `lbctl backend add`, naming the backend, and the
/// running state stays as it was. A backend given with its `mac` is the
/// operator's word that it is on the link.
#[test]
fn cp_l2_dsr_backend_behind_a_router_is_refused_and_changes_nothing() {
    const ON_LINK: &str = "192.0.2.50";
    const OFF_LINK: &str = "198.51.100.150";
    let site = Site::new();
    site.lb
        .exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "lb0"]);
    site.lb.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.128/25",
        "via",
        "192.0.2.1",
        "dev",
        "lb0",
    ]);
    let mut config = site.config(&[ON_LINK], json!({"type": "none"}));
    config["next_hop"]["fib"] = json!(true);
    config["vips"][0]["forwarding"] = json!("l2_dsr");
    let mut lbd = Lbd::start(&site.lb, Paths::new("offlink"), config);
    let running = lbd.json(&["config", "dump"]);
    let message = format!(
        "vips[0].backends[1].address: {OFF_LINK} is not on a link of this host's interfaces (the kernel routes it via 192.0.2.1 dev lb0): an l2_dsr backend must be"
    );
    let mut bad = written_config(&lbd);
    bad["vips"][0]["backends"] = json!([{"address": ON_LINK}, {"address": OFF_LINK}]);

    write_and_sighup(&lbd, &bad);
    wait_for("rejection logged", Duration::from_secs(5), || {
        lbd.log().contains("reload rejected")
    });
    assert!(lbd.log().contains(&message), "{}", lbd.log());
    assert_eq!(lbd.json(&["config", "dump"]), running);

    let path = lbd.paths.dir.join("off-link.json");
    std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
    for args in [
        vec!["apply", "-f", path.to_str().unwrap()],
        vec!["backend", "add", VIP_REF, OFF_LINK],
    ] {
        let out = lbd.ctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {args:?}");
        assert!(err.contains(&message), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one-line reason: {err:?}");
        assert_eq!(lbd.json(&["config", "dump"]), running, "{args:?}");
    }

    // With its MAC the same address is taken as on-link.
    lbd.json(&[
        "backend",
        "add",
        VIP_REF,
        OFF_LINK,
        "--mac",
        "02:00:5e:00:53:50",
    ]);
    let backends = |maps: &lb_userspace::maps::Maps| -> Vec<String> {
        maps.backends()
            .unwrap()
            .into_iter()
            .map(|(_, b)| {
                lb_userspace::addr::from_map(&b.addr, b.family)
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let before = backends(&pinned_maps(&lbd));
    assert_eq!(before, [ON_LINK, OFF_LINK]);

    // A start with the MAC-less backend fails before writing anything.
    lbd.kill();
    let out = lbd_once(&site, &lbd, "off-link-start.json", &bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("starting: {message}")), "{stderr}");
    assert_eq!(backends(&pinned_maps(&lbd)), before);
}

/// The `interfaces[0]` row of `lbctl status`.
fn first_interface(lbd: &Lbd) -> Value {
    lbd.json(&["status"])["interfaces"][0].clone()
}

/// An interface deleted and created again under its name has a new index
/// and no program (the kernel detached the link with the old interface).
/// A running lbd notices through link events: status says the interface
/// is gone, then within 2 s of its return the program is attached again in
/// the configured mode and the data plane uses the new index and MAC (here
/// lb0 is also the configured egress, so a stale index would drop every
/// packet instead of sending it).
#[test]
fn cp_an_interface_deleted_and_created_again_is_attached_again_and_forwards() {
    let site = Site::new();
    let mut config = site.config(&[B1, B2], json!({"type": "none"}));
    config["next_hop"]["egress_interface"] = json!("lb0");
    let lbd = Lbd::start_with(
        &site.lb,
        Paths::new("recreate"),
        config,
        &["--metrics", "127.0.0.1:9464"],
    );
    site.send_flows(45000..45005);
    wait_for("forwarding", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 5
    });
    let old_index = site.lb.ifindex("lb0");

    site.delete_link();
    wait_for("status saying lb0 is gone", Duration::from_secs(2), || {
        first_interface(&lbd)["state"] == "gone"
    });
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("interface lb0: GONE"), "{text}");

    site.create_link();
    let new_index = site.lb.ifindex("lb0");
    assert_ne!(new_index, old_index, "the kernel reused the index");
    wait_for("lb0 attached again", Duration::from_secs(2), || {
        let lb0 = first_interface(&lbd);
        lb0["state"] == "attached" && lb0["ifindex"] == new_index && lb0["reattached"] == 1
    });
    assert_eq!(first_interface(&lbd)["mode"], "native");
    let link = site.lb.exec(&["ip", "-details", "link", "show", "lb0"]);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );
    let live = pinned_maps(&lbd).config().unwrap();
    assert_eq!(live.egress_ifindex, new_index);
    assert_eq!(live.egress_mac, site.lb.mac("lb0"));

    site.send_flows(45005..45015);
    wait_for(
        "forwarding on the re-created lb0",
        Duration::from_secs(2),
        || counter(&lbd, "tx") >= 15,
    );
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("interface lb0: XDP native mode, re-attached 1 time(s)"),
        "{text}"
    );
    wait_for(
        "the re-attach in the metrics",
        Duration::from_secs(3),
        || {
            let text = scrape(&site);
            text.contains("lb_reattach_total{interface=\"lb0\"} 1")
                && text.contains("lb_attached{interface=\"lb0\",mode=\"native\"} 1")
        },
    );
}

/// lbd down while the interface is deleted and created again: the pinned
/// link it finds is attached to nothing. The restarted lbd replaces it
/// with a new attachment (it cannot be updated) and forwards, keeping the
/// connection table.
#[test]
fn cp_restart_after_the_interface_was_created_again_attaches_anew() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("recreate-down"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    site.send_flows(46000..46005);
    wait_for("forwarding", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 5
    });
    lbd.kill();
    site.delete_link();
    site.create_link();

    lbd.restart();
    let status = lbd.json(&["status"]);
    let lb0 = &status["interfaces"][0];
    assert_eq!(lb0["state"], "attached", "{status}");
    assert_eq!(lb0["ifindex"], site.lb.ifindex("lb0"), "{status}");
    assert_eq!(lb0["mode"], "native", "{status}");
    assert_eq!(lb0["replaced_existing_program"], false, "{status}");
    assert_eq!(status["adopted_running_data_plane"], true, "{status}");
    assert!(
        lbd.log().contains("replaced_dead_link=true"),
        "{}",
        lbd.log()
    );
    site.send_flows(46005..46015);
    wait_for(
        "forwarding after the restart",
        Duration::from_secs(5),
        || counter(&lbd, "tx") >= 15,
    );
}

/// A link whose driver has no native XDP (a bridge) runs the program in
/// generic mode, and says so; after a restart lbd adopts the pinned link
/// and still says generic (it asks the kernel over netlink which mode the
/// link runs in, not iproute2).
#[test]
fn cp_a_generic_mode_link_is_reported_generic_before_and_after_a_restart() {
    let site = Site::new();
    site.lb
        .exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    site.lb.exec(&["ip", "link", "set", "br0", "up"]);
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["interfaces"] = json!([{"name": "br0"}]);
    let mut lbd = Lbd::start(&site.lb, Paths::new("generic"), config);
    let mode = |lbd: &Lbd| {
        let status = lbd.json(&["status"]);
        (
            status["interfaces"][0]["mode"].clone(),
            status["adopted_running_data_plane"].clone(),
        )
    };
    assert_eq!(mode(&lbd), (json!("generic"), json!(false)));
    let link = site.lb.exec(&["ip", "-details", "link", "show", "br0"]);
    assert!(link.contains("xdpgeneric"), "{link}");

    lbd.restart();
    assert_eq!(mode(&lbd), (json!("generic"), json!(true)));
}

/// One lbd per pin directory: a second lbd over the same pins exits at
/// once, naming the directory and the running lbd's PID, and writes
/// nothing (the first keeps its tables, its socket and its traffic).
/// `lbd --teardown` is refused while lbd runs.
#[test]
fn cp_a_second_lbd_on_the_same_pins_is_refused_and_so_is_teardown() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("twice"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    site.send_flows(47000..47010);
    wait_for("forwarding", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 10
    });
    let backends = |lbd: &Lbd| {
        let mut list: Vec<String> = pinned_maps(lbd)
            .backends()
            .unwrap()
            .into_iter()
            .filter(|(_, b)| b.flags != 0)
            .map(|(_, b)| {
                lb_userspace::addr::from_map(&b.addr, b.family)
                    .unwrap()
                    .to_string()
            })
            .collect();
        list.sort();
        list
    };
    assert_eq!(backends(&lbd), [B1, B2]);

    // Same pins, its own control socket, other backends.
    let mut second = written_config(&lbd);
    second["control"]["socket"] = json!(lbd.paths.dir.join("second.sock"));
    second["vips"][0]["backends"] = json!([{"address": B3}]);
    let out = lbd_once(&site, &lbd, "second.json", &second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let pid = lbd.pid().unwrap();
    let held = format!(
        "pin directory {} is in use by lbd (pid {pid})",
        lbd.paths.pin_dir.display()
    );
    assert!(stderr.contains(&held), "{stderr}");
    assert!(!lbd.paths.dir.join("second.sock").exists());
    assert_eq!(backends(&lbd), [B1, B2], "the second lbd wrote the maps");
    assert_eq!(lbd.json(&["backend", "list"]).as_array().unwrap().len(), 2);

    let out = lbd_output(&["--config", lbd.paths.config.to_str().unwrap(), "--teardown"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&held) && stderr.contains("stop lbd first"),
        "{stderr}"
    );
    assert!(
        lb_userspace::datapath::link_pin_path(&lbd.paths.pin_dir, "lb0").exists(),
        "teardown unpinned"
    );
    site.send_flows(47010..47020);
    wait_for("forwarding goes on", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= 20
    });
}

/// An interface taken out of `interfaces` keeps its pinned link. At the
/// next start lbd swaps its program into that link too, so that no older
/// program runs on the shared maps, and says so in its log and in `lbctl
/// status`, with how to detach it.
#[test]
fn cp_restart_swaps_the_program_into_an_interface_no_longer_configured_and_warns() {
    let site = Site::new();
    lb_veth_pair(&site, "ex0", "ex1");
    let mut config = site.config(&[B1], json!({"type": "none"}));
    config["interfaces"] = json!([{"name": "lb0"}, {"name": "ex0"}]);
    let mut lbd = Lbd::start(&site.lb, Paths::new("unconf"), config);
    let first = site.lb.xdp_program_id("ex0").expect("lb on ex0");
    assert_eq!(site.lb.xdp_program_id("lb0"), Some(first));

    let mut config = written_config(&lbd);
    config["interfaces"] = json!([{"name": "lb0"}]);
    lbd.kill();
    std::fs::write(&lbd.paths.config, serde_json::to_vec(&config).unwrap()).unwrap();
    lbd.restart();
    let now = site.lb.xdp_program_id("lb0").expect("lb on lb0");
    assert_ne!(now, first, "the new lbd runs the program it loaded");
    assert_eq!(site.lb.xdp_program_id("ex0"), Some(now), "ex0 runs it too");
    let link = lbd.paths.pin_dir.join("link_ex0");
    let warning = format!(
        "ex0 is not in interfaces but still attached (it runs this lbd's program on the shared \
         maps); remove {} to detach",
        link.display()
    );
    assert_eq!(
        lbd.json(&["status"])["unconfigured_links"],
        json!([{
            "name": "ex0",
            "state": "attached",
            "ifindex": site.lb.ifindex("ex0"),
            "program_id": now,
            "updated_at_start": true,
            "error": null,
            "warning": warning,
        }])
    );
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains(&format!("warning: {warning}")), "{text}");
    assert!(lbd.log().contains(&warning), "{}", lbd.log());

    // As the warning says: removing the pin detaches it.
    std::fs::remove_file(&link).unwrap();
    assert_eq!(site.lb.xdp_program_id("ex0"), None);
    assert_eq!(site.lb.xdp_program_id("lb0"), Some(now));
}

/// The `lb_common::maps` flags of backend `addr` in the pinned BACKENDS map.
fn pinned_backend_flags(lbd: &Lbd, addr: &str) -> u8 {
    let id = backend_id(lbd, addr);
    pinned_maps(lbd).backend(id).unwrap().flags
}

/// Defect: while an interface of `interfaces` was gone, every re-apply
/// (health change, drain expiry) re-inserted its old index into TX_PORTS,
/// which the kernel refuses (EINVAL): the write failed and was rolled back,
/// so a backend lbctl showed down kept getting traffic, and lbctl edits
/// failed on the missing interface. Now a health change and an edit reach
/// the data plane while out0 is gone, and out0 is attached again when it
/// returns.
#[test]
fn cp_health_changes_and_edits_reach_the_data_plane_while_an_interface_is_gone() {
    use lb_common::maps::{BACKEND_F_DOWN, BACKEND_F_DRAINING};
    let site = Site::new();
    lb_veth_pair(&site, "out0", "out1");
    let check = json!({"type": "tcp", "port": 8053, "interval_ms": 100, "timeout_ms": 50, "rise": 2, "fall": 3, "through_tunnel": false});
    let mut listeners: Vec<TcpListener> = site.lb.enter(|| {
        [B1, B2]
            .iter()
            .map(|b| TcpListener::bind((*b, 8053)).expect("listen"))
            .collect()
    });
    let mut config = site.config(&[B1, B2], check);
    config["interfaces"] = json!([{"name": "lb0"}, {"name": "out0"}]);
    let lbd = Lbd::start(&site.lb, Paths::new("gone"), config);
    let health = |addr: &str| backend_row(&lbd, addr)["health"].clone();
    wait_for("both backends up", Duration::from_secs(5), || {
        health(B1) == "up" && health(B2) == "up"
    });
    let out0 = |lbd: &Lbd| lbd.json(&["status"])["interfaces"][1].clone();
    let old_index = site.lb.ifindex("out0");
    let ports = |lbd: &Lbd| -> Vec<u32> {
        pinned_maps(lbd)
            .tx_ports()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    };
    assert!(ports(&lbd).contains(&old_index));

    site.lb.exec(&["ip", "link", "del", "out0"]);
    wait_for("status saying out0 is gone", Duration::from_secs(2), || {
        out0(&lbd)["state"] == "gone"
    });

    // A health change reaches the data plane.
    drop(listeners.remove(0));
    wait_for("B1 down in lbctl", Duration::from_secs(5), || {
        health(B1) == "down"
    });
    wait_for("B1 down in BACKENDS", Duration::from_secs(2), || {
        pinned_backend_flags(&lbd, B1) & BACKEND_F_DOWN != 0
    });
    assert_eq!(lbd.json(&["vip", "list"])[0]["in_table"], 1);

    // So does an lbctl edit.
    lbd.json(&["backend", "drain", VIP_REF, B2]);
    assert_ne!(pinned_backend_flags(&lbd, B2) & BACKEND_F_DRAINING, 0);
    assert_eq!(lbd.json(&["vip", "list"])[0]["in_table"], 0);
    lbd.json(&["backend", "undrain", VIP_REF, B2]);
    assert_eq!(pinned_backend_flags(&lbd, B2) & BACKEND_F_DRAINING, 0);
    assert!(
        !lbd.log().contains("Invalid argument") && !lbd.log().contains("restoring"),
        "{}",
        lbd.log()
    );

    // out0 comes back: attached again, its new index open for redirects.
    lb_veth_pair(&site, "out0", "out1");
    let new_index = site.lb.ifindex("out0");
    assert_ne!(new_index, old_index, "the kernel reused the index");
    wait_for("out0 attached again", Duration::from_secs(2), || {
        let s = out0(&lbd);
        s["state"] == "attached" && s["ifindex"] == new_index && s["reattached"] == 1
    });
    let open = ports(&lbd);
    assert!(
        open.contains(&new_index) && !open.contains(&old_index),
        "{open:?}"
    );
    drop(listeners);
}

/// Defect: the rollback of a failed apply rewrote every VIP from scratch,
/// republishing every ring (and a re-apply failing once a second did so
/// each second). It now writes back only what the failed apply may have
/// written: a VIP the change did not touch keeps the ring it serves from.
#[test]
fn cp_a_failed_apply_rewrites_only_the_vips_it_changed() {
    use lb_userspace::{config::Protocol, image::vip_key};
    let site = Site::new();
    let mut config = site.config(&[B1, B2], json!({"type": "none"}));
    config["vips"].as_array_mut().unwrap().push(
        json!({"address": VIP, "port": 80, "protocol": "tcp", "backends": [{"address": B3}]}),
    );
    let lbd = Lbd::start(&site.lb, Paths::new("restore-diff"), config);
    let web = vip_key(VIP.parse().unwrap(), 80, Protocol::Tcp).into();
    let active_ring = || {
        pinned_maps(&lbd)
            .vip(&web)
            .unwrap()
            .expect("VIP :80 in the data plane")
            .active_ring
    };
    let before = active_ring();
    freeze_pinned_map(&lbd.paths.pin_dir.join(lb_common::maps::MAP_CONFIG));

    let mut file = written_config(&lbd);
    file["vips"][0]["backends"] = json!([{"address": B2}, {"address": B3}]);
    file["mtu"] = json!(1400);
    let path = lbd.paths.dir.join("apply.json");
    std::fs::write(&path, file.to_string()).unwrap();
    assert!(
        !lbd.ctl(&["apply", "-f", path.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        lbd.log().contains("previous state restored"),
        "{}",
        lbd.log()
    );
    assert_eq!(
        active_ring(),
        before,
        "the untouched VIP's ring was republished"
    );
    assert_serves(&site, &lbd, &[B1, B2], false, 41500..41520);
}

/// Defect: the runtime state held the running configuration with
/// `--tunnel-source-v4` applied, so a restart without the flag silently
/// kept the old address. Now the file's address comes back, in the
/// running configuration and in the data plane, and lbctl's edits stay.
#[test]
fn cp_a_restart_without_the_tunnel_source_flag_takes_the_files_and_keeps_edits() {
    const NODE: &str = "198.51.100.3";
    const FILE: &str = "198.51.100.2";
    let site = Site::new();
    let config = site.config(&[B1, B2], json!({"type": "none"}));
    assert_eq!(config["tunnel_source"]["ipv4"], FILE);
    let mut lbd = Lbd::start_with(
        &site.lb,
        Paths::new("node-dropped"),
        config,
        &["--tunnel-source-v4", NODE],
    );
    lbd.json(&["backend", "weight", VIP_REF, B2, "3"]);
    let outer_source = |lbd: &Lbd| {
        let source: std::net::Ipv4Addr = pinned_maps(lbd).config().unwrap().outer_src_v4.into();
        (
            lbd.json(&["config", "dump"])["tunnel_source"]["ipv4"].clone(),
            source.to_string(),
        )
    };
    assert_eq!(outer_source(&lbd), (json!(NODE), NODE.to_string()));

    lbd.kill();
    lbd.restart_with(&[]);
    assert!(
        lbd.log().contains("resuming the saved runtime state"),
        "{}",
        lbd.log()
    );
    assert_eq!(outer_source(&lbd), (json!(FILE), FILE.to_string()));
    assert_eq!(backend_row(&lbd, B2)["weight"], 3, "the edit was lost");

    // Given again, the flag wins again.
    lbd.restart_with(&["--tunnel-source-v4", NODE]);
    assert_eq!(outer_source(&lbd), (json!(NODE), NODE.to_string()));
    assert_eq!(backend_row(&lbd, B2)["weight"], 3, "the edit was lost");
}

/// Defect: the state file was resumed over any pins in its pin directory.
/// With `state_file` on persistent storage, a start after a reboot that
/// made the pins anew and then failed before saving its own state left the
/// old file behind, and the next start resumed edits from before the
/// reboot. The state now names the data plane it was written for; here the
/// pins are made anew (a teardown and a start) and the old file is put
/// back: it is not used, and lbd says why.
#[test]
fn cp_a_state_file_written_for_other_pins_is_not_resumed() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("otherpins"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    lbd.json(&["backend", "weight", VIP_REF, B2, "5"]);
    lbd.kill();
    let state_file = lbd.paths.dir.join("state.json");
    let old_state = std::fs::read(&state_file).expect("state saved");
    let out = lbd_output(&["--config", lbd.paths.config.to_str().unwrap(), "--teardown"]);
    assert!(out.status.success(), "{out:?}");

    lbd.restart();
    lbd.kill();
    std::fs::write(&state_file, &old_state).unwrap();
    lbd.restart();
    assert_eq!(
        backend_row(&lbd, B2)["weight"],
        1,
        "edits of another data plane resumed"
    );
    let log = lbd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("saved runtime state not used")
                && l.contains("it was written for another data plane (CONNS map id")),
        "{log}"
    );
}

/// The VIP's live ring on `lbd`'s node, slot by slot, as the backend
/// addresses the slots name (ids are each node's own).
fn ring_as_addresses(lbd: &Lbd) -> (Vec<u32>, Vec<Option<std::net::IpAddr>>) {
    let (maps, meta) = pinned_vip(lbd, VIP, 53, lb_userspace::config::Protocol::Udp);
    let ids = maps.live_ring(&meta).unwrap();
    let addresses = lb_userspace::ring_digest::addresses(&ids, |id| {
        let b = maps.backend(id).ok()?;
        lb_userspace::addr::from_map(&b.addr, b.family)
    });
    (ids, addresses)
}

/// Three nodes with the same backends, met in other orders and after other
/// histories of adds, removes and weight changes, hold the same ring (each
/// slot naming the same backend address, whatever ids each node gave them),
/// show the same digest, and `lbctl cluster check` says so; a weight that
/// differs on one node is caught and named.
#[test]
fn cp_nodes_with_the_same_backends_have_identical_rings_whatever_their_history() {
    let sites = [Site::new(), Site::new(), Site::new()];
    let b4 = "198.51.100.104";
    let check = json!({"type": "none"});
    let a = Lbd::start(
        &sites[0].lb,
        Paths::new("nodea"),
        sites[0].config(&[B1, B2, B3], check.clone()),
    );
    let b = Lbd::start(
        &sites[1].lb,
        Paths::new("nodeb"),
        sites[1].config(&[B3, B2, B1], check.clone()),
    );
    let c = Lbd::start(
        &sites[2].lb,
        Paths::new("nodec"),
        sites[2].config(&[b4, B1], check),
    );
    // Node c's history: B2 at weight 5, B3, B2 back to 1, b4 removed.
    c.json(&["backend", "add", VIP_REF, B2, "--weight", "5"]);
    c.json(&["backend", "add", VIP_REF, B3]);
    c.json(&["backend", "weight", VIP_REF, B2, "1"]);
    c.json(&["backend", "del", VIP_REF, b4]);

    let rings: Vec<_> = [&a, &b, &c].iter().map(|n| ring_as_addresses(n)).collect();
    assert_eq!(rings[0].1, rings[1].1, "nodes a and b name other backends");
    assert_eq!(rings[0].1, rings[2].1, "nodes a and c name other backends");
    assert!(
        rings[0].1.iter().all(Option::is_some),
        "every slot has a backend"
    );
    assert_ne!(
        rings[0].0, rings[2].0,
        "node c's ids differ (b4 had one), so its RINGS bytes do"
    );
    let digests: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|n| n.json(&["vip", "list"])[0]["ring_digest"].clone())
        .collect();
    assert!(digests[0].is_string(), "{digests:?}");
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    assert_eq!(a.json(&["status"])["ring_digests"][VIP_REF], digests[0]);

    // One node's `vip list` saved to a file serves as a source too.
    let saved = a.paths.dir.join("node-a-vips.json");
    std::fs::write(&saved, a.json(&["vip", "list"]).to_string()).unwrap();
    let sources = [
        saved.to_str().unwrap(),
        b.paths.socket.to_str().unwrap(),
        c.paths.socket.to_str().unwrap(),
    ];
    let mut args = vec!["cluster", "check"];
    args.extend(sources);
    let agree = a.ctl(&args);
    assert!(
        agree.status.success(),
        "{}",
        String::from_utf8_lossy(&agree.stderr)
    );
    assert!(String::from_utf8_lossy(&agree.stdout).contains("same"));

    c.json(&["backend", "weight", VIP_REF, B3, "2"]);
    assert_ne!(ring_as_addresses(&c).1, rings[0].1);
    let differ = a.ctl(&args);
    let stderr = String::from_utf8_lossy(&differ.stderr);
    assert!(
        !differ.status.success(),
        "a differing ring must fail the check"
    );
    assert!(
        stderr.contains("1 VIP(s) have different rings") && stderr.contains(VIP_REF),
        "{stderr}"
    );
}

/// Started as systemd starts it (`Type=notify`, `WatchdogSec=`), lbd says
/// READY=1 only once it answers on its control socket, with a status line;
/// pets the watchdog at half its period from its loop; says RELOADING=1
/// then READY=1 around a SIGHUP, and STOPPING=1 on exit.
#[test]
fn cp_lbd_tells_systemd_when_it_is_ready_and_pets_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let site = Site::new();
    let paths = Paths::new("cpnotify");
    let notify_path = paths.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notify_env = notify_path.display().to_string();
    // WatchdogSec=1: petted every 500 ms.
    let mut lbd = Lbd::start_with_env(
        &site.lb,
        paths,
        site.config(&[B1, B2], json!({"type": "none"})),
        &[],
        &[("NOTIFY_SOCKET", &notify_env), ("WATCHDOG_USEC", "1000000")],
    );
    let next = || {
        let mut buf = [0u8; 4096];
        // A signal to the test process (a child of another test exiting)
        // may interrupt the wait: wait again.
        let n = loop {
            match notify.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.expect("a notification within 10 s"),
            }
        };
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Lbd::start returned once lbd answered; READY=1 was the first message.
    let first = next();
    assert!(
        first.starts_with("READY=1\n")
            && first.contains("STATUS=forwarding: 1 VIPs, 2 backends in service"),
        "{first:?}"
    );
    // The watchdog keeps being petted (each `next` waits 10 s at most).
    let pets = (0..4).map(|_| next()).collect::<Vec<_>>();
    assert!(pets.iter().all(|m| m == "WATCHDOG=1\n"), "{pets:?}");

    let pid = lbd.pid().expect("lbd's pid");
    // SAFETY: kill(2) has no memory effects; `pid` is our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        let m = next();
        if m != "WATCHDOG=1\n" {
            seen.push(m);
        }
    }
    assert_eq!(seen[0], "RELOADING=1\n", "{seen:?}");
    assert!(seen[1].contains("STATUS=forwarding"), "{seen:?}");

    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut last = next();
    while last == "WATCHDOG=1\n" {
        last = next();
    }
    assert!(last.starts_with("STOPPING=1\n"), "{last:?}");
    lbd.kill();
}

/// `lbctl conn list` shows the flows the data plane holds, each on the
/// backend `lbctl flow` names for it, and its filters and limit work.
#[test]
fn cp_conn_list_shows_each_flow_on_its_backend_with_filters() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("cpconns"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    site.establish_flows(47000..47020);
    site.send_flows(47100..47105);
    let all = lbd.json(&["conn", "list"]);
    let rows = all["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 20, "{all}");
    assert_eq!(all["more"], false);
    let mut on_b1 = 0;
    for row in &rows {
        assert_eq!(row["protocol"], "udp");
        assert_eq!(row["vip"], VIP_REF);
        assert_eq!(row["table"], "connection");
        assert_eq!(row["stale"], Value::Null, "{row}");
        let client = row["client"].as_str().unwrap();
        let port = client.rsplit(':').next().unwrap();
        let flow = lbd.json(&["flow", CLIENT, port, VIP, "53", "udp"]);
        assert_eq!(row["backend"], flow["backend"], "{row} vs {flow}");
        on_b1 += (row["backend"] == B1) as usize;
    }
    assert!(on_b1 > 0 && on_b1 < 20, "20 flows on one backend: {all}");
    let b1 = lbd.json(&["conn", "list", "--backend", B1]);
    assert_eq!(b1["rows"].as_array().unwrap().len(), on_b1);
    let with_probation = lbd.json(&["conn", "list", "--probation"]);
    let probation: Vec<_> = with_probation["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table"] == "probation")
        .collect();
    assert_eq!(probation.len(), 5, "{with_probation}");
    let mine = lbd.json(&[
        "conn",
        "list",
        "--client",
        "203.0.113.0/24",
        "--vip",
        VIP_REF,
    ]);
    assert_eq!(mine["rows"].as_array().unwrap().len(), 20);
    let others = lbd.json(&["conn", "list", "--client", "192.0.2.0/24"]);
    assert_eq!(others["rows"], json!([]));
    let three = lbd.json(&["conn", "list", "--limit", "3"]);
    assert_eq!(three["rows"].as_array().unwrap().len(), 3);
    assert_eq!(three["more"], true);
    let text =
        String::from_utf8_lossy(&lbd.ctl(&["conn", "list", "--limit", "3"]).stdout).into_owned();
    assert!(
        text.starts_with("PROTO") && text.contains("more flows match: raise --limit"),
        "{text}"
    );
    let out = lbd.ctl(&["conn", "list", "--client", "not-a-prefix"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a prefix"));
}

/// `lbctl backend drain --wait` drains, then counts the backend's pinned
/// flows once a second: with flows still running it gives up at the
/// deadline (exit status 2); when the drain timeout cuts them it says so
/// and exits 0.
#[test]
fn cp_backend_drain_wait_counts_pinned_flows_until_none_or_the_deadline() {
    let site = Site::new();
    let mut config = site.config(&[B1, B2], json!({"type": "none"}));
    config["vips"][0]["drain_timeout_s"] = json!(4);
    let lbd = Lbd::start(&site.lb, Paths::new("cpdrainwait"), config);
    site.establish_flows(48000..48030);
    let on_b1 = lbd.json(&["conn", "list", "--backend", B1])["pinned"]
        .as_u64()
        .unwrap();
    assert!(on_b1 > 0, "no flow on {B1}");

    let out = lbd.ctl(&["backend", "drain", VIP_REF, B1, "--wait", "--deadline", "1"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("{on_b1} flows pinned"))
            && text.contains(&format!("{on_b1} flows still pinned to {B1}")),
        "{text}"
    );
    // The flows go on; the 4 s drain timeout cuts them, and the wait
    // (by default the drain time left) sees them go.
    let out = lbd.ctl(&["backend", "drain", VIP_REF, B1, "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("the drain timeout cut the last {on_b1}")),
        "{text}"
    );
    assert_eq!(lbd.json(&["conn", "list", "--backend", B1])["pinned"], 0);
}

/// `lbctl backend drain --wait` on a stateless VIP: the LB has no flows
/// to count (counting them would say 0 at once while the backend's
/// streams go on as second hops), so it says so and follows the drain's
/// time left: exit status 2 at an earlier deadline, 0 once the drain
/// timeout is over.
#[test]
fn cp_backend_drain_wait_on_a_stateless_vip_follows_the_drain_time() {
    let site = Site::new();
    let mut config = tcp_second_chance_config(&site, true);
    config["vips"][0]["drain_timeout_s"] = json!(3);
    let lbd = Lbd::start(&site.lb, Paths::new("cpdrainsl"), config);
    let vip_ref = format!("{VIP}:80/tcp");

    let out = lbd.ctl(&[
        "backend",
        "drain",
        &vip_ref,
        B1,
        "--wait",
        "--deadline",
        "1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("is stateless: the LB keeps no flows to count"),
        "{text}"
    );
    assert!(text.contains(&format!("{B1} is still draining")), "{text}");
    assert!(!text.contains("flows pinned"), "{text}");

    // What an lbctl from before stateless VIPs counts for --wait (its
    // flows in the tables, always 0 here) is refused, saying why.
    let out = lbd.ctl(&["conn", "list", "--vip", &vip_ref, "--backend", B1]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is stateless: the LB keeps no flows for it to count per backend"),
        "{out:?}"
    );

    let out = lbd.ctl(&["--json", "backend", "drain", &vip_ref, B1, "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["drain_remaining_s"], 0, "{text}");

    // Undrained while waiting: not a success.
    let out = std::thread::scope(|s| {
        let waiting = s.spawn(|| lbd.ctl(&["backend", "drain", &vip_ref, B2, "--wait"]));
        wait_for("B2 draining", Duration::from_secs(5), || {
            lbd.json(&["backend", "list", &vip_ref])
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["address"] == B2 && r["drain_remaining_s"].is_u64())
        });
        std::thread::sleep(Duration::from_millis(1200));
        lbd.json(&["backend", "undrain", &vip_ref, B2]);
        waiting.join().unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{B2} is no longer draining")),
        "{text}"
    );
}

/// The live configuration in pin directory `pin_dir`.
fn live_config(pin_dir: &std::path::Path) -> lb_common::maps::LbConfig {
    use aya::maps::{Array, Map, MapData};
    use lb_common::maps::{LbConfig, MAP_CONFIG, MAP_CONFIG_ACTIVE};
    let active = MapData::from_pin(pin_dir.join(MAP_CONFIG_ACTIVE)).expect("CONFIG_ACTIVE");
    let active: Array<MapData, u32> = Array::try_from(Map::Array(active)).unwrap();
    let slot = active.get(&0, 0).unwrap() & 1;
    let config = MapData::from_pin(pin_dir.join(MAP_CONFIG)).expect("LB_CONFIG");
    let config: Array<MapData, LbConfig> = Array::try_from(Map::Array(config)).unwrap();
    config.get(&slot, 0).unwrap()
}

/// The program reads the lookup caches only while an lbd that keeps them
/// true runs: lbd switches them on when it has rebuilt them, off as it
/// exits cleanly (the lbd started next may be an older one, which would
/// not keep them), and on again when it starts over the same pins.
#[test]
fn cp_lbd_switches_the_lookup_caches_off_as_it_exits_and_on_as_it_starts() {
    use lb_common::maps::CFG_LOOKUP_CACHES;
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("caches"),
        site.config(&[B1, B2], json!({"type": "none"})),
    );
    let pin_dir = lbd.paths.pin_dir.clone();
    assert_eq!(
        live_config(&pin_dir).flags & CFG_LOOKUP_CACHES,
        CFG_LOOKUP_CACHES
    );
    lbd.terminate();
    let after_exit = live_config(&pin_dir);
    assert_eq!(after_exit.flags & CFG_LOOKUP_CACHES, 0, "off after exit");
    assert_ne!(after_exit.ring_size, 0, "the program keeps forwarding");
    lbd.restart();
    assert_eq!(
        live_config(&pin_dir).flags & CFG_LOOKUP_CACHES,
        CFG_LOOKUP_CACHES,
        "on again"
    );
}

/// `lbctl apply` of `bad` (written to `file`) is refused with one line
/// that contains `message`, and the running configuration stays `before`.
fn assert_apply_refused(
    lbd: &Lbd,
    file: &std::path::Path,
    bad: &Value,
    message: &str,
    before: &Value,
) {
    std::fs::write(file, serde_json::to_vec(bad).unwrap()).unwrap();
    let out = lbd.ctl(&["apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {bad}");
    assert!(err.contains(message), "expected {message:?} in {err:?}");
    assert_eq!(err.lines().count(), 1, "one-line reason: {err:?}");
    assert_eq!(
        &lbd.json(&["config", "dump"]),
        before,
        "state changed after {message}"
    );
}

/// `Site::config`, with a TCP VIP on port 80 and second chance on: all a
/// stateless VIP needs; stateless if `stateless`.
fn tcp_second_chance_config(site: &Site, stateless: bool) -> Value {
    let mut c = site.config(&[B1, B2], json!({"type": "none"}));
    c["second_chance"] = json!({"enabled": true});
    let vip = &mut c["vips"][0];
    vip["port"] = json!(80);
    vip["protocol"] = json!("tcp");
    vip["stateless"] = json!(stateless);
    c
}

/// A VIP as the data plane holds it: its entry, its live ring and its
/// slots' previous owners.
#[derive(Debug, PartialEq)]
struct PinnedVip {
    meta: lb_common::maps::VipMeta,
    ring: Vec<u32>,
    owners: Vec<lb_common::maps::PrevOwner>,
}

/// The pinned maps of `lbd` and the entry of VIP `addr:port/protocol` there.
fn pinned_vip(
    lbd: &Lbd,
    addr: &str,
    port: u16,
    protocol: lb_userspace::config::Protocol,
) -> (lb_userspace::maps::Maps, lb_common::maps::VipMeta) {
    let maps = pinned_maps(lbd);
    let key: lb_common::maps::VipKey =
        lb_userspace::image::vip_key(addr.parse().unwrap(), port, protocol).into();
    let meta = maps.vip(&key).unwrap().expect("VIP in the data plane");
    (maps, meta)
}

/// TCP VIP `addr:80` as the data plane holds it.
fn pinned_tcp_vip(lbd: &Lbd, addr: &str) -> PinnedVip {
    let (maps, meta) = pinned_vip(lbd, addr, 80, lb_userspace::config::Protocol::Tcp);
    PinnedVip {
        ring: maps.live_ring(&meta).unwrap(),
        owners: maps.prev_owners(meta.vip_id).unwrap(),
        meta,
    }
}

/// A stateless VIP needs all its second hop needs: second chance on, a
/// tunnel (ipip), TCP, a ring only the operator moves (static balancing),
/// and a window no shorter than the drain. `lbd --check` and `lbctl
/// apply` refuse each lack in one line naming the field, and the running
/// stateless VIP stays as it was, its pinned flag included.
#[test]
fn cp_a_stateless_vip_without_what_its_second_hop_needs_is_rejected_naming_the_field() {
    use lb_common::maps::VIP_F_STATELESS;
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("slbad"),
        tcp_second_chance_config(&site, true),
    );
    let before = lbd.json(&["config", "dump"]);
    let pinned = pinned_tcp_vip(&lbd, VIP);
    assert_ne!(pinned.meta.flags & VIP_F_STATELESS, 0, "{:?}", pinned.meta);
    let file = lbd.paths.dir.join("stateless.json");
    let path = file.to_str().unwrap();
    type Edit = fn(&mut Value);
    let cases: [(Edit, &str); 5] = [
        (
            |c| c["second_chance"]["enabled"] = json!(false),
            "vips[0].stateless: needs second_chance.enabled",
        ),
        (
            |c| c["vips"][0]["protocol"] = json!("udp"),
            "vips[0].stateless: needs protocol tcp",
        ),
        (
            |c| {
                c["vips"][0]["forwarding"] = json!("l2_dsr");
                for (i, b) in c["vips"][0]["backends"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .enumerate()
                {
                    b["mac"] = format!("02:00:5e:00:53:0{i}").into();
                }
            },
            "vips[0].stateless: needs ipip forwarding",
        ),
        (
            |c| {
                c["vips"][0]["balancing"] = json!({"mode": "load", "source": "prometheus",
                    "prometheus": {"metrics": {"vllm:num_requests_waiting": 1}, "capacity": 8}})
            },
            "vips[0].stateless: cannot be combined with balancing.mode load",
        ),
        (
            |c| {
                c["vips"][0]["drain_timeout_s"] = json!(10);
                c["vips"][0]["second_chance_s"] = json!(5);
            },
            "vips[0].second_chance_s: 5 is shorter than drain_timeout_s (10)",
        ),
    ];
    for (patch, message) in cases {
        let mut bad = before.clone();
        patch(&mut bad);
        assert_apply_refused(&lbd, &file, &bad, message, &before);
        let out = lbd_output(&["--check", "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "lbd --check accepted {bad}");
        assert!(err.contains(message), "expected {message:?} in {err:?}");
        assert_eq!(err.lines().count(), 1, "one-line reason: {err:?}");
        assert_eq!(pinned_tcp_vip(&lbd, VIP), pinned, "after {message}");
    }
}

/// `lbctl vip add --stateless` adds a stateless VIP: `lbctl vip list`
/// says so (STATE column, `stateless` in --json) and its pinned entry
/// carries VIP_F_STATELESS; a UDP one is refused naming the field. A reload
/// that makes an existing VIP stateless sets its flag and leaves its ring
/// and its slots' previous owners as they were. Defect: `lbctl flow` then
/// still answered with a connection entry made before, which the program
/// ignores for a stateless VIP; it now answers with the ring's slot.
#[test]
fn cp_stateless_vips_from_lbctl_and_a_reload_carry_the_flag_and_keep_their_ring() {
    use lb_common::maps::VIP_F_STATELESS;
    const ADDED: &str = "198.51.100.11";
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("slvip"),
        tcp_second_chance_config(&site, false),
    );
    lbd.json(&["vip", "add", &format!("{ADDED}:80/tcp"), "--stateless"]);
    let rows = lbd.json(&["vip", "list"]);
    let stateless_of = |addr: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == addr)
            .unwrap_or_else(|| panic!("no VIP {addr} in {rows}"))["stateless"]
            .clone()
    };
    assert_eq!(
        (stateless_of(VIP), stateless_of(ADDED)),
        (json!(false), json!(true)),
        "{rows}"
    );
    let out = lbd.ctl(&["vip", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or_default();
    let column = header
        .split_whitespace()
        .position(|h| h == "STATE")
        .unwrap_or_else(|| panic!("no STATE column in {text}"));
    for (addr, state) in [(VIP, "conntrack"), (ADDED, "stateless")] {
        let line = text
            .lines()
            .find(|l| l.contains(addr))
            .unwrap_or_else(|| panic!("no {addr} in {text}"));
        assert_eq!(line.split_whitespace().nth(column), Some(state), "{text}");
    }
    assert_ne!(pinned_tcp_vip(&lbd, ADDED).meta.flags & VIP_F_STATELESS, 0);
    assert_eq!(pinned_tcp_vip(&lbd, VIP).meta.flags & VIP_F_STATELESS, 0);

    let before = lbd.json(&["config", "dump"]);
    let out = lbd.ctl(&["vip", "add", "198.51.100.12:53/udp", "--stateless"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stateless UDP VIP was added");
    assert!(
        err.contains("vips[2].stateless: needs protocol tcp"),
        "{err}"
    );
    assert_eq!(lbd.json(&["config", "dump"]), before);

    // A flow with a connection entry, made while the VIP keeps them.
    const PORT: u16 = 41600;
    let flow = || lbd.json(&["flow", CLIENT, &PORT.to_string(), VIP, "80", "tcp"]);
    site.send_tcp_acks(PORT, 2);
    wait_for("a connection entry", Duration::from_secs(5), || {
        flow()["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("connection entry"))
    });
    // A ring change, so that the slots have previous owners to keep.
    lbd.json(&["backend", "add", &format!("{VIP}:80/tcp"), B3]);
    let before = pinned_tcp_vip(&lbd, VIP);
    assert!(
        before
            .owners
            .iter()
            .any(|o| o.owner != lb_common::maps::NO_BACKEND),
        "adding a backend left no previous owner"
    );
    let entries_before_switch = pins::flows(&lbd.paths.pin_dir)
        .into_iter()
        .find(|(_, k, _)| k.sport == PORT)
        .map(|(_, k, e)| (k, e));
    let mut config = lbd.json(&["config", "dump"]);
    config["vips"][0]["stateless"] = json!(true);
    write_and_sighup(&lbd, &config);
    wait_for("the reload", Duration::from_secs(10), || {
        pinned_tcp_vip(&lbd, VIP).meta.flags & VIP_F_STATELESS != 0
    });
    let now = pinned_tcp_vip(&lbd, VIP);
    assert_eq!(now.meta.vip_id, before.meta.vip_id);
    assert_eq!(now.meta.flags, before.meta.flags | VIP_F_STATELESS);
    assert!(now.ring == before.ring, "the reload changed the ring");
    assert!(
        now.owners == before.owners,
        "the reload changed the previous owners"
    );
    // The entry, which the program no longer follows, is forgotten (no
    // count shows it as a flow); `lbctl flow` says what the program does:
    // the ring's slot decides.
    let entries = pins::flows(&lbd.paths.pin_dir);
    assert!(
        !entries.iter().any(|(_, k, _)| k.sport == PORT),
        "the connection entry stayed: {entries:?}"
    );
    let reply = flow();
    let slot = reply["slot"].as_u64().unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(
        reply["backend_id"].as_u64(),
        Some(u64::from(now.ring[slot as usize])),
        "{reply}"
    );
    assert!(
        reply["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stateless VIP")),
        "{reply}"
    );
    assert_eq!(lbd.json(&["config", "dump"]), config);

    // Keeping state again: an entry left while the VIP was stateless
    // (unrefreshed; its 5-tuple may be another flow's by now) is forgotten
    // before the switch, and new flows are entered again.
    let (key, entry) = entries_before_switch.expect("the entry made while stateful");
    pins::put_conn(&lbd.paths.pin_dir, &key, &entry);
    config["vips"][0]["stateless"] = json!(false);
    write_and_sighup(&lbd, &config);
    wait_for("the reload", Duration::from_secs(10), || {
        pinned_tcp_vip(&lbd, VIP).meta.flags & VIP_F_STATELESS == 0
    });
    let entries = pins::flows(&lbd.paths.pin_dir);
    assert!(
        !entries.iter().any(|(_, k, _)| k.sport == PORT),
        "the left entry stayed: {entries:?}"
    );
    // (Flows on slots the added backend moved go with a hop and enter
    // nothing: a few ports, so some fall on settled slots.)
    for port in PORT + 1..PORT + 17 {
        site.send_tcp_acks(port, 2);
    }
    wait_for("connection entries again", Duration::from_secs(5), || {
        pins::flows(&lbd.paths.pin_dir)
            .iter()
            .any(|(table, k, _)| *table == lb_common::maps::MAP_CONNS && k.sport > PORT)
    });
}
