//! The two ways lbd's configuration file may be written: JSON, and TOML
//! for a file that wants comments. A name ending in `.toml` is read as
//! TOML; any other as JSON, as every file was before TOML was accepted, so
//! a deployment whose file is called `lbd.conf` (or `/dev/stdin`) keeps
//! working.
//!
//! Both are read into the same `Config` types through
//! `serde_path_to_error`, so a problem is named by the same field path
//! (`vips[0].backends[1].weight`) whichever the format, and both go through
//! the same validation afterwards (`Config::from_text_for`). TOML also
//! gives the line and column of what its parser saw.
//!
//! TOML has no `null`. Every unset field is written by leaving it out,
//! which reads back as unset, except `speaker.bird_socket`, whose unset
//! value is not its default: TOML spells it `""` (which JSON accepts too).

use std::{path::Path, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

/// How a configuration file is written, chosen by its extension: JSON
/// (`.json`) or TOML (`.toml`, which allows comments). The variants have
/// no doc comments, which clap would print as a long list in `--help`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ConfigFormat {
    #[default]
    Json,
    Toml,
}

impl ConfigFormat {
    /// The format of the file at `path`: TOML if its name ends in
    /// `.toml`, else JSON. (A `Result` so that callers need not change
    /// should a name ever be refused.)
    pub fn of_path(path: &Path) -> Result<Self, ConfigError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Self::Toml),
            _ => Ok(Self::Json),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Toml => "toml",
        }
    }

    /// For `skip_serializing_if`: JSON is what a request without a format
    /// meant before TOML existed.
    pub fn is_json(&self) -> bool {
        *self == Self::Json
    }

    /// `text` read as a configuration, not yet validated.
    pub fn parse(self, text: &str) -> Result<Config, ConfigError> {
        match self {
            Self::Json => parse_json(text),
            Self::Toml => parse_toml(text),
        }
    }
}

impl FromStr for ConfigFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "toml" => Ok(Self::Toml),
            _ => Err(format!("{s:?} is not a configuration format (json, toml)")),
        }
    }
}

fn parse_json(text: &str) -> Result<Config, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = if inner.is_syntax() || inner.is_eof() {
            format!(
                "invalid JSON at line {} column {}: {inner}",
                inner.line(),
                inner.column()
            )
        } else {
            // serde_json appends " at line L column C"; the path says where.
            let text = inner.to_string();
            match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        };
        ConfigError::one(path, reason)
    })
}

fn parse_toml(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let at = position(text, e.span()).unwrap_or_else(|| "".into());
        ConfigError::one("", format!("invalid TOML{at}: {}", one_line(e.message())))
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = match position(text, inner.span()) {
            Some(at) => format!("{} (TOML{at})", one_line(inner.message())),
            None => one_line(inner.message()),
        };
        ConfigError::one(path, reason)
    })
}

/// ` at line L column C` (both from 1, the column in characters) of the
/// start of `span` in `text`.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> Option<String> {
    let start = span?.start.min(text.len());
    let before = text.get(..start)?;
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    Some(format!(" at line {line} column {column}"))
}

/// A message as one line: errors are shown on one line everywhere.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `config` as a TOML file, every field it holds written out (through its
/// JSON, as `json_to_toml`), refused if it would not read back as `config`.
pub fn to_toml(config: &Config) -> Result<String, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot be written as TOML: {e}");
    let text = json_to_toml(&serde_json::to_value(config).map_err(|e| cannot(&e))?)?;
    match parse_toml(&text) {
        Ok(back) if back == *config => Ok(text),
        Ok(_) => Err(cannot(&"it would read back differently")),
        Err(e) => Err(cannot(&e)),
    }
}

/// A configuration as JSON (`config_dump`'s reply) as a TOML file, with
/// every option it holds, known to this build or not: lbctl writes a newer
/// lbd's configuration too. TOML has no null: an option that is null is
/// left out (unset), but for `speaker.bird_socket`, whose null (not
/// watched) is written `""`, as its default is a path. Refused if the text
/// would not read back as the same values: TOML's integers end at
/// 2^63 - 1, where JSON's do not.
pub fn json_to_toml(config: &serde_json::Value) -> Result<String, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot be written as TOML: {e}");
    let mut config = config.clone();
    if let Some(speaker) = config
        .get_mut("speaker")
        .and_then(serde_json::Value::as_object_mut)
        && speaker.get("bird_socket") == Some(&serde_json::Value::Null)
    {
        speaker.insert("bird_socket".into(), "".into());
    }
    drop_nulls(&mut config);
    let table = toml::Table::try_from(&config).map_err(|e| cannot(&e))?;
    let text = toml::to_string_pretty(&table).map_err(|e| cannot(&e))?;
    let back: toml::Table = toml::from_str(&text).map_err(|e| cannot(&e))?;
    match serde_json::to_value(back) {
        Ok(back) if back == config => Ok(text),
        Ok(_) => Err(cannot(&"it would read back differently")),
        Err(e) => Err(cannot(&e)),
    }
}

