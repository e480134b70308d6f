//! How lbctl shows lbd's replies to people: tables and summaries (the
//! `--json` output is lbd's reply as it is).

use lb_userspace::{
    config::BalancingMode,
    control::{
        AnnounceStatus, Applied, BackendRow, ConnList, FlowDecision, InterfaceState, SpeakerStatus,
        Status, TableOccupancy, VipRow, VipShow,
    },
};
use serde::Serialize;

/// An optional cell: `-` when there is nothing to show.
pub fn opt<T: ToString>(x: Option<T>) -> String {
    x.map_or_else(|| "-".into(), |x| x.to_string())
}

/// A rate or count with an SI suffix: `2.0k`, `8.0M`.
pub fn num(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.1}G", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn print_done(v: &Applied) {
    println!(
        "applied ({} table(s) rebuilt, {:.1} ms)",
        v.rings_rebuilt, v.elapsed_ms
    );
}

pub fn print_status(v: &Status) {
    println!(
        "lbd {}  up {} s  config {}",
        v.version, v.uptime_s, v.config
    );
    for i in &v.interfaces {
        let name = &i.name;
        let reattached = match i.reattached {
            0 => String::new(),
            n => format!(", re-attached {n} time(s) after the interface was re-created"),
        };
        match i.state.known() {
            Some(InterfaceState::Gone) => println!(
                "interface {name}: GONE (deleted; forwarding on it stopped, lbd attaches again when it returns){reattached}"
            ),
            Some(InterfaceState::Detached) => println!(
                "interface {name}: NOT ATTACHED ({}){reattached}",
                opt(i.error.as_ref())
            ),
            Some(InterfaceState::Attached) => {
                println!("interface {name}: XDP {} mode{reattached}", i.mode)
            }
            None => println!("interface {name}: {}{reattached}", i.state),
        }
    }
    for l in &v.unconfigured_links {
        println!("warning: {}", l.warning);
    }
    println!(
        "vips {}  backends {} ({} healthy)  maglev table {} slots  table rebuilds {}",
        v.vips, v.backends, v.backends_up, v.ring_size, v.table_rebuilds
    );
    for (vip, digest) in &v.ring_digests {
        println!("ring {vip}: digest {}", opt(digest.as_ref()));
    }
    if let Some(a) = &v.announce {
        print_announce(a);
    }
    if let Some(speaker) = &v.speaker {
        print_speaker(speaker);
    }
    let o = &v.occupancy;
    let fill = |t: &Option<TableOccupancy>| match t {
        Some(t) => format!("{}/{} ({:.1}%)", t.entries, t.capacity, t.fill * 100.0),
        None => "-".into(),
    };
    println!(
        "connections {}  probation {}{}",
        fill(&o.connections),
        fill(&o.probation),
        if o.exact == Some(false) {
            "  (counted up to a limit)"
        } else {
            ""
        }
    );
    if !v.counters.is_empty() {
        println!("counters:");
        for (k, n) in &v.counters {
            println!("  {k:<22} {n}");
        }
    }
}

pub fn print_announce(a: &AnnounceStatus) {
    match (a.table, a.protocol) {
        (Some(table), Some(protocol)) => {
            println!("announce: routes in table {table} with protocol {protocol}")
        }
        _ => println!("announce: not configured"),
    }
    for table in &a.leftover_tables {
        println!("  routes still to remove from an earlier announce: {table}");
    }
    for row in &a.addresses {
        println!("  {}: {}", row.address, row.state);
    }
    if a.drained {
        println!("node: DRAINED (every VIP withdrawn; `lbctl node resume` announces again)");
    }
    if let Some(e) = &a.error {
        println!("announce error: {e}");
    }
}

/// Whether BIRD is there to tell the router (only while announcing).
pub fn print_speaker(speaker: &SpeakerStatus) {
    println!("speaker: {}", speaker.summary);
}

