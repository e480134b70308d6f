//! Real sockets through the real load balancer: a client namespace talks to
//! the VIP, lbd runs the LB namespace, backends decapsulate with lb_decap
//! and answer directly (DSR). See `lb_tests::topology`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use lb_tests::{
    backend_server::{BackendServer, digest},
    http_client,
    lbd::{Lbd, Paths},
    topology::{CLIENT, CLIENT6, Topology, VIP, VIP6},
};
use serde_json::json;

fn start_servers(topo: &Topology) -> Vec<BackendServer> {
    topo.backends
        .iter()
        .map(|b| {
            BackendServer::start(
                &b.ns,
                &b.name,
                "0.0.0.0:80".parse().unwrap(),
                // UDP binds the VIP itself, so replies leave with it as source.
                SocketAddr::from((VIP, 53)),
            )
        })
        .collect()
}

fn wait_healthy(lbd: &Lbd, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = lbd.json(&["backend", "list"]);
        let up = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["health"] == "up")
            .count();
        if up == n {
            return;
        }
        assert!(Instant::now() < deadline, "backends not healthy: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP GET to the VIP on a new connection; the backend's name.
fn get(path: &str) -> Result<String, String> {
    let addr = SocketAddr::from((VIP, 80));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let body = response.split("\r\n\r\n").nth(1).ok_or("no body")?;
    Ok(body.trim().to_string())
}

#[test]
fn e2e_http_through_ipip_dsr_reaches_every_backend_evenly() {
    let topo = Topology::new(3);
    let _servers = start_servers(&topo);
    let check =
        json!({"type": "http", "port": 80, "path": "/", "interval_ms": 200, "timeout_ms": 100});
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("e2ehttp"),
        topo.lbd_config(80, "tcp", check),
    );
    wait_healthy(&lbd, 3);

    const REQUESTS: usize = 300;
    let counts: BTreeMap<String, usize> = topo.client.enter(|| {
        let mut counts = BTreeMap::new();
        for i in 0..REQUESTS {
            let name = get("/")
                .unwrap_or_else(|e| panic!("request {i} failed: {e}\nlbd log:\n{}", lbd.log()));
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    });
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2", "b3"],
        "{counts:?}"
    );
    // Equal weights: each backend within 40% of its share of 300 flows
    // (a binomial standard deviation is about 8 requests).
    for (name, n) in &counts {
        assert!(
            (60..=140).contains(n),
            "{name} got {n} of {REQUESTS}: {counts:?}"
        );
    }
    let stats = lbd.json(&["status"]);
    assert_eq!(
        stats["counters"]["drop_too_big"],
        serde_json::Value::Null,
        "{stats}"
    );
}

#[test]
fn e2e_udp_through_ipip_dsr_gets_echoes_from_backends() {
    let topo = Topology::new(3);
    let _servers = start_servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("e2eudp"),
        topo.lbd_config(53, "udp", json!({"type": "none"})),
    );
    let names: Vec<String> = topo.client.enter(|| {
        (0..60)
            .map(|i| {
                let s = UdpSocket::bind((CLIENT, 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send_to(format!("q{i}").as_bytes(), (VIP, 53)).unwrap();
                let mut buf = [0u8; 256];
                let (n, from) = s
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("no echo for q{i}: {e}\n{}", lbd.log()));
                assert_eq!(
                    from,
                    SocketAddr::from((VIP, 53)),
                    "the reply comes from the VIP (DSR)"
                );
                let reply = String::from_utf8_lossy(&buf[..n]).to_string();
                let (name, payload) = reply.split_once(':').unwrap();
                assert_eq!(payload, format!("q{i}"));
                name.to_string()
            })
            .collect()
    });
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), 3, "{names:?}");
}

/// An IPv4 VIP on IPv6 backends: clients' packets and the check's probe
/// through the tunnel both travel IPv4 in IPv6 (the probe from
/// `tunnel_source.ipv4` inside, `tunnel_source.ipv6` outside), and the
/// backends answer over IPv4.
#[test]
fn e2e_ipv4_vip_on_ipv6_backends_is_checked_and_served_through_ip6_tunnels() {
    let topo = Topology::new(3);
    // HTTP on [::]:80: the direct check goes to the IPv6 address.
    let _servers: Vec<BackendServer> = topo.backends.iter().map(|b| b.serve()).collect();
    let check = json!({"type": "http", "interval_ms": 200, "timeout_ms": 100});
    let mut config = topo.lbd_config(80, "tcp", check);
    config["vips"][0]["backends"] = topo
        .backends
        .iter()
        .map(|b| json!({"address": b.addr6.to_string()}))
        .collect::<Vec<_>>()
        .into();
    let lbd = Lbd::start(&topo.lb, Paths::new("v4in6"), config);
    wait_healthy(&lbd, 3);
    for b in lbd.json(&["backend", "list"]).as_array().unwrap() {
        assert_eq!(
            b["last_check"], "HTTP 200; through the tunnel: SYN-ACK",
            "{b}"
        );
    }
    let before: u64 = (0..3).map(|i| topo.tunnel_packets(i)).sum();
    let names: std::collections::BTreeSet<String> = topo.client.enter(|| {
        (0..60)
            .map(|i| get("/").unwrap_or_else(|e| panic!("request {i}: {e}")))
            .collect()
    });
    assert_eq!(names.len(), 3, "{names:?}");
    let after: u64 = (0..3).map(|i| topo.tunnel_packets(i)).sum();
    assert!(
        after >= before + 60 * 3,
        "{before} -> {after} tunnel packets"
    );
}

