//! A fleet of simulated inference servers behind a real lbd, shared by
//! the inference e2e test, the bench's `inference` section and the demo:
//! the e2e topology with an [`InferenceSim`] on every backend (each with
//! its own slowness), and helpers to start lbd with a VIP's `balancing`
//! and read what it did.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use crate::{
    inference_sim::{InferenceSim, SimConfig, StreamResult},
    lbd::{Lbd, Paths},
    netns::Netns,
    topology::{Topology, VIP},
};

/// The port the simulators serve and the VIP forwards.
pub const PORT: u16 = 8000;
/// Where the fleet's lbd serves its metrics, in the LB's namespace.
pub const METRICS: &str = "127.0.0.1:9464";
/// The VIP as lbd's metrics and lbctl name it.
pub const VIP_REF: &str = "198.51.100.10:8000/tcp";

pub struct Fleet {
    /// Backend `i` of the topology runs `sims[i]`. Before `topo`, so the
    /// servers stop before their namespaces go.
    pub sims: Vec<InferenceSim>,
    pub topo: Topology,
}

impl Fleet {
    /// One backend per entry of `slowness`, named b1, b2, ..., each running
    /// `sim` (its name and slowness replaced).
    pub fn start(slowness: &[f64], sim: &SimConfig) -> Self {
        let topo = Topology::new(slowness.len());
        let sims = topo
            .backends
            .iter()
            .zip(slowness)
            .map(|(b, s)| {
                InferenceSim::start(
                    &b.ns,
                    SocketAddr::from(([0, 0, 0, 0], PORT)),
                    SimConfig {
                        name: b.name.clone(),
                        slowness: *s,
                        ..sim.clone()
                    },
                )
            })
            .collect();
        Self { sims, topo }
    }

    pub fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(VIP), PORT)
    }

    /// lbd over every backend, the VIP's `balancing` as given (JSON), no
    /// health checks, metrics on [`METRICS`]. Drop it before the fleet.
    pub fn start_lbd(&self, tag: &str, balancing: serde_json::Value) -> Lbd {
        let mut config = self
            .topo
            .lbd_config(PORT, "tcp", serde_json::json!({"type": "none"}));
        config["vips"][0]["balancing"] = balancing;
        Lbd::start_with(
            &self.topo.lb,
            Paths::new(tag),
            config,
            &["--metrics", METRICS],
        )
    }

    /// lbd's metrics text (a running lbd of this fleet's).
    pub fn lbd_metrics(&self) -> Result<String, String> {
        get_raw(
            &self.topo.lb,
            METRICS.parse().expect("metrics address"),
            "/metrics",
        )
    }

    /// `lb_ring_slots_moved_total` of the VIP, if lbd shows it.
    pub fn slots_moved(&self) -> Option<u64> {
        let text = self.lbd_metrics().ok()?;
        let prefix = format!("lb_ring_slots_moved_total{{vip=\"{VIP_REF}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    }

    /// Each backend's effective weight (in configured-weight units), in
    /// backend order, from lbd's metrics; 0 for a backend without one.
    pub fn effective_weights(&self) -> Vec<f64> {
        let text = self.lbd_metrics().unwrap_or_default();
        self.topo
            .backends
            .iter()
            .map(|b| {
                let prefix = format!(
                    "lb_backend_effective_weight{{vip=\"{VIP_REF}\",backend=\"{}\"}} ",
                    b.addr
                );
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
                    .unwrap_or(0.0)
            })
            .collect()
    }

    /// Streams by backend index among `results` started at or after
    /// `from`.
    pub fn streams_by_backend(&self, results: &[StreamResult], from: Duration) -> Vec<usize> {
        let mut by = vec![0; self.topo.backends.len()];
        for r in results.iter().filter(|r| r.started >= from) {
            if let Some(i) = r
                .backend
                .as_deref()
                .and_then(|b| self.topo.backends.iter().position(|h| h.name == b))
            {
                by[i] += 1;
            }
        }
        by
    }
}

/// The raw response (status line, headers, body) to `GET path` from `to`,
/// read in namespace `ns`, each step bounded by two seconds.
pub fn get_raw(ns: &Netns, to: SocketAddr, path: &str) -> Result<String, String> {
    ns.enter(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| format!("send: {e}"))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read: {e}"))?;
        Ok(text)
    })
}