pub fn print_vips(rows: &[VipRow]) {
    table(
        &[
            "VIP",
            "NAME",
            "FORWARDING",
            "AFFINITY",
            "STATE",
            "BACKENDS",
            "HEALTHY",
            "IN TABLE",
            "RING",
            "ANNOUNCED",
        ],
        rows.iter().map(|r| {
            vec![
                r.vip(),
                opt(r.name.as_ref()),
                r.forwarding.name().into(),
                r.affinity.to_string(),
                if r.stateless {
                    "stateless"
                } else {
                    "conntrack"
                }
                .into(),
                r.backends.to_string(),
                r.healthy.to_string(),
                r.in_table.to_string(),
                opt(r.ring_digest.as_ref()),
                match r.announced {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
            ]
        }),
    );
}

/// `lbctl vip show`: a line on the VIP's balancing, a row per backend.
pub fn print_vip_show(show: &VipShow) {
    let mode = match show.mode.known() {
        Some(BalancingMode::Static) => "static (configured weights)".to_string(),
        Some(BalancingMode::Load) => format!("load, source {}", show.source),
        None => show.mode.to_string(),
    };
    println!("{}  balancing {mode}", show.vip);
    if let Some(l) = &show.hard_limit {
        let waived = if show.hard_limit_waived {
            ": WAIVED, every backend is over it"
        } else {
            ""
        };
        println!(
            "hard limit: {} above {}, resumes under {}{waived}",
            l.metric,
            l.above,
            l.resume_level()
        );
    }
    let opt = |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
    table(
        &[
            "BACKEND",
            "WEIGHT",
            "EFFECTIVE",
            "HEALTH",
            "ACTIVE",
            "UTILIZATION",
            "LOAD",
            "LIMIT VALUE",
            "REPORT AGE",
            "HARD LIMIT",
            "WHY",
        ],
        show.backends.iter().map(|b| {
            let r = b.report.as_ref();
            let age = match r {
                None => "-".to_string(),
                Some(r) => {
                    let age = r.age_s.map_or("never".into(), |a| format!("{a:.1} s"));
                    let mut cell = if r.stale {
                        format!("{age} (stale)")
                    } else {
                        age
                    };
                    if let Some(e) = &r.error {
                        cell = format!("{cell}; last: {e}");
                    }
                    cell
                }
            };
            let limit = match (&show.hard_limit, b.over_hard_limit) {
                (None, _) => "-",
                (Some(_), true) if show.hard_limit_waived => "over (waived)",
                (Some(_), true) => "OVER",
                (Some(_), false) => "under",
            };
            vec![
                b.address.to_string(),
                b.weight.to_string(),
                opt(b.effective_weight, 2),
                b.health.name().into(),
                b.active_flows.map_or("-".into(), |a| a.to_string()),
                opt(r.and_then(|r| r.utilization), 2),
                opt(r.and_then(|r| r.load), 2),
                opt(r.and_then(|r| r.limit_value), 1),
                age,
                limit.into(),
                b.why.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    );
}

pub fn print_backends(rows: &[BackendRow]) {
    table(
        &[
            "VIP",
            "BACKEND",
            "WEIGHT",
            "EFFECTIVE",
            "STATE",
            "HEALTH",
            "IN TABLE",
            "ACTIVE",
            "INACTIVE",
            "NEW/S",
            "LAST CHECK",
            "DRAIN LEFT",
        ],
        rows.iter().map(|r| {
            vec![
                r.vip.clone(),
                r.address.to_string(),
                r.weight.to_string(),
                opt(r.effective_weight.map(|x| format!("{x:.2}"))),
                r.state.name().into(),
                r.health.name().into(),
                r.in_table.to_string(),
                opt(r.active_flows),
                opt(r.inactive_flows),
                opt(r.new_flows_per_s.map(|x| format!("{x:.1}"))),
                opt(r.last_check.as_ref()),
                opt(r.drain_remaining_s.map(|x| format!("{x} s"))),
            ]
        }),
    );
}

pub fn print_conns(v: &ConnList) {
    table(
        &[
            "PROTO", "CLIENT", "VIP", "BACKEND", "TABLE", "IDLE", "PINNED",
        ],
        v.rows.iter().map(|r| {
            vec![
                opt(r.protocol.as_ref().map(|p| p.name())),
                r.client.clone(),
                r.vip.clone(),
                r.backend.clone(),
                if r.closed {
                    format!("{}, closed", r.table.name())
                } else {
                    r.table.name().into()
                },
                format!("{} s", r.idle_s),
                r.stale
                    .as_ref()
                    .map_or("yes".to_string(), |why| format!("no: {why}")),
            ]
        }),
    );
    println!("{} flows shown, {} entries read", v.rows.len(), v.scanned);
    if v.more {
        println!("more flows match: raise --limit");
    }
    if v.truncated {
        println!("the table holds more entries than --scan: flows may be missing");
    }
}

pub fn print_flow(v: &FlowDecision) {
    println!("backend {}: {}", opt(v.backend.as_ref()), v.reason);
}
