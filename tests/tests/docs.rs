//! The README and the documentation under docs/ say what the code does.
//!
//! Each test derives a list of facts from the code (counter names, metric
//! names, configuration fields, defaults and error messages, lbctl verbs and
//! options, pinned maps) and looks for them in the text, so a change to the
//! code that the documentation does not follow fails here.
//!
//! The tests that read `--help` run the built `lbd` and `lbctl`
//! (target/debug): build them first with `cargo build --bins`, as
//! `cargo xtask test` does.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use lb_common::stats::{DecapReason, Reason, ReasonKind};
use lb_userspace::{
    config::Config,
    datapath::{PINNED_MAPS, link_pin_path},
    metrics::EXPORTED,
};
use serde_json::{Value, json};

const README: &str = include_str!("../../README.md");
const ARCHITECTURE: &str = include_str!("../../docs/architecture.md");
const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const OPERATIONS: &str = include_str!("../../docs/operations.md");
const METRICS: &str = include_str!("../../docs/metrics.md");
const CLUSTER: &str = include_str!("../../docs/cluster.md");
const THIS_FILE: &str = include_str!("docs.rs");

const DOCS: [(&str, &str); 5] = [
    ("docs/architecture.md", ARCHITECTURE),
    ("docs/configuration.md", CONFIGURATION),
    ("docs/operations.md", OPERATIONS),
    ("docs/metrics.md", METRICS),
    ("docs/cluster.md", CLUSTER),
];

// ---------------------------------------------------------------------------
// Markdown helpers.

/// Fenced code blocks: (info string, body).
fn code_blocks(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in doc.lines() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => {
                let (info, body) = open.take().unwrap();
                blocks.push((info, body.join("\n")));
            }
            (Some((_, body)), None) => body.push(line),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unterminated code block");
    blocks
}

/// The text outside fenced code blocks.
fn prose(doc: &str) -> String {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block {
            out.push(line);
        }
    }
    out.join("\n")
}

/// Single-backtick inline code spans outside code blocks.
fn inline_code(doc: &str) -> Vec<String> {
    let mut spans = Vec::new();
    for line in prose(doc).lines() {
        let mut parts = line.split('`');
        parts.next();
        while let (Some(code), Some(_)) = (parts.next(), parts.next()) {
            spans.push(code.to_string());
        }
    }
    spans
}

/// Cells of the table row whose first cell is `` `key` ``.
fn table_row<'a>(doc: &'a str, key: &str) -> Option<Vec<&'a str>> {
    let start = format!("| `{key}` |");
    doc.lines().find(|l| l.starts_with(&start)).map(|l| {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect()
    })
}

/// Each line trimmed at both ends: compares code across indentation.
fn normalized(text: &str) -> String {
    text.lines().map(str::trim).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------
// README.

#[test]
fn readme_lists_every_counter() {
    for r in Reason::ALL {
        assert!(
            README.contains(&format!("`{}`", r.name())),
            "README.md does not document counter {}",
            r.name()
        );
    }
    for r in DecapReason::ALL {
        assert!(
            README.contains(&format!("`{}`", r.name())),
            "README.md does not document counter {}",
            r.name()
        );
    }
}

#[test]
fn readme_links_every_document() {
    for (path, _) in DOCS {
        assert!(
            README.contains(&format!("]({path})")),
            "README.md does not link {path}"
        );
    }
}

// ---------------------------------------------------------------------------
// Counters.

fn kind_name(kind: ReasonKind) -> &'static str {
    match kind {
        ReasonKind::Forwarded => "forwarded",
        ReasonKind::Passed => "passed",
        ReasonKind::Dropped => "dropped",
        ReasonKind::Answered => "answered",
        ReasonKind::Event => "event",
    }
}

#[test]
fn operations_documents_every_counter_with_its_kind() {
    let counters = Reason::ALL
        .iter()
        .map(|r| (r.name(), r.kind()))
        .chain(DecapReason::ALL.iter().map(|r| (r.name(), r.kind())));
    for (name, kind) in counters {
        let row = table_row(OPERATIONS, name)
            .unwrap_or_else(|| panic!("docs/operations.md has no counter table row for `{name}`"));
        assert_eq!(
            row.get(1).copied(),
            Some(kind_name(kind)),
            "docs/operations.md: counter `{name}` is of kind {}",
            kind_name(kind)
        );
        assert!(
            row.get(3).is_some_and(|what_to_do| !what_to_do.is_empty()),
            "docs/operations.md: counter `{name}` says nothing about what to do"
        );
    }
}