/// The path to the backends carries 1400 bytes, the client's link 1500, and
/// the backends advertise the MSS of a 1500-byte tunnel (1440): the
/// client's full segments are too big for the tunnel until path-MTU
/// discovery shrinks them.
const TUNNEL_MTU: u16 = 1400;
/// What the client must learn: the tunnel MTU minus the IPv4 outer header
/// (the backends have IPv4 addresses).
const LEARNED_MTU: usize = 1380;

/// The topology's lbd configuration for one VIP on `port`/`protocol`, no
/// health checks, `mtu` 1400.
fn small_tunnel_config(topo: &Topology, port: u16, protocol: &str) -> serde_json::Value {
    let mut config = topo.lbd_config(port, protocol, json!({"type": "none"}));
    config["mtu"] = TUNNEL_MTU.into();
    config
}

fn answered(lbd: &Lbd) -> u64 {
    let stats = lbd.json(&["status"]);
    stats["counters"]["answer_too_big"].as_u64().unwrap_or(0)
}

#[test]
fn e2e_client_upload_bigger_than_the_tunnel_mtu_completes_by_path_mtu_discovery() {
    let topo = Topology::new(2);
    let _servers = start_servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("e2epmtu"),
        small_tunnel_config(&topo, 80, "tcp"),
    );
    // 512 KiB that no shifted or repeated segment reproduces.
    let body: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let reply = topo
        .client
        .enter(|| http_client::post(VIP.into(), 80, "/upload", &body, Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("upload failed: {e}\nlbd log:\n{}", lbd.log()));
    let fields: Vec<&str> = reply.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        [body.len().to_string(), format!("{:016x}", digest(&body))],
        "{reply}"
    );
    // The client learned the tunnel's MTU from the load balancer's answer.
    let route = topo
        .client
        .exec(&["ip", "-4", "route", "get", &VIP.to_string()]);
    assert!(route.contains(&format!("mtu {LEARNED_MTU}")), "{route}");
    assert!(answered(&lbd) >= 1, "{}", lbd.json(&["status"]));
}

/// An IP-level socket option of `s` (`level`, `name`).
fn sockopt(s: &UdpSocket, level: i32, name: i32) -> i32 {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and an int-sized buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt({level}, {name})");
    value
}

fn set_sockopt(s: &UdpSocket, level: i32, name: i32, value: i32) {
    // SAFETY: a valid socket, and an int with its length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt({level}, {name})");
}

/// A UDP socket connected to `to` that never fragments (IP_PMTUDISC_DO):
/// send one datagram of `too_big` bytes, which the load balancer must
/// answer, and wait until the socket's path MTU is `LEARNED_MTU`. Then a
/// datagram of that size fails with EMSGSIZE at once.
fn learn_path_mtu(to: SocketAddr, too_big: usize) -> UdpSocket {
    let (level, discover, mtu) = if to.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_MTU)
    };
    let from: SocketAddr = if to.is_ipv4() {
        (CLIENT, 0).into()
    } else {
        (CLIENT6, 0).into()
    };
    let s = UdpSocket::bind(from).unwrap();
    s.connect(to).unwrap();
    // IP_PMTUDISC_DO and IPV6_PMTUDISC_DO are both 2.
    set_sockopt(&s, level, discover, libc::IP_PMTUDISC_DO);
    assert_eq!(
        sockopt(&s, level, mtu),
        1500,
        "before: the client's link MTU"
    );
    s.send(&vec![b'x'; too_big])
        .expect("the first datagram leaves");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sockopt(&s, level, mtu) as usize != LEARNED_MTU {
        assert!(
            Instant::now() < deadline,
            "{to}: path MTU still {} after 5 s",
            sockopt(&s, level, mtu)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The answer is also reported on the socket once; clear it.
    let _ = s.take_error();
    let err = s
        .send(&vec![b'x'; too_big])
        .expect_err("a datagram over the learned MTU must not leave");
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{err}");
    s
}

#[test]
fn e2e_udp_sender_with_df_learns_the_tunnel_mtu_ipv4_and_ipv6() {
    let topo = Topology::new(1);
    let _servers = start_servers(&topo);
    let mut config = small_tunnel_config(&topo, 53, "udp");
    // The same service on the IPv6 VIP, tunnelled to the IPv4 backend.
    let mut v6 = config["vips"][0].clone();
    v6["address"] = VIP6.to_string().into();
    config["vips"].as_array_mut().unwrap().push(v6);
    let lbd = Lbd::start(&topo.lb, Paths::new("e2epmtuudp"), config);
    topo.client.enter(|| {
        // 1452 bytes of payload: a 1480-byte IPv4 packet.
        let s = learn_path_mtu((VIP, 53).into(), 1452);
        // What fits the learned MTU still goes through, to the backend.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let fits = vec![b'y'; LEARNED_MTU - 28];
        s.send(&fits).expect("a datagram that fits");
        let mut buf = [0u8; 2048];
        let n = s
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no echo: {e}\n{}", lbd.log()));
        assert_eq!(&buf[..n], [b"b1:".as_slice(), &fits].concat());
        // 1432 bytes of payload: a 1480-byte IPv6 packet.
        learn_path_mtu((VIP6, 53).into(), 1432);
    });
    assert!(answered(&lbd) >= 2, "{}", lbd.json(&["status"]));
}
