//! `vips[].balancing` with a reported load (`prometheus`, `header`)
//! and hard limits.

use serde_json::{Value, json};

use super::*;

/// A VIP on port 80 with an HTTP check and `balancing`.
fn with_balancing(balancing: Value) -> Vec<String> {
    let v = json!({
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "vips": [{
            "address": "198.51.100.10", "port": 80, "protocol": "tcp",
            "health_check": {"type": "http", "path": "/health"},
            "balancing": balancing,
            "backends": [{"address": "198.51.100.101"}]
        }]
    });
    match Config::from_json(&v.to_string()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(Problem::to_string).collect(),
    }
}

fn vllm() -> Value {
    json!({
        "mode": "load", "source": "prometheus",
        "prometheus": {
            "metrics": {"vllm:num_requests_running": 1, "vllm:num_requests_waiting": 1},
            "capacity": 32
        },
        "hard_limit": {"metric": "vllm:num_requests_waiting", "above": 16}
    })
}

#[test]
fn a_vllm_prometheus_source_with_a_hard_limit_is_accepted_with_defaults() {
    assert_eq!(with_balancing(vllm()), [""; 0]);
    let mut b: Balancing = serde_json::from_value(vllm()).unwrap();
    let p = b.prometheus.take().unwrap();
    assert_eq!(
        (p.path.as_str(), p.timeout_ms, p.port),
        ("/metrics", 500, None)
    );
    assert_eq!(b.hard_limit.unwrap().resume_level(), 16.0 * 0.8);
    let header = json!({"mode": "load", "source": "header"});
    assert_eq!(with_balancing(header.clone()), [""; 0]);
    let b: Balancing = serde_json::from_value(header).unwrap();
    assert_eq!(b.report_header().as_deref(), Some("endpoint-load-metrics"));
}

#[test]
fn source_blocks_must_fit_the_source_and_mode() {
    let mut b = vllm();
    b["source"] = "flows".into();
    assert_eq!(
        with_balancing(b),
        [
            "vips[0].balancing.prometheus: does not apply to source flows",
            "vips[0].balancing.hard_limit: needs a value the backends report: source prometheus or header",
        ]
    );
    let mut b = vllm();
    b["mode"] = "static".into();
    assert_eq!(
        with_balancing(b),
        [
            "vips[0].balancing.source: prometheus applies to mode load only: mode static balances by the configured weights",
            "vips[0].balancing.hard_limit: applies to mode load only: mode static balances by the configured weights",
        ]
    );
    assert_eq!(
        with_balancing(json!({"mode": "load", "source": "prometheus"})),
        [
            "vips[0].balancing.prometheus: source prometheus needs the gauges to scrape: give prometheus.metrics"
        ]
    );
    assert_eq!(
        with_balancing(json!({"mode": "load", "source": "header", "flows_per_weight": 10})),
        ["vips[0].balancing.flows_per_weight: does not apply to source header"]
    );
}

#[test]
fn the_header_source_needs_an_http_check() {
    let v = json!({
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "vips": [{
            "address": "198.51.100.10", "port": 80, "protocol": "tcp",
            "health_check": {"type": "tcp"},
            "balancing": {"mode": "load", "source": "header"},
            "backends": [{"address": "198.51.100.101"}]
        }]
    });
    let e = Config::from_json(&v.to_string()).unwrap_err();
    assert_eq!(
        e.problems[0].to_string(),
        "vips[0].balancing.source: header is read from the HTTP health check's response: needs health_check.type http, not tcp"
    );
}

/// A limit a backend could never come back under (a gauge does not go
/// below 0) is refused, not left to hold the backend out for good.
#[test]
fn a_hard_limit_of_zero_or_less_is_refused() {
    for (limit, problem) in [
        (
            json!({"metric": "vllm:num_requests_waiting", "above": 0}),
            "vips[0].balancing.hard_limit.above: 0 must be a number above 0 (a backend over the limit comes back under 0.8 of it)",
        ),
        (
            json!({"metric": "vllm:num_requests_waiting", "above": -3}),
            "vips[0].balancing.hard_limit.above: -3 must be a number above 0 (a backend over the limit comes back under 0.8 of it)",
        ),
        (
            json!({"metric": "vllm:num_requests_waiting", "above": 4, "resume_below": 0}),
            "vips[0].balancing.hard_limit.resume_below: 0 must be a number above 0 and at most above (4)",
        ),
    ] {
        let mut b = vllm();
        b["hard_limit"] = limit;
        assert_eq!(with_balancing(b), [problem]);
    }
}

#[test]
fn bad_prometheus_header_and_limit_fields_name_their_path() {
    let mut b = vllm();
    b["prometheus"]["metrics"] = json!({"vllm:x{a=b}": 1});
    b["prometheus"]["capacity"] = 0.into();
    b["prometheus"]["timeout_ms"] = 5000.into();
    b["prometheus"]["path"] = "metrics".into();
    b["prometheus"]["port"] = 0.into();
    b["hard_limit"]["resume_below"] = 20.into();
    assert_eq!(
        with_balancing(b),
        [
            r#"vips[0].balancing.prometheus.metrics["vllm:x{a=b}"]: "vllm:x{a=b}" is not a metric selector (like name or name{label="value"}): " was expected"#,
            "vips[0].balancing.prometheus.capacity: 0 must be a number above 0",
            "vips[0].balancing.prometheus.timeout_ms: 5000 must be at least 10 and at most the interval (2000)",
            r#"vips[0].balancing.prometheus.path: "metrics" must start with / and contain no whitespace or control character"#,
            "vips[0].balancing.prometheus.port: 0 cannot be scraped: give the port the backends serve metrics on",
            "vips[0].balancing.hard_limit.resume_below: 20 must be a number above 0 and at most above (16)",
        ]
    );
    let b = json!({
        "mode": "load", "source": "header",
        "header": {"name": "bad header", "key": "a=b"},
        "hard_limit": {"metric": "", "above": 1}
    });
    assert_eq!(
        with_balancing(b),
        [
            r#"vips[0].balancing.header.name: "bad header" is not an HTTP header name"#,
            r#"vips[0].balancing.header.key: "a=b" is not a report key (like utilization or named_metrics.waiting)"#,
            r#"vips[0].balancing.hard_limit.metric: "" is not a report key (like named_metrics.waiting)"#,
        ]
    );
    let e = Config::from_json(
        &json!({
            "interfaces": [{"name": "eth0"}],
            "vips": [{"address": "198.51.100.10", "port": 80, "protocol": "tcp",
              "balancing": {"mode": "load", "source": "prometheus",
                 "prometheus": {"metrics": {"m": 1}, "scrape": true}}}]
        })
        .to_string(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("vips[0].balancing.prometheus.scrape: unknown field `scrape`"),
        "{e}"
    );
}
