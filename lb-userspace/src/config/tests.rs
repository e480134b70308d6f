//! Whole configurations parsed and validated: defaults, ranges, and the
//! path and reason of each problem.

use super::*;

const GOOD: &str = r#"{
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2", "ipv6": "2001:db8::2"},
        "vips": [{
            "address": "198.51.100.10", "port": 80, "protocol": "tcp",
            "health_check": {"type": "http", "path": "/healthz", "interval_ms": 500, "timeout_ms": 200},
            "backends": [
                {"address": "198.51.100.101", "weight": 2},
                {"address": "2001:db8::101", "state": "drain", "mac": "02:00:5e:00:53:01"}
            ]
        }]
    }"#;

fn problem(text: &str) -> String {
    Config::from_json(text)
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn good_config_parses_with_defaults() {
    let c = Config::from_json(GOOD).unwrap();
    assert_eq!(c.interfaces[0].mode, AttachMode::Native);
    assert_eq!(c.tables.ring_size, 65537);
    assert!(c.next_hop.fib);
    assert_eq!(c.vips[0].backends[1].state, AdminState::Drain);
    assert_eq!(
        c.vips[0].backends[1].mac,
        Some(Mac([2, 0, 0x5e, 0, 0x53, 1]))
    );
    assert_eq!(c.vips[0].health_check.rise, 2);
    // Serialising and parsing again gives the same configuration.
    let again = Config::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn bad_address_names_its_path() {
    let text = GOOD.replace("198.51.100.101", "10.0.0.300");
    assert_eq!(
        problem(&text),
        "vips[0].backends[0].address: invalid IP address syntax"
    );
}

#[test]
fn unknown_key_names_its_path() {
    let text = GOOD.replace("\"weight\": 2", "\"wieght\": 2");
    let msg = problem(&text);
    assert!(
        msg.starts_with("vips[0].backends[0].wieght: unknown field `wieght`, expected one of"),
        "{msg}"
    );
}

#[test]
fn weight_out_of_range() {
    let text = GOOD.replace("\"weight\": 2", "\"weight\": 0");
    assert_eq!(
        problem(&text),
        "vips[0].backends[0].weight: 0 is out of range 1..=1000"
    );
}

#[test]
fn duplicate_vip() {
    let c = Config::from_json(GOOD).unwrap();
    let mut twice = c.clone();
    twice.vips.push(c.vips[0].clone());
    let msg = twice.validate().unwrap_err().to_string();
    assert_eq!(msg, "vips[1]: duplicate vip 198.51.100.10:80/tcp");
}

#[test]
fn tunnel_needs_a_source_of_the_backend_family() {
    let text = GOOD.replace(r#", "ipv6": "2001:db8::2""#, "");
    assert_eq!(
        problem(&text),
        "vips[0].backends[1].address: an IPv6 tunnel needs tunnel_source.ipv6"
    );
}

#[test]
fn ipv6_vip_needs_1280_bytes_inside_its_tunnel() {
    let v6 = GOOD.replace("198.51.100.10\"", "2001:db8::10\"");
    let with_mtu = |text: &str, mtu: u16| {
        let mut c: Config = serde_json::from_str(text).unwrap();
        c.mtu = mtu;
        c.validate()
    };
    // An IPv6 backend: 1280 + 40.
    assert!(with_mtu(&v6, 1320).is_ok());
    assert_eq!(
        with_mtu(&v6, 1319).unwrap_err().to_string(),
        "mtu: 1319 is too small for the IPv6 VIP vips[0]: IPv6 needs 1280 bytes inside the tunnel, with its 40-byte header at least 1320"
    );
    // IPv4 backends only: 1280 + 20.
    let v4_backends = v6.replace("2001:db8::101", "198.51.100.102");
    assert!(with_mtu(&v4_backends, 1300).is_ok());
    assert!(with_mtu(&v4_backends, 1299).is_err());
    // An IPv4 VIP, or L2 DSR (no tunnel), may use any mtu in range.
    assert!(with_mtu(GOOD, 576).is_ok());
    let l2 = v6.replace("\"port\": 80,", "\"port\": 80, \"forwarding\": \"l2_dsr\",");
    assert!(with_mtu(&l2, 576).is_ok());
}

#[test]
fn too_big_answers_default_and_range() {
    let c = Config::from_json(GOOD).unwrap();
    assert_eq!(
        c.too_big_answers,
        TooBigAnswers {
            per_second: 100,
            burst: 10
        }
    );
    let off = GOOD.replace(
        "\"vips\":",
        "\"too_big_answers\": {\"per_second\": 0}, \"vips\":",
    );
    assert_eq!(
        Config::from_json(&off).unwrap().too_big_answers.per_second,
        0
    );
    let no_burst = GOOD.replace(
        "\"vips\":",
        "\"too_big_answers\": {\"burst\": 0}, \"vips\":",
    );
    assert_eq!(
        problem(&no_burst),
        "too_big_answers.burst: 0 is out of range 1..=10000"
    );
}

#[test]
fn conn_promotions_default_to_a_tenth_of_the_table_per_second() {
    let c = Config::from_json(GOOD).unwrap();
    assert_eq!(c.conn_promotions.per_second, None);
    assert_eq!(
        c.promotions_per_second(),
        lb_common::maps::DEFAULT_CONN_ENTRIES / 10
    );
    let set = GOOD.replace(
        "\"vips\":",
        "\"conn_promotions\": {\"per_second\": 5000}, \"vips\":",
    );
    assert_eq!(
        Config::from_json(&set).unwrap().promotions_per_second(),
        5000
    );
    let zero = GOOD.replace(
        "\"vips\":",
        "\"conn_promotions\": {\"per_second\": 0}, \"vips\":",
    );
    assert_eq!(
        problem(&zero),
        "conn_promotions.per_second: 0 is out of range 1..=100000000"
    );
}

#[test]
fn syntax_error_gives_line_and_column() {
    let msg = problem("{\n \"interfaces\": [,]\n}");
    assert!(msg.contains("invalid JSON at line 2"), "{msg}");
}

#[test]
fn every_problem_is_reported() {
    let text = GOOD
        .replace("\"weight\": 2", "\"weight\": 5000")
        .replace("\"timeout_ms\": 200", "\"timeout_ms\": 900")
        .replace("\"ring_size\": 65537", "");
    let err = Config::from_json(&text).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "vips[0].health_check.timeout_ms",
            "vips[0].backends[0].weight"
        ]
    );
}

#[test]
fn shipped_example_is_valid() {
    let c = Config::from_json(include_str!("../../../examples/lbd.json")).unwrap();
    assert_eq!(c.vips.len(), 2);
}

#[test]
fn mac_syntax() {
    assert!("02:00:5e:00:53:01".parse::<Mac>().is_ok());
    for bad in [
        "02:00:5e:00:53",
        "02:00:5e:00:53:0g",
        "0200.5e00.5301",
        "2:0:5e:0:53:1",
    ] {
        assert!(bad.parse::<Mac>().is_err(), "{bad}");
    }
}

/// `GOOD` with the first VIP's port and health check replaced.
fn with_check(port: u16, check: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    v["vips"][0]["port"] = port.into();
    v["vips"][0]["health_check"] = check;
    v.to_string()
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_json(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(Problem::to_string).collect(),
    }
}

#[test]
fn portless_vip_check_needs_its_own_port() {
    use serde_json::json;
    for kind in ["tcp", "http", "udp"] {
        let mut check = json!({"type": kind});
        if kind == "udp" {
            check["payload"] = "ping".into();
        }
        assert_eq!(
            problems(&with_check(0, check.clone())),
            [
                "vips[0].health_check.port: required for a port-less VIP (port 0): the check would probe port 0"
            ],
            "{kind}"
        );
        check["port"] = 8080.into();
        assert_eq!(problems(&with_check(0, check.clone())), [""; 0], "{kind}");
        // Port 0 given explicitly is no better, port-less VIP or not.
        check["port"] = 0.into();
        for vip_port in [0, 80] {
            assert_eq!(
                problems(&with_check(vip_port, check.clone())),
                ["vips[0].health_check.port: 0 cannot be probed: give the port the backends serve"],
                "{kind}"
            );
        }
    }
    // Without checks a port-less VIP needs no check port.
    assert_eq!(problems(&with_check(0, json!({"type": "none"}))), [""; 0]);
}

#[test]
fn http_path_and_host_must_fit_in_a_request() {
    use serde_json::json;
    for path in ["/a b", "/x HTTP/1.1\r\nX-Evil: 1", "/tab\t", "/nul\u{0}"] {
        assert_eq!(
            problems(&with_check(80, json!({"type": "http", "path": path}))),
            [format!(
                "vips[0].health_check.path: {path:?} contains whitespace or a control character"
            )],
        );
    }
    for host in ["web example", "web.example\r\nX-Evil: 1", "\u{7f}"] {
        assert_eq!(
            problems(&with_check(80, json!({"type": "http", "host": host}))),
            [format!(
                "vips[0].health_check.host: {host:?} contains whitespace or a control character"
            )],
        );
    }
    assert_eq!(
        problems(&with_check(80, json!({"type": "http", "host": ""}))),
        ["vips[0].health_check.host: must not be empty"],
    );
    // A path that breaks both rules gets both reasons.
    assert_eq!(
        problems(&with_check(80, json!({"type": "http", "path": "a b"}))).len(),
        2
    );
    let fine =
        json!({"type": "http", "path": "/healthz?full=1&x=%20", "host": "[2001:db8::1]:8080"});
    assert_eq!(problems(&with_check(80, fine)), [""; 0]);
}

#[test]
fn a_none_check_is_validated_like_any_other() {
    use serde_json::json;
    let cases = [
        (
            json!({"type": "none", "interval_ms": 50, "timeout_ms": 20}),
            "vips[0].health_check.interval_ms: 50 is out of range 100..=3600000",
        ),
        (
            json!({"type": "none", "timeout_ms": 5000}),
            "vips[0].health_check.timeout_ms: 5000 must be at least 10 and at most interval_ms (1000)",
        ),
        (
            json!({"type": "none", "fall": 0}),
            "vips[0].health_check.fall: 0 is out of range 1..=100",
        ),
        (
            json!({"type": "none", "path": "/healthz"}),
            "vips[0].health_check.path: does not apply to a none check",
        ),
        // `none` is the default type: a forgotten `type` is caught too.
        (
            json!({"host": "web.example"}),
            "vips[0].health_check.host: does not apply to a none check",
        ),
        (
            json!({"type": "none", "payload": "ping"}),
            "vips[0].health_check.payload: does not apply to a none check",
        ),
        (
            json!({"type": "none", "expect": "pong"}),
            "vips[0].health_check.expect: does not apply to a none check",
        ),
        (
            json!({"type": "none", "port": 8080}),
            "vips[0].health_check.port: does not apply to a none check",
        ),
    ];
    for (check, message) in cases {
        assert_eq!(
            problems(&with_check(80, check.clone())),
            [message],
            "{check}"
        );
    }
    assert_eq!(problems(&with_check(80, json!({"type": "none"}))), [""; 0]);
    assert_eq!(problems(&with_check(80, json!({}))), [""; 0]);
}

#[test]
fn l2_dsr_without_fib_needs_every_backend_mac() {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    v["vips"][0]["forwarding"] = "l2_dsr".into();
    v["next_hop"] = serde_json::json!({"fib": false, "gateway_mac": "02:00:5e:00:53:fe"});
    assert_eq!(
        problems(&v.to_string()),
        [
            "vips[0].backends[0].mac: required for an l2_dsr VIP when next_hop.fib is false: next_hop.gateway_mac is a router, which would send the frame back to the VIP"
        ]
    );
    // With the FIB, lbd asks the kernel's routes instead (onlink.rs).
    v["next_hop"]["fib"] = true.into();
    assert_eq!(problems(&v.to_string()), [""; 0]);
}

#[test]
fn through_tunnel_is_on_by_default_for_ipip_vips_with_a_check() {
    use serde_json::json;
    let cases = [
        ("ipip", json!({"type": "http"}), true),
        (
            "ipip",
            json!({"type": "http", "through_tunnel": false}),
            false,
        ),
        (
            "ipip",
            json!({"type": "http", "through_tunnel": true}),
            true,
        ),
        ("ipip", json!({"type": "none"}), false),
        ("l2_dsr", json!({"type": "http"}), false),
    ];
    for (forwarding, check, on) in cases {
        let mut v: serde_json::Value = serde_json::from_str(&with_check(80, check)).unwrap();
        v["vips"][0]["forwarding"] = forwarding.into();
        let c = Config::from_json(&v.to_string()).unwrap();
        assert_eq!(c.vips[0].checks_through_tunnel(), on, "{v}");
    }
}

#[test]
fn through_tunnel_is_refused_where_there_is_nothing_to_probe_through() {
    use serde_json::json;
    let mut v: serde_json::Value = serde_json::from_str(&with_check(
        80,
        json!({"type": "http", "through_tunnel": true}),
    ))
    .unwrap();
    v["vips"][0]["forwarding"] = "l2_dsr".into();
    assert_eq!(
        problems(&v.to_string()),
        [
            "vips[0].health_check.through_tunnel: does not apply to l2_dsr forwarding: there is no tunnel to probe through"
        ]
    );
    assert_eq!(
        problems(&with_check(
            80,
            json!({"type": "none", "through_tunnel": false})
        )),
        ["vips[0].health_check.through_tunnel: does not apply to a none check"]
    );
}

#[test]
fn through_tunnel_of_a_vip_with_backends_of_the_other_family_needs_its_source() {
    use serde_json::json;
    // An IPv6 VIP whose only backend is IPv4: the probe's inner packet
    // is IPv6, from tunnel_source.ipv6.
    let mut v: serde_json::Value =
        serde_json::from_str(&with_check(80, json!({"type": "tcp"}))).unwrap();
    v["tunnel_source"] = json!({"ipv4": "198.51.100.2"});
    v["vips"][0]["address"] = "2001:db8::10".into();
    v["vips"][0]["backends"] = json!([{"address": "198.51.100.101"}]);
    assert_eq!(
        problems(&v.to_string()),
        [
            "vips[0].health_check.through_tunnel: the probe of an IPv6 VIP through the tunnel is sent from tunnel_source.ipv6: set it, or set through_tunnel to false"
        ]
    );
    v["vips"][0]["health_check"]["through_tunnel"] = false.into();
    assert_eq!(problems(&v.to_string()), [""; 0]);
}

#[test]
fn announce_is_off_unless_given_and_refuses_the_hosts_tables_and_others_protocols() {
    assert_eq!(Config::from_json(GOOD).unwrap().announce, None);
    let with =
        |announce: &str| GOOD.replace("\"vips\":", &format!("\"announce\": {announce}, \"vips\":"));
    assert_eq!(
        Config::from_json(&with("{}")).unwrap().announce,
        Some(Announce {
            table: 200,
            protocol: 201
        })
    );
    assert_eq!(
        problems(&with(r#"{"table": 254, "protocol": 12}"#)),
        [
            "announce.table: 254 is the kernel's main table, which the host routes by: give lbd a table of its own, which no ip rule looks up",
            "announce.protocol: 12 is BIRD's: BIRD takes routes of that number for its own and removes them: give lbd a number no other program writes routes with",
        ]
    );
    for table in [0, 253, 255] {
        assert_eq!(
            problems(&with(&format!("{{\"table\": {table}}}"))).len(),
            1,
            "{table}"
        );
    }
    for protocol in [0, 2, 4, 11, 42, 186, 198] {
        assert_eq!(
            problems(&with(&format!("{{\"protocol\": {protocol}}}"))).len(),
            1,
            "{protocol}"
        );
    }
    for (table, protocol) in [(1, 5), (252, 199), (1000, 250), (u32::MAX, 255)] {
        let text = with(&format!("{{\"table\": {table}, \"protocol\": {protocol}}}"));
        assert_eq!(problems(&text), [""; 0], "{table} {protocol}");
    }
    assert!(
        problems(&with(r#"{"protocol": 256}"#))[0].starts_with("announce.protocol: invalid value"),
        "a protocol number is one byte"
    );
}

#[test]
fn ring_size_must_be_prime() {
    let mut c = Config::from_json(GOOD).unwrap();
    c.tables.ring_size = 65536;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "tables.ring_size: 65536 is not a prime of at least 7"
    );
}

/// A stateless VIP (second chance on, ipip, TCP, static balancing) with
/// `edit` applied; its problems.
fn stateless_problems(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(&with_check(80, serde_json::json!({"type": "none"}))).unwrap();
    v["second_chance"] = serde_json::json!({"enabled": true});
    v["next_hop"] = serde_json::json!({"fib": true});
    v["vips"][0]["stateless"] = true.into();
    // Of one family (GOOD mixes them).
    v["vips"][0]["backends"]
        .as_array_mut()
        .unwrap()
        .retain(|b| !b["address"].as_str().unwrap().contains(':'));
    edit(&mut v);
    problems(&v.to_string())
}

#[test]
fn stateless_needs_everything_the_second_hop_needs_and_says_which() {
    use serde_json::json;
    assert_eq!(stateless_problems(|_| {}), [""; 0]);
    assert_eq!(
        stateless_problems(|v| v["second_chance"]["enabled"] = false.into()),
        [
            "vips[0].stateless: needs second_chance.enabled: without the second hop a stateless VIP's flows break whenever their ring slot moves"
        ]
    );
    assert_eq!(
        stateless_problems(|v| v["vips"][0]["forwarding"] = "l2_dsr".into()),
        ["vips[0].stateless: needs ipip forwarding: l2_dsr has no tunnel to carry a second hop"]
    );
    assert_eq!(
        stateless_problems(|v| v["vips"][0]["protocol"] = "udp".into()),
        [
            "vips[0].stateless: needs protocol tcp: the second hop asks the backend for a TCP socket, so UDP flows would move with their ring slot"
        ]
    );
    assert_eq!(
        stateless_problems(|v| v["vips"][0]["balancing"] = json!({
            "mode": "load", "source": "prometheus",
            "prometheus": {"metrics": {"queue": 1}, "capacity": 8}
        })),
        [
            "vips[0].stateless: cannot be combined with balancing.mode load: the controller moves ring slots every few seconds, and a stateless VIP keeps a flow through one move only"
        ]
    );
    assert_eq!(
        stateless_problems(|v| {
            v["vips"][0]["drain_timeout_s"] = 30.into();
            v["vips"][0]["second_chance_s"] = 29.into();
        }),
        [
            "vips[0].second_chance_s: 29 is shorter than drain_timeout_s (30): a stateless VIP keeps a draining backend's flows only through the second hop"
        ]
    );
    // No window at all, set or inherited from a drain timeout of 0.
    assert_eq!(
        stateless_problems(|v| v["vips"][0]["second_chance_s"] = 0.into()),
        [
            "vips[0].second_chance_s: 0 turns the second hop off: a stateless VIP needs it, or its flows break whenever their ring slot moves"
        ]
    );
    assert_eq!(
        stateless_problems(|v| v["vips"][0]["drain_timeout_s"] = 0.into()),
        [
            "vips[0].drain_timeout_s: 0 makes the second-chance window (second_chance_s, unset) 0 too, which turns the second hop off: a stateless VIP needs it, or its flows break whenever their ring slot moves"
        ]
    );
    // Backends of both families: the hop cannot cross.
    assert_eq!(
        stateless_problems(|v| {
            v["vips"][0]["backends"]
                .as_array_mut()
                .unwrap()
                .push(json!({"address": "2001:db8::101"}));
        }),
        [
            "vips[0].stateless: needs backends of one address family: the second hop is carried in the outer header's family, so a flow whose slot moves to a backend of the other family would break"
        ]
    );
    // A window as long as the drain, or longer, is fine; so is the
    // default (the drain timeout).
    for window in [30, 31] {
        assert_eq!(
            stateless_problems(|v| {
                v["vips"][0]["drain_timeout_s"] = 30.into();
                v["vips"][0]["second_chance_s"] = window.into();
            }),
            [""; 0],
            "{window}"
        );
    }
    // A VIP that is not stateless is held to none of it.
    assert_eq!(
        stateless_problems(|v| {
            v["vips"][0]["stateless"] = false.into();
            v["second_chance"]["enabled"] = false.into();
            v["vips"][0]["protocol"] = "udp".into();
        }),
        [""; 0]
    );
}
