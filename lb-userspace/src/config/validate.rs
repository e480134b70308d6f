//! Validation: everything serde cannot check (ranges, uniqueness,
//! consistency), each problem reported with its field path and reason
//! (`Problem`, `ConfigError`), and the limits those checks enforce.

use std::{collections::HashSet, fmt, net::IpAddr};

use super::schema::{
    Balancing, BalancingMode, CheckKind, Config, Forwarding, HardLimit, HeaderLoad, HealthCheck,
    LoadSource, PrometheusLoad, Protocol, TunnelSource, Vip,
};

/// The IPv6 minimum link MTU (RFC 8200 section 5).
const IPV6_MIN_MTU: u32 = 1280;

/// Most promotions per second that can be configured.
pub const MAX_PROMOTIONS_PER_SECOND: u32 = 100_000_000;

/// Most ICMP too-big answers per second per CPU that can be configured.
pub const MAX_TOO_BIG_PER_SECOND: u32 = 1_000_000;
/// Largest burst of ICMP too-big answers that can be configured.
pub const MAX_TOO_BIG_BURST: u32 = 10_000;

/// Largest backend weight; weights are relative, so this bounds the ratio.
pub const MAX_WEIGHT: u32 = 1000;

/// Why lbd's routes cannot go in kernel table `table`, if they cannot:
/// the tables every host routes by.
fn reserved_table(table: u32) -> Option<&'static str> {
    match table {
        0 => Some("is no table (the kernel reads 0 as unspecified)"),
        253 => Some("is the kernel's default table, which the host routes by"),
        254 => Some("is the kernel's main table, which the host routes by"),
        255 => Some("is the kernel's local table, which the host routes by"),
        _ => None,
    }
}

/// Why lbd's routes cannot carry route protocol `protocol`, if they
/// cannot: the kernel's own numbers, and those of routing programs that
/// take the routes of their number for their own (and remove them).
fn reserved_protocol(protocol: u8) -> Option<&'static str> {
    match protocol {
        0..=4 => Some("is the kernel's own (unspec, redirect, kernel, boot, static)"),
        12 => Some("is BIRD's: BIRD takes routes of that number for its own and removes them"),
        8..=11 | 13..=16 | 18 | 42 | 99 => {
            Some("is another routing program's (see /etc/iproute2/rt_protos)")
        }
        186..=198 => Some("is FRR's: its zebra takes routes of that number for its own"),
        _ => None,
    }
}

/// One problem in a configuration: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `vips[2].backends[0].address`.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// A configuration was rejected; nothing of it was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(Problem::to_string).collect();
        write!(f, "{}", lines.join("; "))
    }
}

