//! `lb-decap`, the backend-side tool: attaches `lb_decap` through a pinned
//! link that outlives the command, so a backend without tunnel drivers
//! serves IP-in-IP traffic; updates in place; detaches cleanly.

use std::{net::UdpSocket, process::Command, time::Duration};

use aya::programs::XdpMode;
use lb_common::{
    Reason,
    flow::PROTO_UDP,
    maps::{MAP_DECAP_ADDRS, MAP_DECAP_STATS, PROG_LB},
    stats::{DECAP_REASON_COUNT, DecapReason},
};
use lb_tests::{
    harness::*,
    lbd::binary,
    netns::{Netns, veth},
    packets::*,
    pins,
};
use lb_userspace::layout::MapShape;

/// Run lb-decap in `ns` (nsenter keeps the host's bpffs, unlike
/// `ip netns exec`); its stdout, or its stderr on failure.
fn lb_decap(ns: &Netns, pin_dir: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.name))
        .arg(binary("lb-decap"))
        .args(["--pin-dir", pin_dir])
        .args(args)
        .output()
        .expect("run lb-decap");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn decapsulated(ns: &Netns, pin_dir: &str) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&lb_decap(ns, pin_dir, &["status", "--json"]).expect("status"))
            .expect("status JSON");
    status["counters"]["decapsulated"]
        .as_u64()
        .expect("counter")
}

/// Removes a pin directory, also when the test fails.
struct Unpin(String);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn cp_decap_tool_attaches_a_pinned_decap_that_outlives_it_and_detaches() {
    let lb_ns = Netns::new("lb");
    let backend_ns = Netns::new("be");
    veth(&lb_ns, "lb0", &backend_ns, "be0");
    let pin_dir = format!("/sys/fs/bpf/lbt-decap-{}", std::process::id());
    let _unpin = Unpin(pin_dir.clone());

    // Bad input: a clear error, nothing pinned.
    let err = lb_decap(
        &backend_ns,
        &pin_dir,
        &["attach", "-i", "nosuch0", "-a", BACKEND_V4[0]],
    )
    .unwrap_err();
    assert!(err.contains("no interface nosuch0"), "{err}");
    assert!(!std::path::Path::new(&pin_dir).exists());

    let out = lb_decap(
        &backend_ns,
        &pin_dir,
        &["attach", "-i", "be0", "-a", BACKEND_V4[0]],
    )
    .expect("attach");
    assert!(out.contains("attached on be0 (native mode)"), "{out}");
    let link = backend_ns.exec(&["ip", "-details", "link", "show", "be0"]);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );

    // The load balancer tunnels client packets back out of lb0 to be0.
    let mut lb = Lb::new();
    lb_ns
        .enter(|| lb.dp.attach(PROG_LB, "lb0", XdpMode::Driver))
        .expect("attach lb");
    let mut config = Lb::standard_config();
    config.gateway_mac = backend_ns.mac("be0");
    lb.maps.set_config(&config).unwrap();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    backend_ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{CLIENT_V4}/24"),
        "dev",
        "be0",
    ]);
    backend_ns.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "be0"]);
    backend_ns.exec(&[
        "ip",
        "neigh",
        "replace",
        VIP_V4,
        "lladdr",
        &lb_ns.mac_text("lb0"),
        "dev",
        "be0",
        "nud",
        "permanent",
    ]);
    let send = |n: u64| {
        backend_ns.enter(|| {
            let socket = UdpSocket::bind((CLIENT_V4, 0)).expect("bind");
            for _ in 0..n {
                socket.send_to(b"hello", (VIP_V4, 53)).expect("send");
            }
        })
    };
    let wait_for = |want: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while decapsulated(&backend_ns, &pin_dir) < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        decapsulated(&backend_ns, &pin_dir)
    };
    // lb-decap has exited: the pinned program does the work.
    send(5);
    assert_eq!(wait_for(5), 5, "every tunnel stripped");
    assert_eq!(lb.count(Reason::Tx), 5);

    // Attaching again updates in place (an upgrade): counters and link kept.
    let out = lb_decap(
        &backend_ns,
        &pin_dir,
        &[
            "attach",
            "-i",
            "be0",
            "-a",
            BACKEND_V4[0],
            "-a",
            BACKEND_V6[0],
        ],
    )
    .expect("re-attach");
    assert!(out.contains("updated on be0"), "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&lb_decap(&backend_ns, &pin_dir, &["status", "--json"]).unwrap())
            .unwrap();
    assert_eq!(
        status["addresses"],
        serde_json::json!([BACKEND_V4[0], BACKEND_V6[0]])
    );
    assert_eq!(status["interfaces"], serde_json::json!(["be0"]));
    send(3);
    assert_eq!(wait_for(8), 8);

    // A forgotten address is no longer ours: its tunnels pass up untouched.
    lb_decap(&backend_ns, &pin_dir, &["forget", "-a", BACKEND_V4[0]]).expect("forget");
    send(2);
    std::thread::sleep(Duration::from_millis(200));
    let status: serde_json::Value =
        serde_json::from_str(&lb_decap(&backend_ns, &pin_dir, &["status", "--json"]).unwrap())
            .unwrap();
    assert_eq!(status["counters"]["decapsulated"], 8);
    assert_eq!(status["counters"]["pass_not_our_address"], 2);

    lb_decap(&backend_ns, &pin_dir, &["detach", "-i", "be0"]).expect("detach");
    let link = backend_ns.exec(&["ip", "-details", "link", "show", "be0"]);
    assert!(!link.contains("prog/xdp"), "detached: {link}");
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "last detach unpins"
    );
    let err = lb_decap(&backend_ns, &pin_dir, &["detach", "-i", "be0"]).unwrap_err();
    assert!(err.contains("not attached to be0"), "{err}");
}