/// Every object member that is null, removed, at any depth.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump keeps lbd's order of the settings (people edit it), not an
    /// alphabetical one.
    #[test]
    fn a_dump_keeps_the_order_of_the_settings() {
        let sent: serde_json::Value = serde_json::from_str(
            r#"{"interfaces": [{"name": "eth0"}], "control": {"group": "lb"}}"#,
        )
        .unwrap();
        let toml = json_to_toml(&sent).unwrap();
        let interfaces = toml.find("[[interfaces]]").expect("interfaces");
        let control = toml.find("[control]").expect("control");
        assert!(interfaces < control, "{toml}");
        assert_eq!(
            serde_json::to_string(&sent).unwrap(),
            r#"{"interfaces":[{"name":"eth0"}],"control":{"group":"lb"}}"#
        );
    }

    #[test]
    fn a_toml_name_is_read_as_toml_and_any_other_as_json() {
        let of = |p: &str| ConfigFormat::of_path(Path::new(p));
        assert_eq!(of("/etc/lbd/lbd.toml"), Ok(ConfigFormat::Toml));
        assert_eq!(of("lbd.d/x.y.toml"), Ok(ConfigFormat::Toml));
        for other in [
            "/etc/lbd/lbd.json",
            "/etc/lbd/lbd",
            "lbd.conf",
            "lbd.JSON",
            "lbd.toml.bak",
            ".toml",
            "/dev/stdin",
        ] {
            assert_eq!(of(other), Ok(ConfigFormat::Json), "{other}");
        }
    }

    #[test]
    fn a_toml_problem_is_named_by_its_path_and_line() {
        let text = "interfaces = [{ name = \"eth0\" }]\n\
                    tunnel_source = { ipv4 = \"198.51.100.2\" }\n\
                    \n\
                    [[vips]]\n\
                    address = \"198.51.100.10\"\n\
                    port = 80\n\
                    protocol = \"tcp\"\n\
                    [[vips.backends]]\n\
                    address = \"198.51.100.101\"\n\
                    [[vips.backends]]\n\
                    address = \"198.51.100.102\"\n\
                    weight = \"heavy\"\n";
        assert!(ConfigFormat::Toml.parse(text).is_err());
        assert_eq!(
            ConfigFormat::Toml.parse(text).unwrap_err().to_string(),
            "vips[0].backends[1].weight: invalid type: string \"heavy\", expected u32 (TOML at line 12 column 10)"
        );
        let unknown = text.replace("weight = \"heavy\"", "wieght = 2");
        let message = ConfigFormat::Toml.parse(&unknown).unwrap_err().to_string();
        assert!(
            message
                .starts_with("vips[0].backends[1].wieght: unknown field `wieght`, expected one of"),
            "{message}"
        );
        assert!(message.ends_with("(TOML at line 12 column 1)"), "{message}");
    }

    #[test]
    fn a_toml_syntax_error_gives_line_and_column() {
        let message = ConfigFormat::Toml
            .parse("interfaces = [{ name = \"eth0\" }]\nmtu = = 1500\n")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("invalid TOML at line 2 column "),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    /// The ```json block of docs/configuration.md that sets the most
    /// fields: tests/tests/docs.rs holds it to setting every field.
    fn documented_complete_example() -> serde_json::Value {
        let doc = include_str!("../../docs/configuration.md");
        doc.split("```json\n")
            .skip(1)
            .filter_map(|rest| rest.split_once("```").map(|(body, _)| body))
            .map(|body| serde_json::from_str::<serde_json::Value>(body).unwrap())
            .max_by_key(|v| v.to_string().len())
            .expect("a ```json example in docs/configuration.md")
    }

    /// Every configuration type through TOML and back: the shipped
    /// example, the documented one that sets every field, and the values
    /// TOML has no literal for (unset fields, the unset BIRD socket).
    #[test]
    fn every_config_round_trips_through_toml() {
        let complete = documented_complete_example();
        let mut no_speaker = complete.clone();
        no_speaker["speaker"]["bird_socket"] = serde_json::Value::Null;
        let mut unset = complete.clone();
        unset["next_hop"] = serde_json::json!({"fib": true});
        unset["control"]["group"] = serde_json::Value::Null;
        unset.as_object_mut().unwrap().remove("announce");
        unset["vips"][0]["name"] = serde_json::Value::Null;
        unset["vips"][0]["second_chance_s"] = serde_json::Value::Null;
        unset["vips"][0]["balancing"] = serde_json::json!({});
        unset["vips"][0]["health_check"] = serde_json::json!({"type": "tcp"});
        unset["vips"][1]["backends"] = serde_json::json!([]);
        let configs = [
            include_str!("../../examples/lbd.json").to_string(),
            complete.to_string(),
            no_speaker.to_string(),
            unset.to_string(),
            r#"{"interfaces": [{"name": "eth0"}]}"#.to_string(),
        ];
        for json in configs {
            let config = Config::from_json(&json).unwrap();
            let toml = config.to_toml().unwrap();
            assert_eq!(Config::from_toml(&toml), Ok(config.clone()), "{toml}");
            // The JSON dump and the TOML one are the same configuration.
            let json_again = serde_json::to_string(&config).unwrap();
            assert_eq!(Config::from_json(&json_again), Ok(config), "{json_again}");
        }
    }

    #[test]
    fn an_unset_bird_socket_is_empty_in_toml_and_null_in_json() {
        let mut v = documented_complete_example();
        v["speaker"]["bird_socket"] = serde_json::Value::Null;
        let config = Config::from_json(&v.to_string()).unwrap();
        assert_eq!(config.speaker.bird_socket, None);
        let toml = config.to_toml().unwrap();
        assert!(toml.contains("[speaker]\nbird_socket = \"\"\n"), "{toml}");
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["speaker"], serde_json::json!({"bird_socket": null}));
        // JSON takes "" too, for one spelling in both.
        v["speaker"]["bird_socket"] = "".into();
        assert_eq!(Config::from_json(&v.to_string()), Ok(config));
    }

    /// lbctl writes a newer lbd's configuration as TOML with the options
    /// this build does not know, where `Config` would refuse them.
    #[test]
    fn options_this_build_does_not_know_are_written_as_toml() {
        let mut v = documented_complete_example();
        v["tables"]["added_later"] = 7.into();
        v["added_later"] = serde_json::json!({"mode": "new", "unset": null});
        assert!(Config::from_json(&v.to_string()).is_err());
        let toml = json_to_toml(&v).unwrap();
        let back: toml::Table = toml::from_str(&toml).unwrap();
        assert_eq!(
            back["tables"]["added_later"].as_integer(),
            Some(7),
            "{toml}"
        );
        assert_eq!(
            back["added_later"]
                .as_table()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["mode"],
            "{toml}"
        );
        // What the build knows of it reads back as the configuration.
        v["tables"].as_object_mut().unwrap().remove("added_later");
        v.as_object_mut().unwrap().remove("added_later");
        let config = Config::from_json(&v.to_string()).unwrap();
        assert_eq!(
            json_to_toml(&v).map(|t| Config::from_toml(&t)),
            Ok(Ok(config))
        );
    }

    #[test]
    fn a_config_toml_cannot_hold_is_refused_not_written_wrong() {
        let mut v = documented_complete_example();
        v["vips"][0]["balancing"]["flows_per_weight"] = u64::MAX.into();
        let config = Config::from_json(&v.to_string()).unwrap();
        let err = config.to_toml().unwrap_err();
        assert!(err.starts_with("cannot be written as TOML: "), "{err}");
    }

    /// examples/lbd.toml is examples/lbd.json with comments: both load,
    /// validate, and say the same.
    #[test]
    fn shipped_toml_example_is_the_json_example() {
        let toml = Config::from_toml(include_str!("../../examples/lbd.toml")).unwrap();
        let json = Config::from_json(include_str!("../../examples/lbd.json")).unwrap();
        assert_eq!(toml, json);
        assert_eq!(
            Config::load(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/lbd.toml"
            ))),
            Ok(json)
        );
    }
}