impl ConfigError {
    pub(crate) fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl Config {
    /// Everything serde cannot check: ranges, uniqueness, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |path: String, reason: String| problems.push(Problem { path, reason });

        if self.interfaces.is_empty() {
            bad(
                "interfaces".into(),
                "at least one interface is needed".into(),
            );
        }
        let mut names = HashSet::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains(['/', ' ']) {
                bad(
                    format!("interfaces[{i}].name"),
                    format!("{:?} is not an interface name", iface.name),
                );
            }
            if !names.insert(&iface.name) {
                bad(
                    format!("interfaces[{i}].name"),
                    format!("{:?} is listed twice", iface.name),
                );
            }
        }
        if !self.next_hop.fib && self.next_hop.gateway_mac.is_none() {
            bad(
                "next_hop.gateway_mac".into(),
                "required when next_hop.fib is false".into(),
            );
        }
        if !(576..=9216).contains(&self.mtu) {
            bad(
                "mtu".into(),
                format!("{} is out of range 576..=9216", self.mtu),
            );
        }
        let answers = &self.too_big_answers;
        if answers.per_second > MAX_TOO_BIG_PER_SECOND {
            bad(
                "too_big_answers.per_second".into(),
                format!(
                    "{} is out of range 0..={MAX_TOO_BIG_PER_SECOND}",
                    answers.per_second
                ),
            );
        }
        if !(1..=MAX_TOO_BIG_BURST).contains(&answers.burst) {
            bad(
                "too_big_answers.burst".into(),
                format!("{} is out of range 1..={MAX_TOO_BIG_BURST}", answers.burst),
            );
        }
        if self.second_chance.gue_port == 0 {
            bad(
                "second_chance.gue_port".into(),
                "0 cannot be a destination port".into(),
            );
        }
        if let Some(rate) = self.conn_promotions.per_second
            && !(1..=MAX_PROMOTIONS_PER_SECOND).contains(&rate)
        {
            bad(
                "conn_promotions.per_second".into(),
                format!("{rate} is out of range 1..={MAX_PROMOTIONS_PER_SECOND}"),
            );
        }
        let t = &self.tables;
        if t.ring_size < 7 || !is_prime(t.ring_size) {
            bad(
                "tables.ring_size".into(),
                format!("{} is not a prime of at least 7", t.ring_size),
            );
        }
        if (t.max_vips as u64) * 2 * (t.ring_size as u64) > u32::MAX as u64 {
            bad(
                "tables.ring_size".into(),
                format!(
                    "{} x 2 x {} VIPs exceeds the ring map's size limit",
                    t.ring_size, t.max_vips
                ),
            );
        }
        for (field, value) in [
            ("conn_entries", t.conn_entries),
            ("probation_entries", t.probation_entries()),
            ("max_vips", t.max_vips),
            ("max_backends", t.max_backends),
        ] {
            if value == 0 {
                bad(format!("tables.{field}"), "must be at least 1".into());
            }
        }
        if t.conn_entries > 0 && t.probation_entries() > t.conn_entries {
            bad(
                "tables.probation_entries".into(),
                format!(
                    "{} exceeds tables.conn_entries = {}: the probation table is a small waiting room in front of the connection table",
                    t.probation_entries(),
                    t.conn_entries
                ),
            );
        }
        if let Some(announce) = &self.announce {
            if let Some(why) = reserved_table(announce.table) {
                bad(
                    "announce.table".into(),
                    format!(
                        "{} {why}: give lbd a table of its own, which no ip rule looks up",
                        announce.table
                    ),
                );
            }
            if let Some(why) = reserved_protocol(announce.protocol) {
                bad(
                    "announce.protocol".into(),
                    format!(
                        "{} {why}: give lbd a number no other program writes routes with",
                        announce.protocol
                    ),
                );
            }
        }
        if self.vips.len() > t.max_vips as usize {
            bad(
                "vips".into(),
                format!(
                    "{} VIPs exceed tables.max_vips = {}",
                    self.vips.len(),
                    t.max_vips
                ),
            );
        }
        let mut vip_keys = HashSet::new();
        let mut backend_count = 0usize;
        for (v, vip) in self.vips.iter().enumerate() {
            let at = format!("vips[{v}]");
            if !usable(&vip.address) {
                bad(
                    format!("{at}.address"),
                    format!("{} cannot be a service address", vip.address),
                );
            }
            if !vip_keys.insert((vip.address, vip.port, vip.protocol)) {
                bad(
                    at.clone(),
                    format!(
                        "duplicate VIP {}:{}/{:?}",
                        vip.address, vip.port, vip.protocol
                    )
                    .to_lowercase(),
                );
            }
            if vip.drain_timeout_s > 86_400 {
                bad(
                    format!("{at}.drain_timeout_s"),
                    format!("{} is more than a day", vip.drain_timeout_s),
                );
            }
            match vip.second_chance_s {
                Some(s) if s > 86_400 => bad(
                    format!("{at}.second_chance_s"),
                    format!("{s} is more than a day"),
                ),
                Some(_) if vip.forwarding == Forwarding::L2Dsr => bad(
                    format!("{at}.second_chance_s"),
                    "does not apply to l2_dsr forwarding: there is no tunnel to carry a second hop"
                        .into(),
                ),
                _ => {}
            }
            if vip.stateless {
                check_stateless(vip, self.second_chance.enabled, &at, &mut bad);
            }
            check_balancing(vip, &format!("{at}.balancing"), &mut bad);
            check_health(
                &vip.health_check,
                vip.port,
                &format!("{at}.health_check"),
                &mut bad,
            );
            check_through_tunnel(vip, &self.tunnel_source, &at, &mut bad);
            let mut addrs = HashSet::new();
            for (b, backend) in vip.backends.iter().enumerate() {
                let bat = format!("{at}.backends[{b}]");
                backend_count += 1;
                if !usable(&backend.address) {
                    bad(
                        format!("{bat}.address"),
                        format!("{} cannot be a backend address", backend.address),
                    );
                }
                if !addrs.insert(backend.address) {
                    bad(
                        format!("{bat}.address"),
                        format!("{} is listed twice in this VIP", backend.address),
                    );
                }
                if !(1..=MAX_WEIGHT).contains(&backend.weight) {
                    bad(
                        format!("{bat}.weight"),
                        format!("{} is out of range 1..={MAX_WEIGHT}", backend.weight),
                    );
                }
                // The gateway is a router, and L2 DSR keeps the VIP as the
                // destination: the router would send the frame back here.
                if vip.forwarding == Forwarding::L2Dsr
                    && !self.next_hop.fib
                    && backend.mac.is_none()
                {
                    bad(
                        format!("{bat}.mac"),
                        "required for an l2_dsr VIP when next_hop.fib is false: next_hop.gateway_mac is a router, which would send the frame back to the VIP".into(),
                    );
                }
                if vip.forwarding == Forwarding::Ipip {
                    match backend.address {
                        IpAddr::V4(_) if self.tunnel_source.ipv4.is_none() => bad(
                            format!("{bat}.address"),
                            "an IPv4 tunnel needs tunnel_source.ipv4".into(),
                        ),
                        IpAddr::V6(_) if self.tunnel_source.ipv6.is_none() => bad(
                            format!("{bat}.address"),
                            "an IPv6 tunnel needs tunnel_source.ipv6".into(),
                        ),
                        _ => {}
                    }
                }
            }
            // IPv6 guarantees every path 1280 bytes, and clients discard an
            // ICMPv6 too-big that reports less: a tunnel with less room
            // would black-hole full-size IPv6 packets however they shrink.
            // A second hop travels in GUE, whose header is larger.
            let gue = self.second_chance.enabled && !vip.second_chance_window().is_zero();
            let overhead = vip
                .backends
                .iter()
                .map(|b| {
                    let family = if b.address.is_ipv4() {
                        lb_common::flow::FAMILY_V4
                    } else {
                        lb_common::flow::FAMILY_V6
                    };
                    if gue {
                        lb_common::gue::overhead(family) as u32
                    } else {
                        lb_common::gue::ip_hdr_len(family) as u32
                    }
                })
                .max();
            if let (IpAddr::V6(_), Forwarding::Ipip, Some(overhead)) =
                (vip.address, vip.forwarding, overhead)
                && (self.mtu as u32) < IPV6_MIN_MTU + overhead
            {
                let header = if gue {
                    "GUE second-hop header"
                } else {
                    "header"
                };
                bad(
                    "mtu".into(),
                    format!(
                        "{} is too small for the IPv6 VIP {at}: IPv6 needs {IPV6_MIN_MTU} bytes inside the tunnel, with its {overhead}-byte {header} at least {}",
                        self.mtu,
                        IPV6_MIN_MTU + overhead
                    ),
                );
            }
            if vip.backends.len() as u64 * 10 > t.ring_size as u64 {
                bad(
                    format!("{at}.backends"),
                    format!(
                        "{} backends are too many for tables.ring_size {}",
                        vip.backends.len(),
                        t.ring_size
                    ),
                );
            }
        }
        if backend_count > t.max_backends as usize {
            bad(
                "vips".into(),
                format!(
                    "{backend_count} backends in all exceed tables.max_backends = {}",
                    t.max_backends
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// A stateless VIP keeps a flow whose slot moved only through the second
/// hop, and only for the slot's window: everything that hop needs must be
/// there, and nothing may move slots faster or cut flows sooner than the
/// window allows.
fn check_stateless(vip: &Vip, second_chance: bool, at: &str, bad: &mut impl FnMut(String, String)) {
    let field = format!("{at}.stateless");
    if !second_chance {
        bad(
            field.clone(),
            "needs second_chance.enabled: without the second hop a stateless VIP's flows break whenever their ring slot moves".into(),
        );
    }
    if vip.forwarding == Forwarding::L2Dsr {
        bad(
            field.clone(),
            "needs ipip forwarding: l2_dsr has no tunnel to carry a second hop".into(),
        );
    }
    if vip.protocol != Protocol::Tcp {
        bad(
            field.clone(),
            "needs protocol tcp: the second hop asks the backend for a TCP socket, so UDP flows would move with their ring slot".into(),
        );
    }
    if vip.balancing.mode == BalancingMode::Load {
        bad(
            field.clone(),
            "cannot be combined with balancing.mode load: the controller moves ring slots every few seconds, and a stateless VIP keeps a flow through one move only".into(),
        );
    }
    // (l2_dsr has no window at all: said above.)
    if vip.forwarding == Forwarding::Ipip && vip.second_chance_window().is_zero() {
        let (field, why) = match vip.second_chance_s {
            Some(_) => ("second_chance_s", "0 turns the second hop off"),
            None => (
                "drain_timeout_s",
                "0 makes the second-chance window (second_chance_s, unset) 0 too, which turns the second hop off",
            ),
        };
        bad(
            format!("{at}.{field}"),
            format!(
                "{why}: a stateless VIP needs it, or its flows break whenever their ring slot moves"
            ),
        );
    }
    let families: HashSet<bool> = vip.backends.iter().map(|b| b.address.is_ipv4()).collect();
    if families.len() > 1 {
        bad(
            field.clone(),
            "needs backends of one address family: the second hop is carried in the outer header's family, so a flow whose slot moves to a backend of the other family would break".into(),
        );
    }
    if let Some(window) = vip.second_chance_s
        && window != 0
        && window < vip.drain_timeout_s
    {
        bad(
            format!("{at}.second_chance_s"),
            format!(
                "{window} is shorter than drain_timeout_s ({}): a stateless VIP keeps a draining backend's flows only through the second hop",
                vip.drain_timeout_s
            ),
        );
    }
}

/// The problems of `vips[].balancing` of `vip`, reported at `at`.
fn check_balancing(vip: &Vip, at: &str, bad: &mut impl FnMut(String, String)) {
    let b = &vip.balancing;
    check_balancing_ranges(b, at, bad);
    check_load_source(vip, at, bad);
    if let Some(p) = &b.prometheus {
        check_prometheus(p, vip, &format!("{at}.prometheus"), bad);
    }
    if let Some(h) = &b.header {
        check_header(h, &format!("{at}.header"), bad);
    }
    if let Some(limit) = &b.hard_limit {
        check_hard_limit(limit, b, &format!("{at}.hard_limit"), bad);
    }
}

/// Which load source `vip` uses, and that the blocks it sets fit it.
fn check_load_source(vip: &Vip, at: &str, bad: &mut impl FnMut(String, String)) {
    let b = &vip.balancing;
    let source = b.source.name();
    if b.mode == BalancingMode::Static {
        if b.source != LoadSource::Flows {
            bad(
                format!("{at}.source"),
                format!(
                    "{source} applies to mode load only: mode static balances by the configured weights"
                ),
            );
        }
        if b.hard_limit.is_some() {
            bad(
                format!("{at}.hard_limit"),
                "applies to mode load only: mode static balances by the configured weights".into(),
            );
        }
    }
    let misplaced = [
        (
            "prometheus",
            b.prometheus.is_some() && b.source != LoadSource::Prometheus,
        ),
        (
            "header",
            b.header.is_some() && b.source != LoadSource::Header,
        ),
        (
            "flows_per_weight",
            b.flows_per_weight.is_some() && b.source != LoadSource::Flows,
        ),
    ];
    for (field, _) in misplaced.into_iter().filter(|(_, wrong)| *wrong) {
        bad(
            format!("{at}.{field}"),
            format!("does not apply to source {source}"),
        );
    }
    match b.source {
        LoadSource::Prometheus if b.prometheus.is_none() => bad(
            format!("{at}.prometheus"),
            "source prometheus needs the gauges to scrape: give prometheus.metrics".into(),
        ),
        LoadSource::Header if vip.health_check.kind != CheckKind::Http => bad(
            format!("{at}.source"),
            format!(
                "header is read from the HTTP health check's response: needs health_check.type http, not {}",
                format!("{:?}", vip.health_check.kind).to_lowercase()
            ),
        ),
        LoadSource::Flows if b.hard_limit.is_some() => bad(
            format!("{at}.hard_limit"),
            "needs a value the backends report: source prometheus or header".into(),
        ),
        _ => {}
    }
}

/// `vips[].balancing.prometheus` of `vip`.
fn check_prometheus(p: &PrometheusLoad, vip: &Vip, at: &str, bad: &mut impl FnMut(String, String)) {
    if p.metrics.is_empty() {
        bad(
            format!("{at}.metrics"),
            "give at least one gauge to scrape".into(),
        );
    }
    for (selector, coefficient) in &p.metrics {
        let field = format!("{at}.metrics[{selector:?}]");
        if let Err(e) = crate::prometheus_text::Selector::parse(selector) {
            bad(field.clone(), e);
        }
        if !coefficient.is_finite() {
            bad(field, format!("{coefficient} is not a finite number"));
        }
    }
    check_capacity(p.capacity, at, bad);
    let most = vip.balancing.interval_s.saturating_mul(1000);
    if p.timeout_ms < 10 || p.timeout_ms > most {
        bad(
            format!("{at}.timeout_ms"),
            format!(
                "{} must be at least 10 and at most the interval ({most})",
                p.timeout_ms
            ),
        );
    }
    if !p.path.starts_with('/') || !is_request_token(&p.path) {
        bad(
            format!("{at}.path"),
            format!(
                "{:?} must start with / and contain no whitespace or control character",
                p.path
            ),
        );
    }
    match p.port {
        Some(0) => bad(
            format!("{at}.port"),
            "0 cannot be scraped: give the port the backends serve metrics on".into(),
        ),
        None if vip.health_check.port.is_none() && vip.port == 0 => bad(
            format!("{at}.port"),
            "required for a port-less VIP (port 0) without a health_check.port".into(),
        ),
        _ => {}
    }
}

/// `vips[].balancing.header`.
fn check_header(h: &HeaderLoad, at: &str, bad: &mut impl FnMut(String, String)) {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    };
    if !token(&h.name) {
        bad(
            format!("{at}.name"),
            format!("{:?} is not an HTTP header name", h.name),
        );
    }
    if !crate::load_header::is_key(&h.key) {
        bad(
            format!("{at}.key"),
            format!(
                "{:?} is not a report key (like utilization or named_metrics.waiting)",
                h.key
            ),
        );
    }
    check_capacity(h.capacity, at, bad);
}

fn check_capacity(capacity: f64, at: &str, bad: &mut impl FnMut(String, String)) {
    if !(capacity.is_finite() && capacity > 0.0) {
        bad(
            format!("{at}.capacity"),
            format!("{capacity} must be a number above 0"),
        );
    }
}

/// `vips[].balancing.hard_limit` of a VIP balanced by `b`.
fn check_hard_limit(
    limit: &HardLimit,
    b: &Balancing,
    at: &str,
    bad: &mut impl FnMut(String, String),
) {
    let metric = match b.source {
        LoadSource::Prometheus => crate::prometheus_text::Selector::parse(&limit.metric).err(),
        LoadSource::Header => (!crate::load_header::is_key(&limit.metric)).then(|| {
            format!(
                "{:?} is not a report key (like named_metrics.waiting)",
                limit.metric
            )
        }),
        LoadSource::Flows => None,
    };
    if let Some(why) = metric {
        bad(format!("{at}.metric"), why);
    }
    // A backend comes back under `resume_below`: a level of 0 or less is
    // one a gauge never goes under, which would hold it out for good.
    if !(limit.above.is_finite() && limit.above > 0.0) {
        bad(
            format!("{at}.above"),
            format!(
                "{} must be a number above 0 (a backend over the limit comes back under 0.8 of it)",
                limit.above
            ),
        );
    }
    if let Some(r) = limit.resume_below
        && !(r.is_finite() && r > 0.0 && r <= limit.above)
    {
        bad(
            format!("{at}.resume_below"),
            format!(
                "{r} must be a number above 0 and at most above ({})",
                limit.above
            ),
        );
    }
}

/// The ranges of `vips[].balancing`'s numbers.
fn check_balancing_ranges(b: &Balancing, at: &str, bad: &mut impl FnMut(String, String)) {
    let share = |name: &str, x: f64, low: f64, low_open: bool, high: f64| {
        let below = if low_open { x <= low } else { x < low };
        (below || x > high || x.is_nan()).then(|| {
            let why = if low_open {
                format!("{x} must be above {low} and at most {high}")
            } else {
                format!("{x} is out of range {low}..={high}")
            };
            (format!("{at}.{name}"), why)
        })
    };
    let integer = |name: &str, x: u64, low: u64, high: u64| {
        (x < low || x > high).then(|| {
            (
                format!("{at}.{name}"),
                format!("{x} is out of range {low}..={high}"),
            )
        })
    };
    let problems = [
        share("target_utilization", b.target_utilization, 0.1, false, 0.95),
        share("smoothing", b.smoothing, 0.0, true, 1.0),
        share("max_step", b.max_step, 0.0, true, 1.0),
        share("min_weight", b.min_weight, 0.01, false, 1.0),
        share("ring_budget", b.ring_budget, 0.0, true, 1.0),
        integer("interval_s", b.interval_s, 1, 60),
        integer("slow_start_s", b.slow_start_s, 0, 3600),
        integer("stale_after", u64::from(b.stale_after), 1, 100),
        b.flows_per_weight
            .and_then(|f| integer("flows_per_weight", f, 1, u64::MAX)),
    ];
    for (field, why) in problems.into_iter().flatten() {
        bad(field, why);
    }
}

/// The health check of a VIP whose port is `vip_port`.
///
/// Every field is checked whatever the check's `type`, `none` included: a
/// field the chosen type does not use is an error, and so are out-of-range
/// values. With `none` this rejects a `path`, `port`, ... that would
/// otherwise be silently ignored, which is what an operator wants to hear:
/// `none` is the default type, so such a field nearly always means a
/// forgotten or misspelt `type`, and the VIP would run without checks. It
/// also keeps a configuration valid when its `type` is switched later.
fn check_health(h: &HealthCheck, vip_port: u16, at: &str, bad: &mut impl FnMut(String, String)) {
    if !(100..=3_600_000).contains(&h.interval_ms) {
        bad(
            format!("{at}.interval_ms"),
            format!("{} is out of range 100..=3600000", h.interval_ms),
        );
    }
    if h.timeout_ms < 10 || h.timeout_ms > h.interval_ms {
        bad(
            format!("{at}.timeout_ms"),
            format!(
                "{} must be at least 10 and at most interval_ms ({})",
                h.timeout_ms, h.interval_ms
            ),
        );
    }
    for (field, value) in [("rise", h.rise), ("fall", h.fall)] {
        if !(1..=100).contains(&value) {
            bad(
                format!("{at}.{field}"),
                format!("{value} is out of range 1..=100"),
            );
        }
    }
    let probes = h.kind != CheckKind::None;
    let misplaced = [
        ("port", h.port.is_some() && !probes),
        ("through_tunnel", h.through_tunnel.is_some() && !probes),
        ("path", h.path.is_some() && h.kind != CheckKind::Http),
        ("host", h.host.is_some() && h.kind != CheckKind::Http),
        ("payload", h.payload.is_some() && h.kind != CheckKind::Udp),
        ("expect", h.expect.is_some() && h.kind != CheckKind::Udp),
    ];
    for (field, _) in misplaced.into_iter().filter(|(_, wrong)| *wrong) {
        bad(
            format!("{at}.{field}"),
            format!("does not apply to a {:?} check", h.kind).to_lowercase(),
        );
    }
    // Port 0 cannot be connected to: every probe would fail.
    match h.port {
        Some(0) if probes => bad(
            format!("{at}.port"),
            "0 cannot be probed: give the port the backends serve".into(),
        ),
        None if probes && vip_port == 0 => bad(
            format!("{at}.port"),
            "required for a port-less VIP (port 0): the check would probe port 0".into(),
        ),
        _ => {}
    }
    // Both go into the request verbatim; the checker refuses to send a
    // request line or header that such characters would break.
    if let Some(path) = &h.path {
        if !path.starts_with('/') {
            bad(format!("{at}.path"), format!("{path:?} must start with /"));
        }
        if !path.is_empty() && !is_request_token(path) {
            bad(
                format!("{at}.path"),
                format!("{path:?} contains whitespace or a control character"),
            );
        }
    }
    if let Some(host) = &h.host {
        if host.is_empty() {
            bad(format!("{at}.host"), "must not be empty".into());
        } else if !is_request_token(host) {
            bad(
                format!("{at}.host"),
                format!("{host:?} contains whitespace or a control character"),
            );
        }
    }
    if h.kind == CheckKind::Udp && h.payload.as_deref().unwrap_or("").is_empty() {
        bad(
            format!("{at}.payload"),
            "a udp check needs a payload to send".into(),
        );
    }
}

/// `health_check.through_tunnel` of `vip` (at `at`): only where there is
/// a tunnel, and with a source for the probe's inner packet. That packet
/// is of the VIP's family and comes from the tunnel source of that family,
/// so a VIP of the other family than its backends needs both sources.
fn check_through_tunnel(
    vip: &Vip,
    sources: &TunnelSource,
    at: &str,
    bad: &mut impl FnMut(String, String),
) {
    let field = format!("{at}.health_check.through_tunnel");
    if vip.forwarding == Forwarding::L2Dsr && vip.health_check.through_tunnel.is_some() {
        bad(
            field,
            "does not apply to l2_dsr forwarding: there is no tunnel to probe through".into(),
        );
        return;
    }
    if !vip.checks_through_tunnel() {
        return;
    }
    let missing = match vip.address {
        IpAddr::V4(_) if sources.ipv4.is_none() => Some(("IPv4", "tunnel_source.ipv4")),
        IpAddr::V6(_) if sources.ipv6.is_none() => Some(("IPv6", "tunnel_source.ipv6")),
        _ => None,
    };
    // Only backends are probed; one of the VIP's family already asks for
    // that source by its own rule.
    let other_family_only = !vip.backends.is_empty()
        && vip
            .backends
            .iter()
            .all(|b| b.address.is_ipv4() != vip.address.is_ipv4());
    if let Some((family, source)) = missing.filter(|_| other_family_only) {
        bad(
            field,
            format!(
                "the probe of an {family} VIP through the tunnel is sent from {source}: set it, or set through_tunnel to false"
            ),
        );
    }
}

/// Text that can go into an HTTP request line or header as it is: not
/// empty, no whitespace, no control character. The HTTP checker sends a
/// `path` or `host` only if it passes this.
pub fn is_request_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// An address that can be a service or backend: not unspecified, loopback,
/// multicast or broadcast.
fn usable(addr: &IpAddr) -> bool {
    let special = match addr {
        IpAddr::V4(a) => a.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    !(addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || special)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}
