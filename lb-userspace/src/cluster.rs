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

use serde::Serialize;

use crate::control::{self, Request, VipRow};

/// One source's rings: VIP (`198.51.100.10:80/tcp`) → digest, `None` for a
/// VIP whose ring the node could not read.
pub type Digests = BTreeMap<String, Option<String>>;

/// The digests in a `vip list` reply. A stateless VIP's digest is marked
/// so: whether a node keeps state for it decides where its flows go as
/// much as its ring does (a node that keeps none follows the ring where
/// another follows its entries).
pub fn digests_of(vip_list: &[VipRow]) -> Digests {
    vip_list
        .iter()
        .map(|row| {
            let digest = match &row.ring_digest {
                Some(d) if row.stateless => Some(format!("{d} stateless")),
                d => d.clone(),
            };
            (row.vip(), digest)
        })
        .collect()
}

/// Read a source: a control socket is asked, a file is parsed.
pub async fn read(source: &Path) -> Result<Digests, String> {
    let name = source.display();
    let is_socket = std::fs::metadata(source)
        .map_err(|e| format!("{name}: {e}"))?
        .file_type()
        .is_socket();
    let list: Vec<VipRow> = if is_socket {
        control::call(source, &Request::VipList)
            .await
            .map_err(|e| format!("{name}: {e}"))?
    } else {
        let text = std::fs::read_to_string(source).map_err(|e| format!("{name}: {e}"))?;
        let mut de = serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            format!("{name}: not a VIP list (what `lbctl --json vip list` prints): {e}")
        })?
    };
    Ok(digests_of(&list))
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

    /// `lbctl --json cluster check`.
    pub fn report(&self) -> CheckReport<'_> {
        CheckReport {
            sources: &self.sources,
            agree: self.differing().is_empty(),
            vips: self
                .vips
                .iter()
                .map(|(vip, digests)| VipAgreement {
                    vip,
                    digests,
                    same: agree(digests),
                })
                .collect(),
        }
    }
}

/// What `lbctl --json cluster check` prints.
#[derive(Debug, Serialize)]
pub struct CheckReport<'a> {
    pub sources: &'a [String],
    /// Every VIP has one and the same digest on every source.
    pub agree: bool,
    pub vips: Vec<VipAgreement<'a>>,
}

/// One VIP's digests, a source each.
#[derive(Debug, Serialize)]
pub struct VipAgreement<'a> {
    pub vip: &'a str,
    pub digests: &'a [Option<String>],
    pub same: bool,
}

fn agree(row: &[Option<String>]) -> bool {
    row.first().is_some_and(|d| d.is_some()) && row.iter().all(|d| d == &row[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rows: &[(&str, Option<&str>)]) -> Vec<VipRow> {
        rows.iter()
            .map(|(addr, d)| VipRow {
                name: None,
                address: addr.parse().unwrap(),
                port: 80,
                protocol: crate::config::Protocol::Tcp.into(),
                forwarding: crate::config::Forwarding::Ipip.into(),
                affinity: false,
                stateless: false,
                id: Some(1),
                backends: 1,
                healthy: 1,
                in_table: 1,
                ring_digest: d.map(str::to_string),
                announced: None,
            })
            .collect()
    }

    #[test]
    fn vips_agree_only_with_one_digest_on_every_node() {
        let a = digests_of(&list(&[
            ("198.51.100.10", Some("aa")),
            ("2001:db8::10", Some("bb")),
        ]));
        let b = digests_of(&list(&[
            ("198.51.100.10", Some("aa")),
            ("2001:db8::10", Some("cc")),
        ]));
        let c = digests_of(&list(&[("198.51.100.10", Some("aa"))]));
        let same = Comparison::new(vec![("a".into(), a.clone()), ("a2".into(), a.clone())]);
        assert!(same.differing().is_empty());
        let cmp = Comparison::new(vec![("a".into(), a), ("b".into(), b), ("c".into(), c)]);
        assert_eq!(cmp.differing(), ["[2001:db8::10]:80/tcp"]);
        assert!(!cmp.report().agree);
    }

    #[test]
    fn a_vip_stateless_on_one_node_only_does_not_agree() {
        let conntrack = list(&[("198.51.100.10", Some("aa"))]);
        let mut stateless = conntrack.clone();
        stateless[0].stateless = true;
        let (a, b) = (digests_of(&conntrack), digests_of(&stateless));
        assert_eq!(b["198.51.100.10:80/tcp"].as_deref(), Some("aa stateless"));
        let cmp = Comparison::new(vec![("a".into(), a), ("b".into(), b.clone())]);
        assert_eq!(cmp.differing(), ["198.51.100.10:80/tcp"]);
        let both = Comparison::new(vec![("b".into(), b.clone()), ("b2".into(), b)]);
        assert!(both.differing().is_empty());
    }

    #[test]
    fn a_vip_without_a_digest_never_agrees() {
        let a = digests_of(&list(&[("198.51.100.10", None)]));
        let cmp = Comparison::new(vec![("a".into(), a.clone()), ("b".into(), a)]);
        assert_eq!(cmp.differing().len(), 1);
    }
}
