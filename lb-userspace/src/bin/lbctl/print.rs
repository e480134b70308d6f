//! How lbctl shows lbd's replies to people: tables and summaries (the
//! `--json` output is lbd's reply as it is).

use lb_userspace::{config::BalancingMode, control};
use serde_json::Value;

pub fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn num(v: &Value) -> String {
    let x = v.as_f64().unwrap_or(0.0);
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

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn print_done(v: &Value) {
    let ms = v["elapsed_ms"].as_f64().unwrap_or(0.0);
    println!(
        "applied ({} table(s) rebuilt, {ms:.1} ms)",
        v["rings_rebuilt"]
    );
}

pub fn print_status(v: &Value) {
    println!(
        "lbd {}  up {} s  config {}",
        s(&v["version"]),
        v["uptime_s"],
        s(&v["config"])
    );
    for i in v["interfaces"].as_array().into_iter().flatten() {
        let name = s(&i["name"]);
        let reattached = match i["reattached"].as_u64() {
            None | Some(0) => String::new(),
            Some(n) => format!(", re-attached {n} time(s) after the interface was re-created"),
        };
        match i["state"].as_str() {
            Some("gone") => println!(
                "interface {name}: GONE (deleted; forwarding on it stopped, lbd attaches again when it returns){reattached}"
            ),
            Some("detached") => println!(
                "interface {name}: NOT ATTACHED ({}){reattached}",
                s(&i["error"])
            ),
            _ => println!("interface {name}: XDP {} mode{reattached}", s(&i["mode"])),
        }
    }
    for l in v["unconfigured_links"].as_array().into_iter().flatten() {
        println!("warning: {}", s(&l["warning"]));
    }
    println!(
        "vips {}  backends {} ({} healthy)  maglev table {} slots  table rebuilds {}",
        v["vips"], v["backends"], v["backends_up"], v["ring_size"], v["table_rebuilds"]
    );
    for (vip, digest) in v["ring_digests"].as_object().into_iter().flatten() {
        println!("ring {vip}: digest {}", s(digest));
    }
    print_announce(&v["announce"]);
    print_speaker(&v["speaker"]);
    let o = &v["occupancy"];
    let fill = |t: &Value| {
        format!(
            "{}/{} ({:.1}%)",
            t["entries"],
            t["capacity"],
            t["fill"].as_f64().unwrap_or(0.0) * 100.0
        )
    };
    println!(
        "connections {}  probation {}{}",
        fill(&o["connections"]),
        fill(&o["probation"]),
        if o["exact"] == false {
            "  (counted up to a limit)"
        } else {
            ""
        }
    );
    if let Some(c) = v["counters"].as_object() {
        println!("counters:");
        for (k, n) in c {
            println!("  {k:<22} {n}");
        }
    }
}

pub fn print_announce(a: &Value) {
    if a.is_null() {
        return;
    }
    if a["table"].is_null() {
        println!("announce: not configured");
    } else {
        println!(
            "announce: routes in table {} with protocol {}",
            a["table"], a["protocol"]
        );
    }
    for table in a["leftover_tables"].as_array().into_iter().flatten() {
        println!(
            "  routes still to remove from an earlier announce: {}",
            s(table)
        );
    }
    for row in a["addresses"].as_array().into_iter().flatten() {
        println!("  {}: {}", s(&row["address"]), s(&row["state"]));
    }
    if a["drained"] == true {
        println!("node: DRAINED (every VIP withdrawn; `lbctl node resume` announces again)");
    }
    if let Some(e) = a["error"].as_str() {
        println!("announce error: {e}");
    }
}

/// Whether BIRD is there to tell the router (only while announcing).
pub fn print_speaker(speaker: &Value) {
    if let Some(summary) = speaker["summary"].as_str() {
        println!("speaker: {summary}");
    }
}

pub fn print_vips(v: &Value) {
    table(
        &[
            "VIP",
            "NAME",
            "FORWARDING",
            "AFFINITY",
            "BACKENDS",
            "HEALTHY",
            "IN TABLE",
            "RING",
            "ANNOUNCED",
        ],
        v.as_array().into_iter().flatten().map(|r| {
            let addr = s(&r["address"]);
            let vip = format!(
                "{}:{}/{}",
                lb_userspace::cluster::bracketed(&addr),
                r["port"],
                s(&r["protocol"])
            );
            vec![
                vip,
                s(&r["name"]),
                s(&r["forwarding"]),
                s(&r["affinity"]),
                s(&r["backends"]),
                s(&r["healthy"]),
                s(&r["in_table"]),
                s(&r["ring_digest"]),
                match r["announced"].as_bool() {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
            ]
        }),
    );
}

/// `lbctl vip show`: a line on the VIP's balancing, a row per backend.
pub fn print_vip_show(v: &Value) {
    let show: control::VipShow = match serde_json::from_value(v.clone()) {
        Ok(show) => show,
        Err(e) => {
            eprintln!("lbctl: unexpected reply from lbd: {e}");
            return;
        }
    };
    let mode = match show.mode {
        BalancingMode::Static => "static (configured weights)".to_string(),
        BalancingMode::Load => format!("load, source {}", show.source.name()),
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
                b.health.clone(),
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

pub fn print_backends(v: &Value) {
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
        v.as_array().into_iter().flatten().map(|r| {
            let drain = r["drain_remaining_s"]
                .as_u64()
                .map(|x| format!("{x} s"))
                .unwrap_or_else(|| "-".into());
            vec![
                s(&r["vip"]),
                s(&r["address"]),
                s(&r["weight"]),
                r["effective_weight"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                s(&r["state"]),
                s(&r["health"]),
                s(&r["in_table"]),
                s(&r["active_flows"]),
                s(&r["inactive_flows"]),
                r["new_flows_per_s"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |x| format!("{x:.1}")),
                s(&r["last_check"]),
                drain,
            ]
        }),
    );
}

pub fn print_conns(v: &Value) {
    table(
        &[
            "PROTO", "CLIENT", "VIP", "BACKEND", "TABLE", "IDLE", "PINNED",
        ],
        v["rows"].as_array().into_iter().flatten().map(|r| {
            vec![
                s(&r["protocol"]),
                s(&r["client"]),
                s(&r["vip"]),
                s(&r["backend"]),
                if r["closed"] == true {
                    format!("{}, closed", s(&r["table"]))
                } else {
                    s(&r["table"])
                },
                format!("{} s", s(&r["idle_s"])),
                r["stale"]
                    .as_str()
                    .map_or("yes".to_string(), |why| format!("no: {why}")),
            ]
        }),
    );
    let shown = v["rows"].as_array().map_or(0, Vec::len);
    println!("{shown} flows shown, {} entries read", s(&v["scanned"]));
    if v["more"] == true {
        println!("more flows match: raise --limit");
    }
    if v["truncated"] == true {
        println!("the table holds more entries than --scan: flows may be missing");
    }
}

pub fn print_flow(v: &Value) {
    println!("backend {}: {}", s(&v["backend"]), s(&v["reason"]));
}
