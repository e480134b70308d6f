//! lbd's configuration: its shape, defaults, and validation. The file is
//! JSON or TOML (`config_format`), read into these same types.
//!
//! Every field is documented in `schema`. The operators' reference,
//! docs/configuration.md, is written by hand, not generated from these
//! definitions; tests/tests/docs.rs keeps it in step with them (every field
//! path, every default, the examples and every validation message). A
//! rejected file gets an error naming the field path and the reason
//! (`vips[2].backends[0].weight: 0 is out of range 1..=1000`), and nothing
//! of it is applied.
//!
//! `schema` holds the types as they are written (the serde structs and
//! their defaults), `validate` the checks that turn a parsed file into
//! `Problem`s with field paths; this file is the one way in (parse, apply
//! the host's overrides, validate). Every item is re-exported here, so
//! callers name `config::Vip`, `config::ConfigError`, ...

mod schema;
mod validate;

#[cfg(test)]
mod load_report_tests;
#[cfg(test)]
mod tests;

pub use schema::*;
pub use validate::{
    ConfigError, MAX_PROMOTIONS_PER_SECOND, MAX_TOO_BIG_BURST, MAX_TOO_BIG_PER_SECOND, MAX_WEIGHT,
    Problem, is_request_token,
};

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::config_format::{self, ConfigFormat};

/// Per-host settings given on lbd's command line, which win over the file:
/// one configuration (a Kubernetes ConfigMap, say) serves many hosts, but
/// each host tunnels from its own address. Saved with the runtime state,
/// so a restart without one takes the file's value back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverrides {
    pub tunnel_source_v4: Option<Ipv4Addr>,
    pub tunnel_source_v6: Option<Ipv6Addr>,
}

impl NodeOverrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(a) = self.tunnel_source_v4 {
            config.tunnel_source.ipv4 = Some(a);
        }
        if let Some(a) = self.tunnel_source_v6 {
            config.tunnel_source.ipv6 = Some(a);
        }
    }

    /// Set every field these overrides set in `config` back to its value
    /// in `from` (a configuration without them, or with others).
    pub fn restore(&self, config: &mut Config, from: &Config) {
        if self.tunnel_source_v4.is_some() {
            config.tunnel_source.ipv4 = from.tunnel_source.ipv4;
        }
        if self.tunnel_source_v6.is_some() {
            config.tunnel_source.ipv6 = from.tunnel_source.ipv6;
        }
    }
}

impl Config {
    /// Parse and validate JSON text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_json_for(text, &NodeOverrides::default())
    }

    /// Parse JSON text, apply this host's overrides, then validate.
    pub fn from_json_for(text: &str, node: &NodeOverrides) -> Result<Self, ConfigError> {
        Self::from_text_for(text, ConfigFormat::Json, node)
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_text_for(text, ConfigFormat::Toml, &NodeOverrides::default())
    }

    /// Parse text written in `format`, apply this host's overrides, then
    /// validate: the one way in for a configuration, whatever its format.
    pub fn from_text_for(
        text: &str,
        format: ConfigFormat,
        node: &NodeOverrides,
    ) -> Result<Self, ConfigError> {
        let mut config = format.parse(text)?;
        node.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a TOML file (`config_format::to_toml`).
    pub fn to_toml(&self) -> Result<String, String> {
        config_format::to_toml(self)
    }

    /// Read, parse and validate a file. The messages do not repeat the
    /// file's name: the caller says which file it was.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::load_for(path, &NodeOverrides::default())
    }

    /// `load` with this host's overrides applied before validation. The
    /// file's extension says whether it is JSON or TOML (checked once the
    /// file is read: a missing file is the first thing to hear about).
    pub fn load_for(path: &std::path::Path, node: &NodeOverrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("", format!("the file cannot be read: {e}")))?;
        Self::from_text_for(&text, ConfigFormat::of_path(path)?, node)
    }
}
