//! The configuration parser (JSON and TOML) and the control protocol
//! against garbage and near-misses (fixed seed): no panic, and every
//! rejection says what.

use lb_userspace::{
    config::{Config, ConfigError},
    control::{Request, read_request},
};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

const EXAMPLE: &str = include_str!("../../examples/lbd.json");
const TOML_EXAMPLE: &str = include_str!("../../examples/lbd.toml");

/// Tokens that make JSON near-misses: wrong types, bad values, structure.
const SPLICES: &[&str] = &[
    "",
    "0",
    "-1",
    "65536",
    "4294967296",
    "1e309",
    "null",
    "true",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "\"10.0.0.300\"",
    "\"2001:db8::g\"",
    "\"02:00:5e\"",
    "\"tcp\"",
    "\"sctp\"",
    "{\"a\":1}",
    "[1,2]",
    "\"\\u0000\"",
    "}",
    "]",
    ",",
    ":",
];

/// Tokens that make TOML near-misses: the same kinds, in TOML's syntax.
const TOML_SPLICES: &[&str] = &[
    "",
    "0",
    "-1",
    "65536",
    "4294967296",
    "9223372036854775808",
    "inf",
    "nan",
    "1.5",
    "0x10",
    "1_000",
    "true",
    "\"\"",
    "''",
    "\"x\"",
    "[]",
    "{}",
    "\"10.0.0.300\"",
    "\"2001:db8::g\"",
    "\"02:00:5e\"",
    "\"sctp\"",
    "{ a = 1 }",
    "[1, \"a\"]",
    "1979-05-27T07:32:00Z",
    "\"\\u0000\"",
    "\"\"\"",
    "\n[[vips]]\n",
    "\n[vips.health_check]\n",
    "\n[tables]\n",
    "\nmtu = 1400\n",
    "\nx = 1\n",
    "#",
    "=",
    "[",
    "]",
    "\n",
];

/// A near-miss of JSON `text`.
fn mutate(rng: &mut SmallRng, text: &str) -> String {
    mutate_with(rng, text, SPLICES, ':', &[',', '}', ']'])
}

/// A near-miss of `text`: one to three splices of `splices`, some of them
/// in place of a value (after `assign`, up to one of `value_ends`).
fn mutate_with(
    rng: &mut SmallRng,
    text: &str,
    splices: &[&str],
    assign: char,
    value_ends: &[char],
) -> String {
    let mut s = text.to_string();
    for _ in 0..rng.random_range(1..=3) {
        let at = rng.random_range(0..=s.len());
        let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        match rng.random_range(0..3) {
            0 => s.insert_str(at, splices.choose(rng).unwrap()),
            1 => {
                let end = (at + rng.random_range(1..20)).min(s.len());
                let end = (end..=s.len())
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(s.len());
                s.replace_range(at..end, splices.choose(rng).unwrap());
            }
            _ => {
                // Replace one value after an assignment.
                if let Some(colon) = s[at..].find(assign).map(|c| c + at + 1) {
                    let end = s[colon..].find(value_ends).map_or(s.len(), |e| e + colon);
                    s.replace_range(colon..end, splices.choose(rng).unwrap());
                }
            }
        }
    }
    s
}

#[test]
fn fuzz_config_parser_never_panics_and_explains_every_rejection() {
    let mut rng = SmallRng::seed_from_u64(0x000c_0f19);
    let mut accepted = 0;
    for i in 0..20_000 {
        let text = if i % 10 == 0 {
            (0..rng.random_range(0..200))
                .map(|_| rng.random::<u8>() as char)
                .collect()
        } else {
            mutate(&mut rng, EXAMPLE)
        };
        match Config::from_json(&text) {
            Ok(c) => {
                accepted += 1;
                // Whatever is accepted is valid and survives a round trip.
                c.validate().unwrap();
                assert_eq!(
                    Config::from_json(&serde_json::to_string(&c).unwrap()).unwrap(),
                    c
                );
            }
            Err(e) => assert_explained(&e, &text),
        }
    }
    assert!(
        accepted > 0,
        "some near-misses are still valid configurations"
    );
}

/// As the JSON fuzz, on the commented TOML example: what is accepted is
/// valid and reads back the same from its TOML and its JSON dump.
#[test]
fn fuzz_toml_config_parser_never_panics_and_explains_every_rejection() {
    let mut rng = SmallRng::seed_from_u64(0x0070_0e1f);
    let mut accepted = 0;
    for i in 0..20_000 {
        let text = if i % 10 == 0 {
            (0..rng.random_range(0..200))
                .map(|_| rng.random::<u8>() as char)
                .collect()
        } else {
            mutate_with(&mut rng, TOML_EXAMPLE, TOML_SPLICES, '=', &['\n', ',', '}'])
        };
        match Config::from_toml(&text) {
            Ok(c) => {
                accepted += 1;
                c.validate().unwrap();
                let toml = c.to_toml().unwrap_or_else(|e| panic!("{e}:\n{text}"));
                assert_eq!(Config::from_toml(&toml).unwrap(), c, "{toml}");
                assert_eq!(
                    Config::from_json(&serde_json::to_string(&c).unwrap()).unwrap(),
                    c
                );
            }
            Err(e) => assert_explained(&e, &text),
        }
    }
    assert!(
        accepted > 0,
        "some near-misses are still valid configurations"
    );
}

/// A rejection names at least one problem, each with a reason on one line.
fn assert_explained(e: &ConfigError, text: &str) {
    assert!(!e.problems.is_empty());
    for p in &e.problems {
        assert!(!p.reason.trim().is_empty(), "empty reason for {text:?}");
        assert!(!p.reason.contains('\n'), "{:?} for {text:?}", p.reason);
    }
}

#[tokio::test]
async fn fuzz_control_protocol_never_panics_and_answers_every_bad_request() {
    let mut rng = SmallRng::seed_from_u64(0x0c71);
    let valid = [
        serde_json::to_string(&Request::Status).unwrap(),
        r#"{"cmd":"backend_drain","vip":{"address":"198.51.100.10","port":80,"protocol":"tcp"},"address":"198.51.100.101"}"#.to_string(),
        r#"{"cmd":"flow","src":"203.0.113.7","sport":1,"dst":"198.51.100.10","dport":80,"protocol":"udp"}"#.to_string(),
    ];
    for i in 0..20_000 {
        let mut line = if i % 4 == 0 {
            (0..rng.random_range(0..300))
                .map(|_| rng.random::<u8>())
                .collect::<Vec<u8>>()
        } else {
            {
                let base = valid.choose(&mut rng).unwrap().clone();
                mutate(&mut rng, &base).into_bytes()
            }
        };
        line.retain(|b| *b != b'\n');
        line.push(b'\n');
        let mut reader = tokio::io::BufReader::new(&line[..]);
        match read_request(&mut reader).await {
            Ok(_) => {}
            Err(reply) => {
                assert!(!reply.ok);
                assert!(!reply.error.unwrap_or_default().is_empty());
            }
        }
    }
}