/// lb-decap adopts its pins after the same check as lbd: a counter map
/// pinned by a version with fewer reasons grows when `attach` replaces the
/// program, its counts kept (`status` leaves it to the running program,
/// and reads the counters it lacks as 0); a map of another layout is
/// refused, named, with what to do on a backend, and no pin changes.
#[test]
fn cp_decap_tool_grows_older_counters_and_refuses_another_layout() {
    let lb_ns = Netns::new("lb");
    let backend_ns = Netns::new("be");
    veth(&lb_ns, "lb0", &backend_ns, "be0");
    let pin_dir = format!("/sys/fs/bpf/lbt-decap-layout-{}", std::process::id());
    let _unpin = Unpin(pin_dir.clone());
    let attach = || {
        lb_decap(
            &backend_ns,
            &pin_dir,
            &["attach", "-i", "be0", "-a", BACKEND_V4[0]],
        )
        .expect("attach")
    };
    attach();
    let pins_at = std::path::Path::new(&pin_dir);
    let counters = || {
        let status: serde_json::Value =
            serde_json::from_str(&lb_decap(&backend_ns, &pin_dir, &["status", "--json"]).unwrap())
                .unwrap();
        status["counters"].clone()
    };

    // As a version before pass_malformed left it.
    let stats = pins_at.join(MAP_DECAP_STATS);
    let ours = pins::shape(&stats);
    let older = DecapReason::PassMalformed as u32;
    let _running = pins::replace(
        &stats,
        MapShape {
            max_entries: older,
            ..ours
        },
    );
    pins::set_count(
        &mut pins::counters(&stats),
        DecapReason::Decapsulated as u32,
        &[7],
    );
    let before = counters();
    assert_eq!(before["decapsulated"], 7);
    assert_eq!(before["pass_malformed"], 0);
    assert_eq!(
        pins::shape(&stats).max_entries,
        older,
        "status migrates nothing"
    );
    attach();
    assert_eq!(pins::shape(&stats).max_entries, DECAP_REASON_COUNT);
    // Counts kept (the link's own neighbour traffic may add pass_not_tunnel).
    let after = counters();
    assert_eq!(after["decapsulated"], 7, "{after}");
    assert_eq!(after["pass_malformed"], 0, "{after}");

    // Addresses keyed as now, but with 8-byte values.
    let addrs = pins_at.join(MAP_DECAP_ADDRS);
    let ours = pins::shape(&addrs);
    let original = pins::replace(
        &addrs,
        MapShape {
            value_size: ours.value_size + 4,
            ..ours
        },
    );
    let before = pins::objects(pins_at);
    let err = lb_decap(&backend_ns, &pin_dir, &["status"]).unwrap_err();
    assert_eq!(
        err,
        format!(
            "lb-decap: loading the data plane pinned at {pin_dir}: pinned map DECAP_ADDRS: \
             value size 8, this lb-decap needs 4: run the lb-decap version that pinned them, \
             or `lb-decap detach` from every interface first (tunnels go undecoded until the \
             next attach)\n"
        )
    );
    assert_eq!(pins::objects(pins_at), before, "a pin changed");
    pins::restore(&addrs, &original);
    let status: serde_json::Value =
        serde_json::from_str(&lb_decap(&backend_ns, &pin_dir, &["status", "--json"]).unwrap())
            .unwrap();
    assert_eq!(status["addresses"], serde_json::json!([BACKEND_V4[0]]));
}