// ---------------------------------------------------------------------------
// Metrics.

/// The family name as it appears in the text exposition.
fn exposed_name(name: &str, kind: &str) -> String {
    match kind {
        "counter" => format!("lb_{name}_total"),
        _ => format!("lb_{name}"),
    }
}

#[test]
fn metrics_doc_lists_every_exported_metric_with_its_type() {
    for (name, kind) in EXPORTED {
        let exposed = exposed_name(name, kind);
        let row = table_row(METRICS, &exposed)
            .unwrap_or_else(|| panic!("docs/metrics.md has no table row for `{exposed}`"));
        assert_eq!(
            row.get(1).copied(),
            Some(*kind),
            "docs/metrics.md: `{exposed}` is a {kind}"
        );
    }
}

#[test]
fn metrics_doc_names_no_metric_that_is_not_exported() {
    let known: BTreeSet<String> = EXPORTED
        .iter()
        .flat_map(|(name, kind)| {
            let base = exposed_name(name, kind);
            let mut names = vec![base.clone()];
            if *kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{base}{suffix}"));
                }
            }
            names
        })
        .collect();
    let programs = [lb_common::maps::PROG_LB, lb_common::maps::PROG_DECAP];
    for span in inline_code(METRICS) {
        // `lb_vip_packets_total{vip="..."}` names lb_vip_packets_total.
        let name: String = span
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `lb_` alone is the prefix, not a metric.
        if name.starts_with("lb_") && name != "lb_" && !programs.contains(&name.as_str()) {
            assert!(
                known.contains(&name),
                "docs/metrics.md names `{name}`, which lbd does not export"
            );
        }
    }
}

#[test]
fn metrics_doc_describes_every_dashboard_panel() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../deploy/grafana/lbd-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            METRICS
                .lines()
                .any(|l| l.starts_with(&format!("| {title} |"))),
            "docs/metrics.md does not describe the dashboard panel {title:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Configuration.

/// Only what is required, plus a tunnel source: everything else defaults.
const REQUIRED_ONLY: &str = r#"{
    "interfaces": [{"name": "eth0"}],
    "tunnel_source": {"ipv4": "198.51.100.2"},
    "vips": [{"address": "198.51.100.10", "port": 80, "protocol": "tcp",
              "backends": [{"address": "198.51.100.101"}]}]
}"#;

/// Fields whose value is a map of names the user picks (gauge selectors),
/// not of fields: their keys are not field paths.
const MAP_FIELDS: &[&str] = &["vips[].balancing.prometheus.metrics"];

