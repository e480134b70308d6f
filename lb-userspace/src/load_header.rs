//! Load reports in a response header (`vips[].balancing.header`), in the
//! text form of ORCA's `endpoint-load-metrics`: an optional `TEXT `
//! prefix, then comma-separated `key=value` pairs, such as
//! `TEXT utilization=0.5, rps_fractional=10, named_metrics.waiting=3`.
//! Keys are dotted words; every value is a finite number.

use std::collections::BTreeMap;

/// Whether `key` can be a report key: words of letters, digits, `_` or
/// `-`, joined by dots.
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|word| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        })
}

/// The pairs of a header value; an error names the first pair that is
/// not a key and a finite number.
pub fn parse(value: &str) -> Result<BTreeMap<String, f64>, String> {
    let value = value.trim();
    let prefixed = value
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("TEXT"))
        && value[4..].chars().next().is_none_or(char::is_whitespace);
    let body = if prefixed { &value[4..] } else { value };
    let mut pairs = BTreeMap::new();
    for pair in body.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let bad = || format!("{pair:?} is not key=number");
        let (key, number) = pair.split_once('=').ok_or_else(bad)?;
        let (key, number) = (key.trim(), number.trim());
        let number: f64 = number.parse().map_err(|_| bad())?;
        if !is_key(key) || !number.is_finite() {
            return Err(bad());
        }
        pairs.insert(key.to_string(), number);
    }
    if pairs.is_empty() {
        return Err(format!("{value:?} holds no key=number pair"));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_prefix_and_spaces_are_optional() {
        let want: BTreeMap<String, f64> = [
            ("named_metrics.waiting".to_string(), 3.0),
            ("rps_fractional".to_string(), 10.5),
            ("utilization".to_string(), 0.5),
        ]
        .into();
        for value in [
            "TEXT utilization=0.5, rps_fractional=10.5, named_metrics.waiting=3",
            "utilization=0.5,rps_fractional=10.5,named_metrics.waiting=3",
            "  text utilization = 0.5 ,rps_fractional=10.5,  named_metrics.waiting=3 ,",
        ] {
            assert_eq!(parse(value).as_ref(), Ok(&want), "{value}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_pair() {
        assert_eq!(
            parse("TEXT utilization=high").unwrap_err(),
            r#""utilization=high" is not key=number"#
        );
        assert!(parse("utilization=NaN").is_err());
        assert!(parse("utilization=inf").is_err());
        assert!(parse("utilization").is_err());
        assert!(parse("bad key=1").is_err());
        assert_eq!(
            parse("TEXT ").unwrap_err(),
            r#""TEXT" holds no key=number pair"#
        );
        assert!(parse("").is_err());
        // ORCA's binary and JSON forms are not read.
        assert!(parse(r#"JSON {"cpu_utilization": 0.3}"#).is_err());
    }

    #[test]
    fn keys_are_dotted_words() {
        assert!(is_key("utilization"));
        assert!(is_key("named_metrics.waiting"));
        assert!(!is_key(""));
        assert!(!is_key("a..b"));
        assert!(!is_key("a=b"));
        assert!(!is_key("a b"));
    }
}
