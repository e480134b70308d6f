//! The few parts of the Prometheus text exposition format that load
//! reports need (`vips[].balancing.prometheus`): sample lines
//! `name{label="value",...} value [timestamp]`, and selectors
//! `name` or `name{label="value",...}` that pick series by name and
//! labels. Comments (`# HELP`, `# TYPE`) and lines this does not
//! understand are skipped: a scrape is judged by whether the series a
//! selector asks for are there, not by the rest of the page.

use std::fmt;

/// A series' labels, `(name, value)` in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// The samples of a page of exposition text, in page order.
pub fn parse(text: &str) -> Vec<Series> {
    text.lines().filter_map(parse_line).collect()
}

/// A sample line, or `None` for a comment, a blank line or one that is
/// not a sample.
fn parse_line(line: &str) -> Option<Series> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = split_name(line)?;
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inside) => parse_labels(inside).ok()?,
        None => (Vec::new(), rest),
    };
    // A value, then an optional timestamp, separated by blanks.
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    Some(Series {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A metric name at the start of `s`, and what follows it.
fn split_name(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let name = &s[..end];
    let first = name.chars().next()?;
    (!first.is_ascii_digit()).then_some((name, &s[end..]))
}

/// `label="value",...}` (after the opening brace): the pairs and what
/// follows the closing brace. Values may hold `\\`, `\"` and `\n`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = split_name(s).ok_or("a label name was expected")?;
        let rest = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or("= was expected")?;
        let rest = rest
            .trim_start()
            .strip_prefix('"')
            .ok_or("\" was expected")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("unterminated label value")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        s = rest[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(", or } was expected after a label".into());
        }
    }
}

/// A sample value: a float, `NaN`, `+Inf` or `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Which series a configured metric means: those of `name` whose labels
/// include every pair of `labels`.
#[derive(Clone, Debug, PartialEq)]
pub struct Selector {
    pub name: String,
    pub labels: Labels,
}

impl Selector {
    /// `vllm:num_requests_running` or `vllm:num_requests_running{model_name="m"}`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{s:?} is not a metric selector (like name or name{{label=\"value\"}}): {why}")
        };
        let (name, rest) = split_name(s.trim()).ok_or_else(|| bad("no metric name"))?;
        if name.is_empty() {
            return Err(bad("no metric name"));
        }
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(inside) => parse_labels(inside).map_err(|e| bad(&e))?,
            None => (Vec::new(), rest),
        };
        if !rest.trim().is_empty() {
            return Err(bad("text after the selector"));
        }
        Ok(Self {
            name: name.to_string(),
            labels,
        })
    }

    pub fn matches(&self, series: &Series) -> bool {
        series.name == self.name && self.labels.iter().all(|l| series.labels.contains(l))
    }

    /// The sum of the values of the series that match; `None` if none do.
    pub fn sum(&self, samples: &[Series]) -> Option<f64> {
        samples
            .iter()
            .filter(|s| self.matches(s))
            .map(|s| s.value)
            .reduce(|a, b| a + b)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(f, "{{{}}}", labels.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m, \"big\""} 7 1700000000000
vllm:gpu_cache_usage_perc 0.25
broken line without a value
weird_nan NaN
weird_inf +Inf
"#;

    fn sum(selector: &str) -> Option<f64> {
        Selector::parse(selector).unwrap().sum(&parse(PAGE))
    }

    #[test]
    fn comments_and_broken_lines_are_skipped() {
        let names: Vec<String> = parse(PAGE).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "vllm:num_requests_running",
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:gpu_cache_usage_perc",
                "weird_nan",
                "weird_inf",
            ]
        );
    }

    #[test]
    fn a_bare_name_sums_over_its_series_and_labels_narrow_it() {
        assert_eq!(sum("vllm:num_requests_running"), Some(5.0));
        assert_eq!(sum(r#"vllm:num_requests_running{engine="1"}"#), Some(2.0));
        assert_eq!(sum(r#"vllm:num_requests_running{engine="2"}"#), None);
        assert_eq!(sum("vllm:gpu_cache_usage_perc"), Some(0.25));
    }

    #[test]
    fn label_values_keep_escapes_commas_and_timestamps_are_ignored() {
        let s = &parse(PAGE)[2];
        assert_eq!(s.labels, [("model_name".into(), "m, \"big\"".into())]);
        assert_eq!(s.value, 7.0);
        assert_eq!(
            sum(r#"vllm:num_requests_waiting{model_name="m, \"big\""}"#),
            Some(7.0)
        );
    }

    #[test]
    fn nan_and_inf_are_values_a_missing_metric_is_none() {
        assert!(sum("weird_nan").unwrap().is_nan());
        assert_eq!(sum("weird_inf"), Some(f64::INFINITY));
        assert_eq!(sum("vllm:not_there"), None);
    }

    #[test]
    fn bad_selectors_say_why() {
        for bad in [
            "",
            "{a=\"b\"}",
            "9lives",
            "name{a=b}",
            "name{a=\"b\"",
            "name x",
        ] {
            let e = Selector::parse(bad).unwrap_err();
            assert!(e.contains("is not a metric selector"), "{bad}: {e}");
        }
        let s = Selector::parse(r#"m{a="1", b="2"}"#).unwrap();
        assert_eq!(s.to_string(), r#"m{a="1",b="2"}"#);
    }
}