/// Key paths of a JSON value: `vips`, `vips[].backends[].weight`, ...
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(_) if MAP_FIELDS.contains(&prefix) => {}
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                key_paths(value, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn paths_of(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    key_paths(v, "", &mut out);
    out
}

fn parse_config(text: &str, what: &str) -> Config {
    Config::from_json(text).unwrap_or_else(|e| panic!("{what} is not a valid configuration: {e}"))
}

/// Every field path of the configuration, from the code: serialising a
/// `Config` writes every field, unset ones as `null`. The documented complete
/// example is added so that a field inside an optional object (`null` when
/// unset) would be found as well.
fn config_paths() -> BTreeSet<String> {
    let mut paths =
        paths_of(&serde_json::to_value(parse_config(REQUIRED_ONLY, "REQUIRED_ONLY")).unwrap());
    if let Some(complete) = complete_example() {
        paths.extend(paths_of(&serde_json::to_value(complete).unwrap()));
    }
    assert!(paths.len() > 30, "suspiciously few fields: {paths:?}");
    paths
}

/// The ```json block of docs/configuration.md that sets the most fields.
fn complete_example() -> Option<Config> {
    code_blocks(CONFIGURATION)
        .into_iter()
        .filter(|(info, _)| info == "json")
        .max_by_key(|(_, body)| paths_of(&serde_json::from_str(body).unwrap_or(Value::Null)).len())
        .map(|(_, body)| parse_config(&body, "the complete example"))
}

#[test]
fn every_json_example_in_the_docs_is_a_valid_configuration() {
    let mut n = 0;
    for (file, doc) in DOCS {
        for (info, body) in code_blocks(doc) {
            if info == "json" {
                parse_config(&body, &format!("a ```json block of {file}"));
                n += 1;
            }
        }
    }
    assert!(
        n >= 2,
        "expected a minimal and a complete example, found {n}"
    );
}

/// The ```toml examples are valid configurations, and the TOML one right
/// after the minimal JSON example says the same.
#[test]
fn every_toml_example_in_the_docs_is_a_valid_configuration() {
    let mut n = 0;
    for (file, doc) in DOCS {
        for (info, body) in code_blocks(doc) {
            if info == "toml" {
                Config::from_toml(&body).unwrap_or_else(|e| {
                    panic!("a ```toml block of {file} is not a valid configuration: {e}")
                });
                n += 1;
            }
        }
    }
    assert!(n >= 1, "docs/configuration.md has no ```toml example");
    let blocks = code_blocks(CONFIGURATION);
    let first = |lang: &str| {
        blocks
            .iter()
            .find(|(info, _)| info == lang)
            .map(|(_, body)| body.clone())
            .unwrap()
    };
    assert_eq!(
        Config::from_toml(&first("toml")).unwrap(),
        parse_config(&first("json"), "the minimal example"),
        "the first ```toml example of docs/configuration.md is not the minimal JSON one"
    );
}

/// The TOML messages docs/configuration.md shows are the ones lbd gives.
#[test]
fn configuration_doc_toml_error_messages_are_the_real_ones() {
    let heavy = r#"interfaces = [{ name = "eth0" }]
tunnel_source = { ipv4 = "198.51.100.2" }

[[vips]]
address = "198.51.100.10"
port = 80
protocol = "tcp"
[[vips.backends]]
address = "198.51.100.101"
[[vips.backends]]
address = "198.51.100.102"
weight = "heavy"
"#;
    let excerpt: String = heavy.lines().skip(9).map(|l| format!("{l}\n")).collect();
    assert!(
        code_blocks(CONFIGURATION)
            .iter()
            .any(|(_, body)| format!("{body}\n") == excerpt),
        "docs/configuration.md does not show lines 10 to 12 of the file:\n{excerpt}"
    );
    let syntax = "interfaces = [{ name = \"eth0\" }]\nmtu = = 1500\n";
    for text in [heavy, syntax] {
        let message = Config::from_toml(text).expect_err(text).to_string();
        assert!(
            CONFIGURATION.contains(&message),
            "docs/configuration.md does not show the message\n  {message}\nof\n{text}"
        );
    }
}

#[test]
fn configuration_doc_has_an_example_that_sets_every_field() {
    let wanted = config_paths();
    let best = code_blocks(CONFIGURATION)
        .into_iter()
        .filter(|(info, _)| info == "json")
        .map(|(_, body)| paths_of(&serde_json::from_str(&body).expect("JSON")))
        .max_by_key(BTreeSet::len)
        .expect("docs/configuration.md has no ```json example");
    let missing: Vec<&String> = wanted.difference(&best).collect();
    assert!(
        missing.is_empty(),
        "the complete example of docs/configuration.md does not set {missing:?}"
    );
}

#[test]
fn configuration_doc_describes_every_field() {
    for path in config_paths() {
        assert!(
            CONFIGURATION.contains(&format!("`{path}`")),
            "docs/configuration.md does not mention `{path}`"
        );
        assert!(
            table_row(CONFIGURATION, &path).is_some(),
            "docs/configuration.md has no reference table row for `{path}`"
        );
    }
}

#[test]
fn configuration_doc_names_no_field_that_does_not_exist() {
    let paths = config_paths();
    let names: BTreeSet<&str> = paths
        .iter()
        .flat_map(|p| p.split('.'))
        .map(|s| s.trim_end_matches("[]"))
        .collect();
    let is_path = |s: &str| {
        s.split('.').all(|seg| {
            let seg = seg.strip_suffix("[]").unwrap_or(seg);
            seg.starts_with(|c: char| c.is_ascii_lowercase())
                && seg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
    };
    let mut checked = 0;
    for span in inline_code(CONFIGURATION) {
        let dotted = span.contains('.') || span.contains("[]");
        let first = span.split('.').next().unwrap_or("").trim_end_matches("[]");
        if !dotted || !is_path(&span) || !names.contains(first) {
            continue;
        }
        // A full path, or a segment-aligned part of one (`health_check.port`).
        let known = paths.iter().any(|p| {
            p == &span
                || p.ends_with(&format!(".{span}"))
                || p.starts_with(&format!("{span}."))
                || p.contains(&format!(".{span}."))
        });
        assert!(
            known,
            "docs/configuration.md names `{span}`, which is not a field"
        );
        checked += 1;
    }
    assert!(checked > 30, "only {checked} field paths found");
}

/// The value at a documented path (`vips[].backends[].weight`), taking the
/// first element of each array.
fn value_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = v;
    for seg in path.split('.') {
        match seg.strip_suffix("[]") {
            Some(key) => v = v.get(key)?.get(0)?,
            None => v = v.get(seg)?,
        }
    }
    Some(v)
}

#[test]
fn configuration_doc_defaults_are_the_code_defaults() {
    // Optional objects given empty, so that their fields have values.
    let mut required: Value = serde_json::from_str(REQUIRED_ONLY).unwrap();
    required["announce"] = json!({});
    // A VIP's balancing can have one load source's object at a time: one
    // variant each.
    let mut by_prometheus = required.clone();
    by_prometheus["vips"][0]["balancing"] = json!({"mode": "load", "source": "prometheus",
        "prometheus": {"metrics": {"m": 1}}});
    let mut by_header = required.clone();
    by_header["vips"][0]["health_check"] = json!({"type": "http"});
    by_header["vips"][0]["balancing"] = json!({"mode": "load", "source": "header", "header": {}});
    let defaults: Vec<Value> = [required, by_prometheus, by_header]
        .iter()
        .map(|v| serde_json::to_value(parse_config(&v.to_string(), "REQUIRED_ONLY")).unwrap())
        .collect();
    let paths = config_paths();
    let mut checked = 0;
    for path in &paths {
        let Some(row) = table_row(CONFIGURATION, path) else {
            continue;
        };
        let cell = row.get(2).copied().unwrap_or("");
        // A default written as one code span is JSON; words describe it.
        let Some(json) = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| !c.contains('`'))
        else {
            continue;
        };
        let documented: Value = serde_json::from_str(json).unwrap_or_else(|e| {
            panic!("docs/configuration.md: default of `{path}` is not JSON ({e}): {cell}")
        });
        let actual = defaults
            .iter()
            .find_map(|d| value_at(d, path))
            .unwrap_or_else(|| panic!("no value at {path} in {defaults:?}"));
        assert_eq!(
            &documented, actual,
            "docs/configuration.md: wrong default for `{path}`"
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} defaults checked");
}

/// The base of the rejected configurations below.
fn base() -> Value {
    json!({
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "vips": [{
            "address": "198.51.100.10", "port": 80, "protocol": "tcp",
            "health_check": {"type": "http", "path": "/healthz"},
            "backends": [{"address": "198.51.100.101"}, {"address": "198.51.100.102"}]
        }]
    })
}

fn second_vip(v: &mut Value) {
    let mut other = v["vips"][0].clone();
    other["port"] = 81.into();
    v["vips"].as_array_mut().unwrap().push(other);
}

#[test]
fn configuration_doc_error_messages_are_the_real_ones() {
    type Edit = fn(&mut Value);
    let edits: &[Edit] = &[
        // Parsing.
        |v| {
            v.as_object_mut().unwrap().remove("interfaces");
        },
        |v| v["vips"][0]["backends"][0] = json!({"address": "198.51.100.101", "wieght": 2}),
        |v| v["vips"][0]["port"] = "80".into(),
        |v| v["mtu"] = 70000.into(),
        |v| v["vips"][0]["protocol"] = "sctp".into(),
        |v| v["vips"][0]["backends"][0]["address"] = "10.0.0.300".into(),
        |v| v["vips"][0]["backends"][0]["mac"] = "02:00:5e:00:53".into(),
        // Validation.
        |v| v["interfaces"] = json!([]),
        |v| v["interfaces"][0]["name"] = "a-very-long-interface-name".into(),
        |v| v["interfaces"] = json!([{"name": "eth0"}, {"name": "eth0"}]),
        |v| v["next_hop"] = json!({"fib": false}),
        |v| v["mtu"] = 9300.into(),
        |v| {
            v["mtu"] = 1300.into();
            v["tunnel_source"]["ipv6"] = "2001:db8:100::2".into();
            v["vips"][0]["address"] = "2001:db8:100::10".into();
            v["vips"][0]["backends"][1]["address"] = "2001:db8:200::3".into();
        },
        |v| v["too_big_answers"] = json!({"per_second": 2000000}),
        |v| v["too_big_answers"] = json!({"burst": 0}),
        |v| v["conn_promotions"] = json!({"per_second": 0}),
        |v| v["tables"] = json!({"ring_size": 65536}),
        |v| v["tables"] = json!({"max_vips": 40000}),
        |v| v["tables"] = json!({"conn_entries": 0}),
        |v| v["tables"] = json!({"probation_entries": 0}),
        |v| v["tables"] = json!({"conn_entries": 4096, "probation_entries": 8192}),
        |v| {
            second_vip(v);
            v["tables"] = json!({"max_vips": 1});
        },
        |v| v["tables"] = json!({"max_backends": 1}),
        |v| v["vips"][0]["address"] = "127.0.0.1".into(),
        |v| {
            let same = v["vips"][0].clone();
            v["vips"].as_array_mut().unwrap().push(same);
        },
        |v| v["vips"][0]["drain_timeout_s"] = 90000.into(),
        |v| v["vips"][0]["second_chance_s"] = 90000.into(),
        |v| {
            v["vips"][0]["forwarding"] = "l2_dsr".into();
            v["vips"][0]["health_check"] = json!({"type": "none"});
            v["vips"][0]["second_chance_s"] = 60.into();
        },
        |v| v["vips"][0]["balancing"] = json!({"mode": "load", "target_utilization": 1.5}),
        |v| v["vips"][0]["balancing"] = json!({"ring_budget": 0}),
        |v| v["vips"][0]["balancing"] = json!({"interval_s": 0}),
        |v| v["vips"][0]["balancing"] = json!({"mode": "load", "source": "prometheus"}),
        |v| {
            v["vips"][0]["health_check"] = json!({"type": "tcp"});
            v["vips"][0]["balancing"] = json!({"mode": "load", "source": "header"});
        },
        |v| {
            v["vips"][0]["balancing"] = json!({"source": "prometheus",
                "prometheus": {"metrics": {"m": 1}}})
        },
        |v| v["vips"][0]["balancing"] = json!({"mode": "load", "header": {}}),
        |v| {
            v["vips"][0]["balancing"] =
                json!({"mode": "load", "hard_limit": {"metric": "m", "above": 1}})
        },
        |v| {
            v["vips"][0]["balancing"] = json!({"mode": "load", "source": "prometheus",
                "prometheus": {"metrics": {"vllm:x{a=b}": 1}, "capacity": 0, "timeout_ms": 5000},
                "hard_limit": {"metric": "m", "above": 16, "resume_below": 20}})
        },
        |v| v["second_chance"] = json!({"enabled": true, "gue_port": 0}),
        |v| {
            v["mtu"] = 1320.into();
            v["second_chance"] = json!({"enabled": true});
            v["tunnel_source"]["ipv6"] = "2001:db8:100::2".into();
            v["vips"][0]["address"] = "2001:db8:100::10".into();
            v["vips"][0]["backends"][1]["address"] = "2001:db8:200::3".into();
        },
        |v| {
            v["vips"][0]["health_check"] =
                json!({"type": "http", "interval_ms": 50, "timeout_ms": 20})
        },
        |v| {
            v["vips"][0]["health_check"] =
                json!({"type": "http", "interval_ms": 500, "timeout_ms": 900})
        },
        |v| v["vips"][0]["health_check"] = json!({"type": "http", "rise": 0}),
        |v| v["vips"][0]["health_check"] = json!({"type": "tcp", "path": "/x"}),
        |v| v["vips"][0]["health_check"] = json!({"type": "http", "path": "healthz"}),
        |v| v["vips"][0]["health_check"] = json!({"type": "udp"}),
        |v| v["vips"][0]["health_check"] = json!({"type": "none", "port": 8080}),
        |v| v["vips"][0]["health_check"] = json!({"type": "none", "through_tunnel": false}),
        |v| {
            v["vips"][0]["forwarding"] = "l2_dsr".into();
            v["vips"][0]["health_check"]["through_tunnel"] = true.into();
        },
        |v| v["vips"][0]["address"] = "2001:db8:100::10".into(),
        |v| {
            v["vips"][0]["port"] = 0.into();
            v["vips"][0]["health_check"] = json!({"type": "tcp"});
        },
        |v| v["vips"][0]["health_check"] = json!({"type": "tcp", "port": 0}),
        |v| v["vips"][0]["health_check"] = json!({"type": "http", "path": "/a b"}),
        |v| v["vips"][0]["health_check"] = json!({"type": "http", "host": "web example"}),
        |v| v["vips"][0]["health_check"] = json!({"type": "http", "host": ""}),
        |v| v["vips"][0]["backends"][0]["address"] = "0.0.0.0".into(),
        |v| v["vips"][0]["backends"][1]["address"] = "198.51.100.101".into(),
        |v| v["vips"][0]["backends"][0]["weight"] = 0.into(),
        |v| {
            v.as_object_mut().unwrap().remove("tunnel_source");
            v["vips"][0]["backends"] = json!([{"address": "198.51.100.101"}]);
        },
        |v| v["vips"][0]["backends"][1]["address"] = "2001:db8:200::3".into(),
        |v| {
            v["next_hop"] = json!({"fib": false, "gateway_mac": "02:00:5e:00:53:fe"});
            v["vips"][0]["forwarding"] = "l2_dsr".into();
            v["vips"][0]["backends"][1]["mac"] = "02:00:5e:00:53:02".into();
        },
        |v| v["tables"] = json!({"ring_size": 7}),
        |v| v["announce"] = json!({"protocol": 300}),
        |v| v["announce"] = json!({"table": 254}),
        |v| v["announce"] = json!({"table": 0}),
        |v| v["announce"] = json!({"protocol": 2}),
        |v| v["announce"] = json!({"protocol": 12}),
        |v| v["announce"] = json!({"protocol": 188}),
        |v| v["announce"] = json!({"protocol": 42}),
    ];
    let mut texts: Vec<String> = edits
        .iter()
        .map(|edit| {
            let mut v = base();
            edit(&mut v);
            serde_json::to_string_pretty(&v).unwrap()
        })
        .collect();
    texts.push("{\n  \"interfaces\": [{ \"name\": \"eth0\" },]\n}".into());
    parse_config(&base().to_string(), "the base of the rejected examples");
    for text in texts {
        let err = Config::from_json(&text).expect_err(&format!("accepted:\n{text}"));
        for problem in &err.problems {
            let message = problem.to_string();
            assert!(
                CONFIGURATION.contains(&message),
                "docs/configuration.md does not show the message\n  {message}\nof\n{text}"
            );
        }
    }
}

/// The default of `health_check.through_tunnel` depends on two other
/// fields, so it is written in words; this holds those words to the code.
#[test]
fn configuration_doc_states_the_through_tunnel_default() {
    let path = "vips[].health_check.through_tunnel";
    let row = table_row(CONFIGURATION, path).expect("a row for through_tunnel");
    assert_eq!(
        row[2],
        "unset: `true` for an `ipip` VIP whose check `type` is not `none`, else `false`"
    );
    let cases = [
        ("ipip", "http", true),
        ("ipip", "tcp", true),
        ("ipip", "udp", true),
        ("ipip", "none", false),
        ("l2_dsr", "http", false),
        ("l2_dsr", "none", false),
    ];
    for (forwarding, kind, on) in cases {
        let mut v = base();
        v["vips"][0]["forwarding"] = forwarding.into();
        v["vips"][0]["health_check"] = match kind {
            "udp" => json!({"type": "udp", "payload": "ping"}),
            _ => json!({"type": kind}),
        };
        let config = parse_config(&v.to_string(), "a through_tunnel case");
        assert_eq!(
            config.vips[0].checks_through_tunnel(),
            on,
            "{forwarding} VIP with a {kind} check"
        );
        // Unset, it stays unset: the default is decided where it is used.
        assert_eq!(config.vips[0].health_check.through_tunnel, None);
    }
}

// ---------------------------------------------------------------------------
// Architecture.

#[test]
fn architecture_doc_names_every_pinned_map_and_the_link() {
    for name in PINNED_MAPS
        .iter()
        .chain([&lb_common::maps::MAP_LAYOUT_VERSION])
    {
        assert!(
            ARCHITECTURE.contains(&format!("`{name}`")),
            "docs/architecture.md does not describe map {name}"
        );
        assert!(
            table_row(ARCHITECTURE, name).is_some(),
            "docs/architecture.md has no map table row for {name}"
        );
    }
    let link = link_pin_path(Path::new("/sys/fs/bpf/lbd"), "eth0");
    let link = link.file_name().unwrap().to_str().unwrap();
    assert!(
        ARCHITECTURE.contains(link),
        "docs/architecture.md does not show the link pin {link}"
    );
}

// ---------------------------------------------------------------------------
// lbd and lbctl.

fn run_help(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    assert!(
        out.status.success(),
        "{} {}: {}",
        binary.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The lines of a `--help` section (`Commands:`, `Options:`) up to the
/// next blank line.
fn help_section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// One leaf command of a program: its words, help text.
struct Verb {
    words: Vec<String>,
    help: String,
}

/// Every leaf command of `program`, found by walking its `--help`.
fn leaf_commands(program: &Path, words: Vec<String>, out: &mut Vec<Verb>) {
    let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
    args.push("--help");
    let help = run_help(program, &args);
    let subcommands: Vec<String> = help_section(&help, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect();
    if subcommands.is_empty() {
        out.push(Verb { words, help });
        return;
    }
    for c in subcommands {
        let mut next = words.clone();
        next.push(c);
        leaf_commands(program, next, out);
    }
}

fn binary(name: &str) -> PathBuf {
    lb_tests::lbd::binary(name)
}

/// Every (sub)command of `program` is in docs/operations.md: its name in
/// backticks followed by `after`, its usage line, and each of its options.
fn assert_commands_documented(program: &str, at_least: usize, after: &str) {
    let mut verbs = Vec::new();
    leaf_commands(&binary(program), Vec::new(), &mut verbs);
    assert!(
        verbs.len() >= at_least,
        "only {} {program} commands found",
        verbs.len()
    );
    for verb in verbs {
        let name = format!("{program} {}", verb.words.join(" "));
        assert!(
            OPERATIONS.contains(&format!("`{name}{after}")),
            "docs/operations.md does not mention `{name}`"
        );
        let usage = verb
            .help
            .lines()
            .find(|l| l.starts_with("Usage: "))
            .unwrap_or_else(|| panic!("{name} --help has no usage line"));
        assert!(
            OPERATIONS.contains(usage),
            "docs/operations.md does not show `{name}`'s usage line\n  {usage}"
        );
        for line in help_section(&verb.help, "Options:") {
            let Some(option) = line.split_whitespace().find(|w| w.starts_with("--")) else {
                continue;
            };
            let option = option.trim_end_matches(',');
            if option == "--help" || option == "--version" {
                continue;
            }
            assert!(
                OPERATIONS.contains(&format!("`{option}")),
                "docs/operations.md does not mention option `{option}` of `{name}`"
            );
        }
    }
}

#[test]
fn operations_doc_covers_every_lb_decap_command_with_its_usage_and_options() {
    assert_commands_documented("lb-decap", 4, "`");
}

#[test]
fn operations_doc_covers_every_lbctl_verb_with_its_usage_and_options() {
    assert_commands_documented("lbctl", 10, "");
}

#[test]
fn help_transcripts_in_the_docs_match_the_binaries() {
    let mut n = 0;
    for (file, doc) in DOCS {
        for (_, body) in code_blocks(doc) {
            let mut lines = body.lines();
            let Some(command) = lines.next().and_then(|l| l.strip_prefix("$ ")) else {
                continue;
            };
            let words: Vec<&str> = command.split_whitespace().collect();
            if !matches!(words.first(), Some(&"lbd" | &"lbctl")) || words.last() != Some(&"--help")
            {
                continue;
            }
            let actual = run_help(&binary(words[0]), &words[1..]);
            let trim = |text: &str| {
                text.lines()
                    .map(str::trim_end)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .trim_end()
                    .to_string()
            };
            let shown: Vec<&str> = lines.collect();
            assert_eq!(
                trim(&shown.join("\n")),
                trim(&actual),
                "{file}: the output of `{command}` has changed"
            );
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected the lbd and lbctl --help transcripts, found {n}"
    );
}

// ---------------------------------------------------------------------------
// The backend-side example of docs/operations.md, compiled here.

mod decap_example {
    use std::net::IpAddr;

    use aya::programs::XdpMode;
    use lb_common::maps::PROG_DECAP;
    use lb_userspace::{
        datapath::{Datapath, MapSizes},
        decap_sources::{DecapSources, IpNet},
        maps::Maps,
    };

    /// Attach `lb_decap` to `iface` and accept tunnels addressed to `addrs`
    /// from the load balancers' tunnel sources `lb_sources`.
    /// The program stays attached while the returned values are alive.
    pub fn attach_decap(
        iface: &str,
        addrs: &[IpAddr],
        lb_sources: &[IpNet],
    ) -> anyhow::Result<(Datapath, Maps)> {
        // Only the DECAP_* maps are used here: keep the other maps small.
        let sizes = MapSizes {
            max_vips: 4,
            max_backends: 16,
            ring_size: 251,
            conn_entries: 1024,
            probation_entries: 16,
            frag_entries: 16,
        };
        let mut dp = Datapath::load(sizes)?;
        let mut maps = Maps::take(&mut dp.ebpf, sizes.ring_size)?;
        for addr in addrs {
            maps.add_decap_addr(*addr)?;
        }
        // Before attaching: tunnels from anywhere else are dropped.
        maps.set_decap_sources(&DecapSources::Only(lb_sources.to_vec()))?;
        dp.attach(PROG_DECAP, iface, XdpMode::Driver)?;
        Ok((dp, maps))
    }
}

#[test]
fn operations_doc_decap_example_is_the_compiled_one() {
    // Compiled with this file (so checked against the library) and used
    // here, so that it is not dead code.
    let _ = decap_example::attach_decap;
    let rust: Vec<String> = code_blocks(OPERATIONS)
        .into_iter()
        .filter(|(info, _)| info == "rust")
        .map(|(_, body)| body)
        .collect();
    assert!(!rust.is_empty(), "docs/operations.md has no ```rust block");
    let here = normalized(THIS_FILE);
    for body in rust {
        assert!(
            here.contains(&normalized(&body)),
            "a ```rust block of docs/operations.md differs from `decap_example` in tests/tests/docs.rs:\n{body}"
        );
    }
}

// ---------------------------------------------------------------------------
// The test layout.

/// Every file under tests/tests is built: a test binary of tests/Cargo.toml
/// (which turns `autotests` off) or a module of one. A file left out would
/// never run, and nothing else would say so.
#[test]
fn every_test_file_is_a_test_binary_or_a_module_of_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let quoted = |line: &str, key: &str| {
        let rest = line.trim().strip_prefix(key)?.trim_start();
        let rest = rest.strip_prefix('=')?.trim_start().strip_prefix('"')?;
        rest.split('"').next().map(str::to_string)
    };
    let roots: Vec<String> = manifest
        .lines()
        .filter_map(|l| quoted(l, "path"))
        .filter_map(|p| p.strip_prefix("tests/").map(str::to_string))
        .collect();
    assert!(roots.len() >= 8, "test binaries in Cargo.toml: {roots:?}");
    let mut built: BTreeSet<String> = roots.iter().cloned().collect();
    for root in &roots {
        let text = std::fs::read_to_string(dir.join("tests").join(root)).unwrap();
        built.extend(
            text.lines()
                .filter_map(|l| quoted(l.trim().strip_prefix("#[")?.strip_suffix(']')?, "path")),
        );
    }
    let files: BTreeSet<String> = std::fs::read_dir(dir.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    let left_out: Vec<&String> = files.difference(&built).collect();
    assert!(
        left_out.is_empty(),
        "tests/tests files no test binary builds: {left_out:?}; add each to its prefix's \
         group (tests/golden.rs, cp.rs, e2e.rs, fuzz.rs) or as a [[test]] in tests/Cargo.toml"
    );
}
