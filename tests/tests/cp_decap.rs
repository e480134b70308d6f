//! `lb-decap`, the backend-side tool: attaches `lb_decap` through a pinned
//! link that outlives the command, so a backend without tunnel drivers
//! serves IP-in-IP traffic; accepts tunnels only from the sources it is
//! told to; updates in place, on every interface attached from its pin
//! directory; detaches cleanly.

use std::{net::UdpSocket, process::Command, time::Duration};

use aya::programs::XdpMode;
use lb_common::{
    Reason,
    flow::PROTO_UDP,
    maps::{MAP_DECAP_ADDRS, PROG_LB},
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
/// `ip netns exec`).
fn lb_decap_output(ns: &Netns, pin_dir: &str, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.name))
        .arg(binary("lb-decap"))
        .args(["--pin-dir", pin_dir])
        .args(args)
        .output()
        .expect("run lb-decap")
}

/// `lb_decap_output`: its stdout, or its stderr on failure.
fn lb_decap(ns: &Netns, pin_dir: &str, args: &[&str]) -> Result<String, String> {
    let out = lb_decap_output(ns, pin_dir, args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn status(ns: &Netns, pin_dir: &str) -> serde_json::Value {
    serde_json::from_str(&lb_decap(ns, pin_dir, &["status", "--json"]).expect("status"))
        .expect("status JSON")
}

fn decapsulated(ns: &Netns, pin_dir: &str) -> u64 {
    status(ns, pin_dir)["counters"]["decapsulated"]
        .as_u64()
        .expect("counter")
}

/// A pin directory for one test, removed on drop.
struct PinDir(String);

impl PinDir {
    fn new(tag: &str) -> Self {
        Self(format!("/sys/fs/bpf/lbt-{tag}-{}", std::process::id()))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lb0-be0 veth, and the load balancer (the test harness's `lb`
/// program on lb0) tunnelling the client's UDP to backend address
/// BACKEND_V4[0] back out to be0, where the client (the backend namespace
/// itself) sends from. Called again after be0 is deleted, it wires the new
/// pair.
fn wire(lb_ns: &Netns, backend_ns: &Netns, lb: &mut Lb) {
    veth(lb_ns, "lb0", backend_ns, "be0");
    lb_ns
        .enter(|| lb.dp.attach(PROG_LB, "lb0", XdpMode::Driver))
        .expect("attach lb");
    let mut config = Lb::standard_config();
    config.gateway_mac = backend_ns.mac("be0");
    lb.maps.set_config(&config).unwrap();
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
}

/// Send `n` UDP datagrams from the backend namespace to the VIP.
fn send(backend_ns: &Netns, n: u64) {
    backend_ns.enter(|| {
        let socket = UdpSocket::bind((CLIENT_V4, 0)).expect("bind");
        for _ in 0..n {
            socket.send_to(b"hello", (VIP_V4, 53)).expect("send");
        }
    })
}

/// The `decapsulated` counter once it reaches `want`, or after 5 s.
fn decapsulated_reaching(ns: &Netns, pin_dir: &str, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while decapsulated(ns, pin_dir) < want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    decapsulated(ns, pin_dir)
}

#[test]
fn cp_decap_tool_attaches_a_pinned_decap_that_outlives_it_and_detaches() {
    let lb_ns = Netns::new("lb");
    let backend_ns = Netns::new("be");
    let mut lb = Lb::new();
    wire(&lb_ns, &backend_ns, &mut lb);
    let pins = PinDir::new("decap");
    let pin_dir = pins.0.clone();

    // Bad input: a clear error, nothing pinned.
    let err = lb_decap(
        &backend_ns,
        &pin_dir,
        &[
            "attach",
            "-i",
            "nosuch0",
            "-a",
            BACKEND_V4[0],
            "-s",
            OUTER_SRC_V4,
        ],
    )
    .unwrap_err();
    assert!(err.contains("no interface nosuch0"), "{err}");
    assert!(!std::path::Path::new(&pin_dir).exists());

    let out = lb_decap(
        &backend_ns,
        &pin_dir,
        &[
            "attach",
            "-i",
            "be0",
            "-a",
            BACKEND_V4[0],
            "--allow-source",
            OUTER_SRC_V4,
        ],
    )
    .expect("attach");
    assert!(out.contains("attached on be0 (native mode)"), "{out}");
    let link = backend_ns.exec(&["ip", "-details", "link", "show", "be0"]);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );

    // The load balancer tunnels client packets back out of lb0 to be0.
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let send = |n: u64| send(&backend_ns, n);
    let wait_for = |want: u64| decapsulated_reaching(&backend_ns, &pin_dir, want);
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
            "--allow-source",
            OUTER_SRC_V4,
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

/// be0 deleted and created again since the last `attach`: the pinned link
/// is attached to nothing and cannot be updated. `attach` replaces it with
/// a new attachment, and tunnels are stripped again.
#[test]
fn cp_decap_attach_after_the_interface_was_created_again_replaces_the_dead_link() {
    let lb_ns = Netns::new("lb");
    let backend_ns = Netns::new("be");
    let mut lb = Lb::new();
    wire(&lb_ns, &backend_ns, &mut lb);
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let pins = PinDir::new("decap-recreate");
    let attach = || {
        lb_decap(
            &backend_ns,
            &pins.0,
            &[
                "attach",
                "-i",
                "be0",
                "-a",
                BACKEND_V4[0],
                "--allow-source",
                OUTER_SRC_V4,
            ],
        )
    };
    attach().expect("attach");
    send(&backend_ns, 2);
    assert_eq!(decapsulated_reaching(&backend_ns, &pins.0, 2), 2);

    backend_ns.exec(&["ip", "link", "del", "be0"]);
    wire(&lb_ns, &backend_ns, &mut lb);
    let out = attach().expect("attach to the re-created be0");
    assert!(
        out.contains("lb_decap attached on be0 (native mode)"),
        "{out}"
    );
    let link = backend_ns.exec(&["ip", "-details", "link", "show", "be0"]);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );
    send(&backend_ns, 3);
    assert_eq!(decapsulated_reaching(&backend_ns, &pins.0, 5), 5);
}

/// Commands that change the pins run one at a time: an `attach` while
/// another run holds the pin directory waits, changing nothing, and goes
/// ahead once it is released.
#[test]
fn cp_decap_attach_waits_for_another_run_on_the_same_pins() {
    let lb_ns = Netns::new("lb");
    let backend_ns = Netns::new("be");
    veth(&lb_ns, "lb0", &backend_ns, "be0");
    let pins = PinDir::new("decap-lock");
    lb_decap(
        &backend_ns,
        &pins.0,
        &[
            "attach",
            "-i",
            "be0",
            "-a",
            BACKEND_V4[0],
            "--allow-source",
            OUTER_SRC_V4,
        ],
    )
    .expect("attach");
    let addresses = || {
        let status: serde_json::Value =
            serde_json::from_str(&lb_decap(&backend_ns, &pins.0, &["status", "--json"]).unwrap())
                .unwrap();
        status["addresses"].clone()
    };

    let held = lb_userspace::pin_lock::PinDirLock::acquire(std::path::Path::new(&pins.0))
        .expect("lock the pins");
    let mut second = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", backend_ns.name))
        .arg(binary("lb-decap"))
        .args(["--pin-dir", &pins.0])
        .args([
            "attach",
            "-i",
            "be0",
            "-a",
            BACKEND_V6[0],
            "--allow-source",
            OUTER_SRC_V4,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lb-decap");
    std::thread::sleep(Duration::from_millis(500));
    let waiting = second.try_wait().expect("poll lb-decap").is_none();
    if !waiting {
        let out = second.wait_with_output().unwrap();
        panic!(
            "lb-decap did not wait for the lock: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(addresses(), serde_json::json!([BACKEND_V4[0]]));

    drop(held);
    let out = second.wait_with_output().expect("lb-decap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        addresses(),
        serde_json::json!([BACKEND_V4[0], BACKEND_V6[0]])
    );
}

/// The counters of a `status --json`, by name.
fn counters(status: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    status["counters"]
        .as_object()
        .expect("counters")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

/// The counters that changed between two snapshots, with how much; but
/// for `pass_not_tunnel`, which the kernel's own traffic on a new link
/// (neighbour discovery) moves at any time.
fn moved(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|(k, v)| *k != "pass_not_tunnel" && before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// Send `frames` out of `peer_dev` in `peer_ns` and wait (up to 5 s) until
/// the pinned decap counters moved once per frame; what moved, as `moved`.
fn send_counted(
    peer_ns: &Netns,
    peer_dev: &str,
    backend_ns: &Netns,
    pin_dir: &str,
    frames: &[Vec<u8>],
) -> Vec<(String, u64)> {
    let before = counters(&status(backend_ns, pin_dir));
    let n = frames.len() as u64;
    peer_ns.send_frames(peer_dev, frames);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let after = counters(&status(backend_ns, pin_dir));
        let total: u64 = moved(&before, &after).iter().map(|(_, n)| n).sum();
        if total >= n || std::time::Instant::now() > deadline {
            return moved(&before, &after);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cp_decap_attach_requires_an_allowlist_replaces_it_and_drops_other_sources() {
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    veth(&peer_ns, "peer0", &backend_ns, "be0");
    let pins = PinDir::new("decapsrc");
    let pin_dir = pins.0.as_str();
    let be_mac = backend_ns.mac("be0");
    let peer_mac = peer_ns.mac("peer0");
    let attach = |extra: &[&str]| {
        let mut args = vec![
            "attach",
            "-i",
            "be0",
            "-a",
            BACKEND_V4[0],
            "-a",
            BACKEND_V6[0],
        ];
        args.extend_from_slice(extra);
        lb_decap(&backend_ns, pin_dir, &args)
    };

    // Secure by default: no allowlist, no attachment, nothing pinned.
    let err = attach(&[]).unwrap_err();
    assert!(
        err.contains("no allowed tunnel sources")
            && err.contains("--allow-source")
            && err.contains("--allow-any-source"),
        "{err}"
    );
    assert!(!std::path::Path::new(pin_dir).exists(), "nothing pinned");
    let link = backend_ns.exec(&["ip", "link", "show", "be0"]);
    assert!(!link.contains("xdp"), "{link}");

    // Sources of both families, an address and a prefix.
    let out = attach(&["-s", OUTER_SRC_V4, "--allow-source", "2001:db8:100::/64"]).expect("attach");
    assert!(
        out.contains("attached on be0") && out.contains("from 198.51.100.2/32, 2001:db8:100::/64"),
        "{out}"
    );
    let st = status(&backend_ns, pin_dir);
    assert_eq!(st["allow_any_source"], false);
    assert_eq!(
        st["allowed_sources"],
        serde_json::json!(["198.51.100.2/32", "2001:db8:100::/64"])
    );
    let text = lb_decap(&backend_ns, pin_dir, &["status"]).unwrap();
    assert!(
        text.contains("sources:    198.51.100.2/32, 2001:db8:100::/64")
            && text.contains("drop_untrusted_source"),
        "{text}"
    );

    // Bad sources are refused with the reason, and change nothing.
    for (bad, says) in [
        (
            vec!["-s", "198.51.100.7/24"],
            "did you mean 198.51.100.0/24",
        ),
        (vec!["-s", "lb1.example"], "not an IP address or prefix"),
        (
            vec!["-s", OUTER_SRC_V4, "--allow-any-source"],
            "cannot be used with",
        ),
        // A peer is trusted to send GUE and to receive second hops: one
        // backend each, never a prefix of hosts.
        (
            vec![
                "-s",
                OUTER_SRC_V4,
                "--gue-port",
                "6080",
                "--peer",
                "198.51.100.0/24",
            ],
            "\"198.51.100.0/24\" is a prefix: a peer is one backend's address",
        ),
    ] {
        let err = attach(&bad).unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    assert_eq!(
        status(&backend_ns, pin_dir)["allowed_sources"],
        st["allowed_sources"]
    );

    // Real frames over the veth: tunnels from the allowed sources are
    // stripped, others dropped and counted; each under one counter.
    let inner = udp4("203.0.113.9", 40000, VIP_V4, 53, b"hello");
    let tunnel = |src: &str, dst: &str| {
        if src.contains(':') {
            let outer = outer_v6(src, dst, &inner, &flow_of(&inner));
            frame(be_mac, peer_mac, None, ETH_IPV6, &cat(&outer, &inner))
        } else {
            let outer = outer_v4(src, dst, &inner);
            frame(be_mac, peer_mac, None, ETH_IPV4, &cat(&outer, &inner))
        }
    };
    let send_and_count =
        |frames: Vec<Vec<u8>>| send_counted(&peer_ns, "peer0", &backend_ns, pin_dir, &frames);
    let got = send_and_count(vec![
        tunnel(OUTER_SRC_V4, BACKEND_V4[0]),
        tunnel("2001:db8:100::7", BACKEND_V6[0]),
        tunnel("198.51.100.3", BACKEND_V4[0]),
        tunnel(CLIENT_V6, BACKEND_V6[0]),
        tunnel("192.0.2.66", BACKEND_V4[0]),
    ]);
    assert_eq!(
        got,
        vec![
            ("decapsulated".to_string(), 2),
            ("drop_untrusted_source".to_string(), 3)
        ]
    );

    // A repeated attach replaces the set: removing an LB node works.
    let out = attach(&["-s", "192.0.2.0/24"]).expect("re-attach");
    assert!(
        out.contains("updated on be0") && out.contains("from 192.0.2.0/24"),
        "{out}"
    );
    assert_eq!(
        status(&backend_ns, pin_dir)["allowed_sources"],
        serde_json::json!(["192.0.2.0/24"])
    );
    let got = send_and_count(vec![
        tunnel(OUTER_SRC_V4, BACKEND_V4[0]),
        tunnel("2001:db8:100::7", BACKEND_V6[0]),
        tunnel("192.0.2.66", BACKEND_V4[0]),
    ]);
    assert_eq!(
        got,
        vec![
            ("decapsulated".to_string(), 1),
            ("drop_untrusted_source".to_string(), 2)
        ]
    );

    // The explicit opt-out: any source, and the list is gone.
    let out = attach(&["--allow-any-source"]).expect("re-attach, any source");
    assert!(out.contains("from any source"), "{out}");
    let st = status(&backend_ns, pin_dir);
    assert_eq!(st["allow_any_source"], true);
    assert_eq!(st["allowed_sources"], serde_json::json!([]));
    let got = send_and_count(vec![
        tunnel(CLIENT_V4, BACKEND_V4[0]),
        tunnel(CLIENT_V6, BACKEND_V6[0]),
    ]);
    assert_eq!(got, vec![("decapsulated".to_string(), 2)]);

    lb_decap(&backend_ns, pin_dir, &["detach", "-i", "be0"]).expect("detach");
}

/// Pins as the release before the allowlist left them: a counter map with
/// one row per reason it knew (4), the address map, no source maps.
fn pin_previous_release(pin_dir: &str, counts: &[(u32, u64)]) {
    use aya::maps::{HashMap, PerCpuArray, PerCpuValues};
    use lb_common::maps::DecapAddr;
    std::fs::create_dir_all(pin_dir).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let mut stats = PerCpuArray::<_, u64>::create(4, 0).unwrap();
    for (row, count) in counts {
        let values = PerCpuValues::try_from(vec![*count; cpus]).unwrap();
        stats.set(*row, values, 0).unwrap();
    }
    stats.pin(format!("{pin_dir}/DECAP_STATS")).unwrap();
    let mut addrs = HashMap::<_, DecapAddr, u32>::create(64, 0).unwrap();
    let (addr, family) = lb_userspace::addr::to_map(BACKEND_V4[0].parse().unwrap());
    let key = DecapAddr {
        addr,
        family,
        _pad: [0; 3],
    };
    addrs.insert(key, 1, 0).unwrap();
    addrs.pin(format!("{pin_dir}/DECAP_ADDRS")).unwrap();
}

#[test]
fn cp_decap_attach_over_a_previous_release_grows_its_counters_and_adds_the_allowlist() {
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    veth(&peer_ns, "peer0", &backend_ns, "be0");
    let pins = PinDir::new("decapold");
    let pin_dir = pins.0.as_str();
    pin_previous_release(pin_dir, &[(0, 3), (1, 2)]);
    let cpus = aya::util::nr_cpus().unwrap() as u64;

    // Before the new attach: what the old program does is shown as it is.
    let st = status(&backend_ns, pin_dir);
    assert_eq!(
        st["allow_any_source"], true,
        "the old program checks no source"
    );
    assert_eq!(st["counters"]["decapsulated"], 3 * cpus);
    assert_eq!(st["counters"]["pass_not_tunnel"], 2 * cpus);
    assert_eq!(
        st["counters"]["drop_untrusted_source"],
        serde_json::Value::Null
    );
    let text = lb_decap(&backend_ns, pin_dir, &["status"]).unwrap();
    assert!(
        text.contains("attached by an older lb-decap")
            && text.contains("- (not counted until the next attach)"),
        "{text}"
    );
    // Reading changed nothing on disk.
    assert!(!std::path::Path::new(&format!("{pin_dir}/DECAP_SOURCES")).exists());

    lb_decap(
        &backend_ns,
        pin_dir,
        &[
            "attach",
            "-i",
            "be0",
            "-a",
            BACKEND_V6[0],
            "-s",
            OUTER_SRC_V4,
        ],
    )
    .expect("attach over the old pins");
    let st = status(&backend_ns, pin_dir);
    assert_eq!(st["allow_any_source"], false);
    assert_eq!(
        st["allowed_sources"],
        serde_json::json!(["198.51.100.2/32"])
    );
    assert_eq!(
        st["addresses"],
        serde_json::json!([BACKEND_V4[0], BACKEND_V6[0]]),
        "the old address map is kept"
    );
    assert_eq!(
        st["counters"]["decapsulated"],
        3 * cpus,
        "counts carried over"
    );
    assert_eq!(st["counters"]["drop_untrusted_source"], 0);

    // The new rows count.
    let inner = udp4(CLIENT_V4, 40000, VIP_V4, 53, b"hello");
    let outer = outer_v4("192.0.2.66", BACKEND_V4[0], &inner);
    let f = frame(
        backend_ns.mac("be0"),
        peer_ns.mac("peer0"),
        None,
        ETH_IPV4,
        &cat(&outer, &inner),
    );
    peer_ns.send_frames("peer0", &[f]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status(&backend_ns, pin_dir)["counters"]["drop_untrusted_source"] != 1
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status(&backend_ns, pin_dir)["counters"]["drop_untrusted_source"],
        1
    );
    lb_decap(&backend_ns, pin_dir, &["detach", "-i", "be0"]).expect("detach");
}

/// Interfaces d1 and d2 of the backend namespace, joined by veths to p1
/// and p2 in the peer namespace, where test frames come from.
fn two_links(peer_ns: &Netns, backend_ns: &Netns) {
    veth(peer_ns, "p1", backend_ns, "d1");
    veth(peer_ns, "p2", backend_ns, "d2");
}

/// A program of an older lb-decap, as far as these tests go: it strips
/// tunnels to BACKEND_V4[0] from any source and counts into maps of its
/// own, not the pin directory's. Attached to `ifaces` through links
/// pinned under `pin_dir`, as an older `attach` left them.
fn older_program(ns: &Netns, pin_dir: &str, ifaces: &[&str]) -> Lb {
    use aya::programs::links::FdLink;
    let mut old = Lb::new();
    old.accept_tunnels(&[BACKEND_V4[0]], &[]);
    old.maps
        .set_decap_sources(&lb_userspace::decap_sources::DecapSources::Any)
        .unwrap();
    std::fs::create_dir_all(pin_dir).unwrap();
    for iface in ifaces {
        let prog = old.dp.decap().unwrap();
        let id = ns
            .enter(|| prog.attach(iface, XdpMode::Driver))
            .expect("attach the older program");
        let link = FdLink::try_from(prog.take_link(id).unwrap()).unwrap();
        link.pin(format!("{pin_dir}/link_{iface}"))
            .expect("pin the older program's link");
    }
    old
}

/// Swap `old`'s program into the link pinned for `iface`, as an older
/// lb-decap's `attach -i IFACE` would.
fn swap_in_older(old: &mut Lb, pin_dir: &str, iface: &str) {
    use aya::programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    };
    let pinned = PinnedLink::from_pin(format!("{pin_dir}/link_{iface}")).unwrap();
    let link = XdpLink::try_from(FdLink::from(pinned)).unwrap();
    old.dp.decap().unwrap().attach_to_link(link).unwrap();
}

/// A tunnel to BACKEND_V4[0] from outer source `src`, sent from the peer's
/// `peer_dev` to the backend's `dev`.
fn tunnel_frame(
    peer_ns: &Netns,
    peer_dev: &str,
    backend_ns: &Netns,
    dev: &str,
    src: &str,
) -> Vec<u8> {
    let inner = udp4(CLIENT_V4, 40000, VIP_V4, 53, b"hello");
    let outer = outer_v4(src, BACKEND_V4[0], &inner);
    frame(
        backend_ns.mac(dev),
        peer_ns.mac(peer_dev),
        None,
        ETH_IPV4,
        &cat(&outer, &inner),
    )
}

/// The `links` row `status --json` should show for a healthy `dev`.
fn healthy_link(backend_ns: &Netns, dev: &str, program_id: u64) -> serde_json::Value {
    serde_json::json!({
        "interface": dev,
        "state": "attached",
        "ifindex": backend_ns.ifindex(dev),
        "program_id": program_id,
        "same_program": true,
        "checks_sources": true,
        "counted": true,
        "error": null,
    })
}

/// An older release attached d1 and d2; the new `attach -i d1` must not
/// leave d2 on the old program, which would strip tunnels from anyone
/// (and count them elsewhere) while status shows the allowlist.
#[test]
fn cp_decap_attach_swaps_its_program_into_every_interface_of_the_pin_directory() {
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    two_links(&peer_ns, &backend_ns);
    let pins = PinDir::new("decapall");
    let pin_dir = pins.0.as_str();
    let _old = older_program(&backend_ns, pin_dir, &["d1", "d2"]);
    let old_id = backend_ns
        .xdp_program_id("d2")
        .expect("older program on d2");

    let out = lb_decap(
        &backend_ns,
        pin_dir,
        &[
            "attach",
            "-i",
            "d1",
            "-a",
            BACKEND_V4[0],
            "-s",
            OUTER_SRC_V4,
        ],
    )
    .expect("attach");
    let id = backend_ns.xdp_program_id("d1").expect("program on d1");
    assert_ne!(id, old_id);
    assert_eq!(backend_ns.xdp_program_id("d2"), Some(id), "d2's program");
    assert!(
        out.contains("lb_decap updated on d1 (native mode)")
            && out.contains("lb_decap updated on d2 too (native mode)"),
        "{out}"
    );
    let st = status(&backend_ns, pin_dir);
    assert_eq!(
        st["links"],
        serde_json::json!([
            healthy_link(&backend_ns, "d1", id),
            healthy_link(&backend_ns, "d2", id)
        ])
    );
    assert_eq!(st["warnings"], serde_json::json!([]));
    assert_eq!(st["allow_any_source"], false);

    // On d2 as on d1: the allowlist holds, and the pinned counters count.
    for (peer_dev, dev) in [("p2", "d2"), ("p1", "d1")] {
        let got = send_counted(
            &peer_ns,
            peer_dev,
            &backend_ns,
            pin_dir,
            &[
                tunnel_frame(&peer_ns, peer_dev, &backend_ns, dev, "192.0.2.66"),
                tunnel_frame(&peer_ns, peer_dev, &backend_ns, dev, OUTER_SRC_V4),
            ],
        );
        assert_eq!(
            got,
            vec![
                ("decapsulated".to_string(), 1),
                ("drop_untrusted_source".to_string(), 1)
            ],
            "{dev}"
        );
    }
}

/// A link left running another program is flagged by `status`, in JSON and
/// text, until the next `attach` puts it right.
#[test]
fn cp_decap_status_flags_an_interface_running_another_program() {
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    two_links(&peer_ns, &backend_ns);
    let pins = PinDir::new("decapodd");
    let pin_dir = pins.0.as_str();
    let attach = |dev: &str| {
        lb_decap(
            &backend_ns,
            pin_dir,
            &["attach", "-i", dev, "-a", BACKEND_V4[0], "-s", OUTER_SRC_V4],
        )
        .expect("attach")
    };
    attach("d1");
    attach("d2");
    let id = backend_ns.xdp_program_id("d1").expect("program on d1");
    assert_eq!(backend_ns.xdp_program_id("d2"), Some(id));

    let mut old = older_program(&backend_ns, pin_dir, &[]);
    swap_in_older(&mut old, pin_dir, "d2");
    let old_id = backend_ns
        .xdp_program_id("d2")
        .expect("older program on d2");
    let st = status(&backend_ns, pin_dir);
    assert_eq!(st["links"][0], healthy_link(&backend_ns, "d1", id));
    assert_eq!(
        st["links"][1],
        serde_json::json!({
            "interface": "d2",
            "state": "attached",
            "ifindex": backend_ns.ifindex("d2"),
            "program_id": old_id,
            "same_program": false,
            "checks_sources": false,
            "counted": false,
            "error": null,
        })
    );
    assert_eq!(
        st["allow_any_source"], true,
        "d2 accepts tunnels from anyone"
    );
    let warnings: Vec<&str> = st["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(&format!(
            "d2 runs program {old_id}, not the one the other interfaces run"
        )) && warnings[1]
            .contains("d2 runs an older lb-decap's program, which checks no tunnel source")
            && warnings[2].contains("d2 counts into a map"),
        "{warnings:#?}"
    );
    let text = lb_decap(&backend_ns, pin_dir, &["status"]).unwrap();
    assert!(
        text.contains(&format!(
            "d1           attached (ifindex {}), program {id}",
            backend_ns.ifindex("d1")
        )) && text.contains(&format!(
            "d2           attached (ifindex {}), program {old_id}",
            backend_ns.ifindex("d2")
        )) && text.contains("sources:    198.51.100.2/32 (NOT checked on d2")
            && text.contains(&format!("warning: d2 runs program {old_id}")),
        "{text}"
    );

    // The next attach, on either interface, swaps this build's program
    // into both.
    let out = attach("d1");
    assert!(out.contains("lb_decap updated on d2 too"), "{out}");
    let id = backend_ns.xdp_program_id("d1").expect("program on d1");
    assert_eq!(backend_ns.xdp_program_id("d2"), Some(id));
    let st = status(&backend_ns, pin_dir);
    assert_eq!(st["warnings"], serde_json::json!([]));
    assert_eq!(st["links"][1], healthy_link(&backend_ns, "d2", id));
}

/// `attach -i d1` also deals with d2's dead link (d2 deleted): replaced
/// by a new attachment once d2 is back, left dead and reported while it is
/// gone.
#[test]
fn cp_decap_attach_reports_or_replaces_the_dead_link_of_another_interface() {
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    two_links(&peer_ns, &backend_ns);
    let pins = PinDir::new("decapdead");
    let pin_dir = pins.0.as_str();
    let attach = |dev: &str| {
        let out = lb_decap_output(
            &backend_ns,
            pin_dir,
            &["attach", "-i", dev, "-a", BACKEND_V4[0], "-s", OUTER_SRC_V4],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    attach("d1");
    attach("d2");

    // Deleted and created again: attached anew.
    backend_ns.exec(&["ip", "link", "del", "d2"]);
    veth(&peer_ns, "p2", &backend_ns, "d2");
    let (stdout, stderr) = attach("d1");
    let id = backend_ns.xdp_program_id("d1").expect("program on d1");
    assert_eq!(backend_ns.xdp_program_id("d2"), Some(id), "d2's program");
    assert!(
        stdout.contains("lb_decap attached on d2 too (native mode)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("d2 was deleted and created again"),
        "{stderr}"
    );
    let got = send_counted(
        &peer_ns,
        "p2",
        &backend_ns,
        pin_dir,
        &[tunnel_frame(
            &peer_ns,
            "p2",
            &backend_ns,
            "d2",
            OUTER_SRC_V4,
        )],
    );
    assert_eq!(got, vec![("decapsulated".to_string(), 1)]);

    // Deleted for good: left dead, and said so by attach and status.
    backend_ns.exec(&["ip", "link", "del", "d2"]);
    let (stdout, stderr) = attach("d1");
    assert!(
        stdout.contains("updated on d1") && !stdout.contains("d2"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "warning: the link pinned for d2 is attached to nothing (no interface d2 now)"
        ),
        "{stderr}"
    );
    let st = status(&backend_ns, pin_dir);
    assert_eq!(st["links"][1]["state"], "dead");
    assert_eq!(st["links"][1]["ifindex"], serde_json::Value::Null);
    assert_eq!(
        st["warnings"],
        serde_json::json!([
            "the link pinned for d2 is attached to nothing (the interface was deleted): run \
             attach -i d2 once it is back, or detach -i d2"
        ])
    );
    lb_decap(&backend_ns, pin_dir, &["detach", "-i", "d2"]).expect("detach the dead link");
    assert_eq!(
        status(&backend_ns, pin_dir)["interfaces"],
        serde_json::json!(["d1"])
    );
}

/// lb-decap checks its pins as lbd does: a map of another layout (here an
/// address map with 8-byte values) is refused by the command that would
/// replace the program and by the one that only reads, naming the map and
/// what to do on a backend; no pin changes.
#[test]
fn cp_decap_tool_refuses_a_pinned_map_of_another_layout() {
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    veth(&peer_ns, "peer0", &backend_ns, "be0");
    let pins_at = PinDir::new("decaplayout");
    let pin_dir = pins_at.0.as_str();
    let attach_args = [
        "attach",
        "-i",
        "be0",
        "-a",
        BACKEND_V4[0],
        "-s",
        OUTER_SRC_V4,
    ];
    lb_decap(&backend_ns, pin_dir, &attach_args).expect("attach");
    let dir = std::path::Path::new(pin_dir);
    let addrs = dir.join(MAP_DECAP_ADDRS);
    let ours = pins::shape(&addrs);
    let original = pins::replace(
        &addrs,
        MapShape {
            value_size: ours.value_size + 4,
            ..ours
        },
    );
    let before = pins::objects(dir);
    let refusal = |doing: &str| {
        format!(
            "lb-decap: {doing} the data plane pinned at {pin_dir}: pinned map DECAP_ADDRS: \
             value size 8, this lb-decap needs 4: run the lb-decap version that pinned them, \
             or `lb-decap detach` from every interface first (tunnels go undecoded until the \
             next attach)\n"
        )
    };
    assert_eq!(
        lb_decap(&backend_ns, pin_dir, &attach_args).unwrap_err(),
        refusal("loading")
    );
    assert_eq!(
        lb_decap(&backend_ns, pin_dir, &["status"]).unwrap_err(),
        refusal("opening")
    );
    assert_eq!(pins::objects(dir), before, "a pin changed");

    pins::restore(&addrs, &original);
    assert_eq!(
        status(&backend_ns, pin_dir)["addresses"],
        serde_json::json!([BACKEND_V4[0]])
    );
}

/// One pin directory shared by the load balancer and lb-decap (a mistake
/// an operator can make): `attach` swaps lb_decap into the other links of
/// the directory, but not into one running the load balancer, which it
/// would cut off. It says so instead.
#[test]
fn cp_decap_attach_leaves_a_load_balancer_link_in_the_same_pin_directory_alone() {
    use aya::programs::links::FdLink;
    let peer_ns = Netns::new("peer");
    let backend_ns = Netns::new("be");
    two_links(&peer_ns, &backend_ns);
    let pins = PinDir::new("decapforeign");
    let pin_dir = pins.0.as_str();
    std::fs::create_dir_all(pin_dir).unwrap();
    let mut lb = Lb::new();
    let prog = lb.dp.lb().unwrap();
    let id = backend_ns
        .enter(|| prog.attach("d2", XdpMode::Driver))
        .expect("attach lb to d2");
    let link = FdLink::try_from(prog.take_link(id).unwrap()).unwrap();
    link.pin(format!("{pin_dir}/link_d2"))
        .expect("pin lb's link");
    let lb_id = backend_ns.xdp_program_id("d2").expect("lb on d2");

    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", backend_ns.name))
        .arg(binary("lb-decap"))
        .args(["--pin-dir", pin_dir])
        .args([
            "attach",
            "-i",
            "d1",
            "-a",
            BACKEND_V4[0],
            "-s",
            OUTER_SRC_V4,
        ])
        .output()
        .expect("run lb-decap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        backend_ns.xdp_program_id("d2"),
        Some(lb_id),
        "lb-decap replaced the load balancer on d2"
    );
    assert!(
        stderr.contains("d2 runs lb, not lb_decap, and is left alone"),
        "{stderr}"
    );
    assert_ne!(backend_ns.xdp_program_id("d1"), Some(lb_id));
}
