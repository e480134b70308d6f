//! The control protocol's versions, end to end: lbctl against a real lbd
//! (typed replies for every read command; older and newer requests), and
//! against a fake lbd on a socket of the test's that answers as a newer
//! or a broken lbd would.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::Output,
    sync::{Arc, Mutex},
};

use lb_tests::{
    lbd::{Lbd, Paths, binary, run_lbctl},
    netns::{Netns, veth},
};
use lb_userspace::control::PROTOCOL_VERSION;
use serde_json::{Value, json};

const VIP: &str = "198.51.100.10";
const BACKEND: &str = "198.51.100.101";

/// A socket that answers every request line with `reply`, recording the
/// requests (its thread waits for connections until the test binary
/// exits; its directory is removed on drop).
struct FakeLbd {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl FakeLbd {
    fn answering(reply: &str) -> Self {
        let paths = Paths::new("fake-lbd");
        let listener = UnixListener::bind(&paths.socket).expect("bind the fake socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let reply = format!("{reply}\n");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                seen.lock().unwrap().push(line);
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Self {
            socket: paths.socket,
            requests,
            _dir: TempDir(paths.dir),
        }
    }

    fn lbctl(&self, args: &[&str]) -> Output {
        run_lbctl(&binary("lbctl"), &self.socket, args)
    }
}

/// `out` failed with status 1 (not a panic's 101) and exactly `message`.
fn assert_fails_with(args: &[&str], out: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), stderr.as_ref()),
        (Some(1), format!("lbctl: {message}\n").as_str()),
        "lbctl {}; stdout: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The commands that read a reply, each a different reply type.
const READERS: &[&[&str]] = &[
    &["status"],
    &["vip", "list"],
    &["vip", "show", "198.51.100.10:53/udp"],
    &["backend", "list"],
    &["backend", "weight", "198.51.100.10:53/udp", BACKEND, "2"],
    &["stats", "--interval", "0.1"],
    &["top", "--once"],
    &["conn", "list"],
    &["flow", "203.0.113.7", "5353", VIP, "53", "udp"],
    &["config", "dump"],
    &["config", "dump", "--format", "toml"],
    &["node", "resume"],
    &["capture", "--count", "1"],
];

#[test]
fn cp_protocol_lbctl_refuses_a_reply_of_a_newer_lbd_by_name() {
    let lbd = FakeLbd::answering(r#"{"v": 999, "ok": true, "data": {"whatever": "changed"}}"#);
    for args in READERS {
        for json in [false, true] {
            let mut all = args.to_vec();
            if json && !args.contains(&"toml") {
                all.insert(0, "--json");
            }
            assert_fails_with(
                &all,
                &lbd.lbctl(&all),
                "lbd speaks control protocol 999, this lbctl speaks 1: use the lbctl shipped \
                 with the running lbd (lbd --version)",
            );
        }
    }
    // Every request carried this lbctl's version.
    let requests = lbd.requests.lock().unwrap();
    assert!(requests.len() >= READERS.len(), "{requests:?}");
    for line in requests.iter() {
        let request: Value = serde_json::from_str(line).unwrap();
        assert_eq!(request["v"], PROTOCOL_VERSION, "{line}");
    }
}

#[test]
fn cp_protocol_lbctl_names_the_field_of_a_reply_it_cannot_read() {
    // This version, but a body lbctl does not know: a field renamed.
    let lbd = FakeLbd::answering(
        r#"{"v": 1, "ok": true, "data": {"time_s": 1.0, "vip_counters": [], "backends": [], "counters": {}}}"#,
    );
    let args = ["stats", "--interval", "0.1"];
    assert_fails_with(
        &args,
        &lbd.lbctl(&args),
        "lbd's reply to `stats` cannot be read (lbd speaks control protocol 1, this lbctl \
         speaks 1): data: missing field `vips`; use the lbctl shipped with the running lbd \
         (lbd --version)",
    );
    let lbd = FakeLbd::answering(r#"{"v": 1, "ok": true, "data": [{"vip": 7}]}"#);
    let args = ["backend", "list"];
    let out = lbd.lbctl(&args);
    assert_fails_with(
        &args,
        &out,
        "lbd's reply to `backend_list` cannot be read (lbd speaks control protocol 1, this \
         lbctl speaks 1): data[0].vip: invalid type: integer `7`, expected a string; use the \
         lbctl shipped with the running lbd (lbd --version)",
    );
    let lbd = FakeLbd::answering("this is not JSON");
    let out = lbd.lbctl(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("lbctl: lbd sent a reply that is not JSON: "),
        "{stderr}"
    );
}

/// What an lbd from before versions (v0.1.0) answers to a request with a
/// `v`: a refusal, as its requests deny unknown fields, but for the
/// requests without arguments, which it answers as if `v` were not there
/// (serde-rs/serde#2123), with a success reply of its own version. lbctl
/// names that lbd either way, and prints nothing of its reply.
#[test]
fn cp_protocol_lbctl_names_an_lbd_from_before_versions() {
    let protocol_0 = "lbd speaks control protocol 0 (an lbd from before protocol versions), \
                      this lbctl speaks 1: use the lbctl shipped with the running lbd (lbd \
                      --version)";
    let refusing = FakeLbd::answering(
        r#"{"ok":false,"error":"malformed request: unknown field `v`, expected `cmd` at line 1 column 20"}"#,
    );
    let args = ["backend", "list"];
    assert_fails_with(&args, &refusing.lbctl(&args), protocol_0);
    let config = json!({
        "interfaces": [{"name": "eth0"}],
        "vips": [{"address": VIP, "port": 53, "protocol": "udp", "backends": []}],
    });
    let answers: [(&[&str], Value); 5] = [
        (
            &["status"],
            json!({"version": "0.1.0", "uptime_s": 3, "interfaces": [], "vips": 1}),
        ),
        (
            &["vip", "list"],
            json!([{"address": VIP, "port": 53, "protocol": "udp", "backends": 0}]),
        ),
        (&["config", "dump"], config.clone()),
        (&["--json", "config", "dump"], config.clone()),
        (&["config", "dump", "--format", "toml"], config),
    ];
    for (args, data) in answers {
        let old = FakeLbd::answering(&json!({"ok": true, "data": data}).to_string());
        let out = old.lbctl(args);
        assert_fails_with(args, &out, protocol_0);
        assert!(out.stdout.is_empty(), "lbctl {}: {:?}", args.join(" "), out);
    }
}

/// A reply of a newer lbd of this version, with fields and values this
/// lbctl does not know: read, and printed by `--json` exactly as sent.
#[test]
fn cp_protocol_lbctl_reads_and_prints_what_a_newer_lbd_of_this_version_added() {
    let row = json!({
        "name": null, "address": VIP, "port": 53, "protocol": "sctp", "forwarding": "gre",
        "affinity": false, "id": 1, "backends": 1, "healthy": 1, "in_table": 1,
        "ring_digest": "abcd", "added_later": {"any": "thing"},
    });
    let lbd = FakeLbd::answering(&json!({"v": 1, "ok": true, "data": [row]}).to_string());
    let out = lbd.lbctl(&["--json", "vip", "list"]);
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    // `announced` was left out by that lbd: not printed as null either.
    assert_eq!(printed, json!([row]));
    let out = lbd.lbctl(&["vip", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        table.contains("198.51.100.10:53/sctp") && table.contains("gre"),
        "{table}"
    );

    // A configuration option and a hard limit field this lbctl lacks.
    let config = json!({
        "interfaces": [{"name": "eth0", "added_later": true}],
        "vips": [],
        "added_later": {"mode": "new"},
    });
    let lbd = FakeLbd::answering(&json!({"v": 1, "ok": true, "data": config}).to_string());
    let out = lbd.lbctl(&["config", "dump"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        config
    );
    let out = lbd.lbctl(&["config", "dump", "--format", "toml"]);
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        toml.contains("[added_later]\nmode = \"new\"") && toml.contains("added_later = true"),
        "{toml}"
    );
    let show = json!({
        "vip": {"address": VIP, "port": 53, "protocol": "udp"},
        "mode": "predictive", "source": "flows",
        "hard_limit": {"metric": "queue", "above": 10.0, "window_s": 5},
        "hard_limit_waived": false,
        "backends": [{
            "address": BACKEND, "weight": 1, "state": "paused", "health": "degraded",
            "effective_weight": null, "why": null, "active_flows": null, "report": null,
            "over_hard_limit": false,
        }],
    });
    let lbd = FakeLbd::answering(&json!({"v": 1, "ok": true, "data": show}).to_string());
    let out = lbd.lbctl(&["vip", "show", "198.51.100.10:53/udp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("balancing predictive")
            && text.contains("hard limit: queue above 10")
            && text.contains("degraded"),
        "{text}"
    );
    let out = lbd.lbctl(&["--json", "vip", "show", "198.51.100.10:53/udp"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), show);
}

/// An lbd in a namespace of its own with one VIP and one backend, no
/// health check.
fn start_lbd() -> (Lbd, Netns, Netns) {
    let lb = Netns::new("cppr");
    let peer = Netns::new("cppp");
    veth(&lb, "lb0", &peer, "pe0");
    let config = json!({
        "interfaces": [{"name": "lb0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "next_hop": {"fib": false, "gateway_mac": "02:00:00:00:00:01"},
        "tables": {"ring_size": 4093, "conn_entries": 4096, "max_vips": 8, "max_backends": 64},
        "vips": [{
            "address": VIP, "port": 53, "protocol": "udp",
            "backends": [{"address": BACKEND}],
        }],
    });
    let lbd = Lbd::start(&lb, Paths::new("protocol"), config);
    (lbd, lb, peer)
}

/// One request line, as written, and lbd's reply line.
fn ask(socket: &Path, line: &str) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn cp_protocol_lbd_answers_every_lbctl_command_and_older_requests() {
    let (lbd, _lb, _peer) = start_lbd();
    let vip = "198.51.100.10:53/udp";
    // The read commands, their typed replies printed as JSON.
    let status = lbd.json(&["status"]);
    assert_eq!(status["interfaces"][0]["state"], "attached", "{status}");
    assert_eq!(status["ring_digests"][vip].as_str().unwrap().len(), 16);
    let vips = lbd.json(&["vip", "list"]);
    assert_eq!(
        (
            &vips[0]["address"],
            &vips[0]["protocol"],
            &vips[0]["in_table"]
        ),
        (&json!(VIP), &json!("udp"), &json!(1))
    );
    let show = lbd.json(&["vip", "show", vip]);
    assert_eq!(show["backends"][0]["health"], "unchecked", "{show}");
    let backends = lbd.json(&["backend", "list"]);
    assert_eq!(
        (&backends[0]["address"], &backends[0]["in_table"]),
        (&json!(BACKEND), &json!(true))
    );
    let flow = lbd.json(&["flow", "203.0.113.7", "5353", VIP, "53", "udp"]);
    assert_eq!(flow["backend"], BACKEND, "{flow}");
    assert!(flow["slot"].as_u64().unwrap() < 4093, "{flow}");
    let conns = lbd.json(&["conn", "list"]);
    assert_eq!((&conns["rows"], &conns["pinned"]), (&json!([]), &json!(0)));
    let stats = lbd.json(&["stats", "--interval", "0.1"]);
    assert_eq!(stats["vips"][0]["vip"], vip, "{stats}");
    assert!(stats["counters"].get("pass_non_vip").is_some(), "{stats}");
    let config = lbd.json(&["config", "dump"]);
    assert_eq!(config["vips"][0]["backends"][0]["weight"], 1);
    let applied = lbd.json(&["backend", "weight", vip, BACKEND, "3"]);
    assert_eq!(applied["applied"], true, "{applied}");
    assert_eq!(lbd.json(&["backend", "list"])[0]["weight"], 3);
    let top = lbd.ctl(&["top", "--once"]);
    let screen = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{screen}");
    assert!(screen.contains(vip) && screen.contains(BACKEND), "{screen}");

    let socket = &lbd.paths.socket;
    // An lbctl from before versions sends none, and ignores the reply's.
    let unversioned = ask(socket, r#"{"cmd":"vip_list"}"#);
    assert_eq!(
        (&unversioned["ok"], &unversioned["v"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(unversioned["data"], lbd.json(&["vip", "list"]));
    let current = ask(socket, r#"{"v":1,"cmd":"vip_list"}"#);
    assert_eq!((&current["ok"], &current["v"]), (&json!(true), &json!(1)));
    // A newer lbctl's request is refused by name; lbd carries on.
    let newer = ask(socket, r#"{"v":2,"cmd":"vip_list"}"#);
    assert_eq!(
        newer,
        json!({
            "v": 1,
            "ok": false,
            "error": "this lbctl speaks control protocol 2, this lbd speaks 1: use the lbctl \
                      shipped with the running lbd (lbd --version)",
        })
    );
    // A field a request does not take is refused, also of a request
    // without any (which serde would let through).
    let extra = ask(socket, r#"{"v":1,"cmd":"stats","anything":1}"#);
    assert_eq!(
        extra,
        json!({
            "v": 1,
            "ok": false,
            "error": "malformed request: unknown field `anything`: `stats` takes no fields",
        })
    );
    assert!(lbd.ctl(&["status"]).status.success());
}
