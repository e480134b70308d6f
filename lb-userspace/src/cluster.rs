//! `lbctl cluster check`: do several load-balancer nodes send every flow of
//! every VIP to the same backend? Behind one ECMP route the router may hand
//! a flow's packets to any node, so their rings must agree; each node's
//! `vip list` carries its live ring digests (`ring_digest`), and this
//! compares them.
//!
//! A source is a node's control socket, or a file holding what
//! `lbctl --json vip list` printed on a node that is not reachable from
//! here (copy it over, or collect it with your configuration tooling).

use std::{collections::BTreeMap, os::unix::fs::FileTypeExt, path::Path};

use serde_json::{Value, json};

use crate::control::{self, Request};

/// One source's rings: VIP (`198.51.100.10:80/tcp`) → digest, `None` for a
/// VIP whose ring the node could not read.
pub type Digests = BTreeMap<String, Option<String>>;

/// An address as it goes before `:port`: IPv6 in brackets, as
/// `SocketAddr` writes it (for addresses read back as text from JSON).
pub fn bracketed(address: &str) -> std::borrow::Cow<'_, str> {
    if address.contains(':') {
        format!("[{address}]").into()
    } else {
        address.into()
    }
}

/// The digests in a `vip list` reply.
pub fn digests_of(vip_list: &Value) -> Result<Digests, String> {
    let rows = vip_list
        .as_array()
        .ok_or("not a VIP list (a JSON array, as `lbctl --json vip list` prints)")?;
    let mut out = Digests::new();
    for row in rows {
        let address = row["address"].as_str().ok_or("a VIP without an address")?;
        let vip = format!(
            "{}:{}/{}",
            bracketed(address),
            row["port"],
            row["protocol"].as_str().unwrap_or("?")
        );
        out.insert(vip, row["ring_digest"].as_str().map(str::to_string));
    }
    Ok(out)
}

/// Read a source: a control socket is asked, a file is parsed.
pub async fn read(source: &Path) -> Result<Digests, String> {
    let name = source.display();
    let is_socket = std::fs::metadata(source)
        .map_err(|e| format!("{name}: {e}"))?
        .file_type()
        .is_socket();
    let list = if is_socket {
        control::call(source, &Request::VipList)
            .await
            .map_err(|e| format!("{name}: {e}"))?
    } else {
        let text = std::fs::read_to_string(source).map_err(|e| format!("{name}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?
    };
    digests_of(&list).map_err(|e| format!("{name}: {e}"))
}

/// How the sources compare, VIP by VIP: a VIP agrees when every source has
/// it with one and the same digest.
pub struct Comparison {
    pub sources: Vec<String>,
    /// VIP → each source's digest (`None`: absent there, or unreadable).
    pub vips: BTreeMap<String, Vec<Option<String>>>,
}

impl Comparison {
    pub fn new(sources: Vec<(String, Digests)>) -> Self {
        let mut vips: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for (_, digests) in &sources {
            for vip in digests.keys() {
                vips.entry(vip.clone()).or_default();
            }
        }
        for (vip, row) in vips.iter_mut() {
            *row = sources
                .iter()
                .map(|(_, d)| d.get(vip).cloned().flatten())
                .collect();
        }
        Self {
            sources: sources.into_iter().map(|(name, _)| name).collect(),
            vips,
        }
    }

    /// VIPs whose digests differ (or that some source lacks).
    pub fn differing(&self) -> Vec<&str> {
        self.vips
            .iter()
            .filter(|(_, row)| !agree(row))
            .map(|(vip, _)| vip.as_str())
            .collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sources": self.sources,
            "agree": self.differing().is_empty(),
            "vips": self.vips.iter().map(|(vip, row)| json!({
                "vip": vip,
                "digests": row,
                "same": agree(row),
            })).collect::<Vec<_>>(),
        })
    }
}

fn agree(row: &[Option<String>]) -> bool {
    row.first().is_some_and(|d| d.is_some()) && row.iter().all(|d| d == &row[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rows: &[(&str, Option<&str>)]) -> Value {
        Value::Array(
            rows.iter()
                .map(|(addr, d)| json!({"address": addr, "port": 80, "protocol": "tcp", "ring_digest": d}))
                .collect(),
        )
    }

    #[test]
    fn vips_agree_only_with_one_digest_on_every_node() {
        let a = digests_of(&list(&[
            ("198.51.100.10", Some("aa")),
            ("2001:db8::10", Some("bb")),
        ]))
        .unwrap();
        let b = digests_of(&list(&[
            ("198.51.100.10", Some("aa")),
            ("2001:db8::10", Some("cc")),
        ]))
        .unwrap();
        let c = digests_of(&list(&[("198.51.100.10", Some("aa"))])).unwrap();
        let same = Comparison::new(vec![("a".into(), a.clone()), ("a2".into(), a.clone())]);
        assert!(same.differing().is_empty());
        let cmp = Comparison::new(vec![("a".into(), a), ("b".into(), b), ("c".into(), c)]);
        assert_eq!(cmp.differing(), ["[2001:db8::10]:80/tcp"]);
        assert_eq!(cmp.to_json()["agree"], false);
    }

    #[test]
    fn a_vip_without_a_digest_never_agrees() {
        let a = digests_of(&list(&[("198.51.100.10", None)])).unwrap();
        let cmp = Comparison::new(vec![("a".into(), a.clone()), ("b".into(), a)]);
        assert_eq!(cmp.differing().len(), 1);
    }
}
