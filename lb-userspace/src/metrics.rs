//! Prometheus metrics, served as text on `--metrics ADDR` (off by default).
//!
//! The data plane's counters live in per-CPU maps; the daemon copies their
//! sums here once a second (`update_from`), so a scrape never touches the
//! maps and never waits for the daemon.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use lb_common::Reason;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::warn;

use crate::{
    config::{Config, Protocol},
    ids::{BackendKey, Ids},
    image,
    maps::Maps,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipLabels {
    pub vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub vip: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabels {
    pub interface: String,
    pub mode: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub table_rebuilds: Counter,
    vip_packets: Family<VipLabels, Counter>,
    vip_bytes: Family<VipLabels, Counter>,
    vip_new_flows: Family<VipLabels, Counter>,
    vip_dropped: Family<VipLabels, Counter>,
    backend_packets: Family<BackendLabels, Counter>,
    backend_bytes: Family<BackendLabels, Counter>,
    backend_new_flows: Family<BackendLabels, Counter>,
    backend_up: Family<BackendLabels, Gauge>,
    check_latency: Family<BackendLabels, Histogram>,
    packets: Family<ReasonLabels, Counter>,
    pub attached: Family<InterfaceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("lb")),
            table_rebuilds: Counter::default(),
            vip_packets: Family::default(),
            vip_bytes: Family::default(),
            vip_new_flows: Family::default(),
            vip_dropped: Family::default(),
            backend_packets: Family::default(),
            backend_bytes: Family::default(),
            backend_new_flows: Family::default(),
            backend_up: Family::default(),
            check_latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ])
            }),
            packets: Family::default(),
            attached: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "table_rebuilds",
                "Maglev tables built and published",
                m.table_rebuilds.clone(),
            );
            r.register(
                "vip_packets",
                "Packets forwarded for a VIP",
                m.vip_packets.clone(),
            );
            r.register(
                "vip_bytes",
                "Bytes (IP) forwarded for a VIP",
                m.vip_bytes.clone(),
            );
            r.register(
                "vip_new_flows",
                "New flows of a VIP",
                m.vip_new_flows.clone(),
            );
            r.register(
                "vip_dropped",
                "Packets for a VIP that were dropped",
                m.vip_dropped.clone(),
            );
            r.register(
                "backend_packets",
                "Packets forwarded to a backend",
                m.backend_packets.clone(),
            );
            r.register(
                "backend_bytes",
                "Bytes (IP) forwarded to a backend",
                m.backend_bytes.clone(),
            );
            r.register(
                "backend_new_flows",
                "New flows sent to a backend",
                m.backend_new_flows.clone(),
            );
            r.register(
                "backend_up",
                "1 if the backend passes its health checks",
                m.backend_up.clone(),
            );
            r.register(
                "health_check_seconds",
                "Health check latency",
                m.check_latency.clone(),
            );
            r.register(
                "packets",
                "Packets by verdict reason (see README counters)",
                m.packets.clone(),
            );
            r.register(
                "attached",
                "1 per interface the program is attached to, by XDP mode",
                m.attached.clone(),
            );
        }
        m
    }
}

/// Every metric family lbd exports (without the `lb_` prefix and the
/// `_total` / `_bucket` suffixes of the text format), with its type.
pub const EXPORTED: &[(&str, &str)] = &[
    ("table_rebuilds", "counter"),
    ("vip_packets", "counter"),
    ("vip_bytes", "counter"),
    ("vip_new_flows", "counter"),
    ("vip_dropped", "counter"),
    ("backend_packets", "counter"),
    ("backend_bytes", "counter"),
    ("backend_new_flows", "counter"),
    ("backend_up", "gauge"),
    ("health_check_seconds", "histogram"),
    ("packets", "counter"),
    ("attached", "gauge"),
];

fn vip_name(address: std::net::IpAddr, port: u16, protocol: Protocol) -> String {
    let p = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    if address.is_ipv6() {
        format!("[{address}]:{port}/{p}")
    } else {
        format!("{address}:{port}/{p}")
    }
}

fn set(c: &Counter, v: u64) {
    c.inner().store(v, Ordering::Relaxed);
}

impl Metrics {
    pub fn observe_check(
        &self,
        vip: &crate::config::Vip,
        backend: std::net::IpAddr,
        latency: Duration,
    ) {
        let labels = BackendLabels {
            vip: vip_name(vip.address, vip.port, vip.protocol),
            backend: backend.to_string(),
        };
        self.check_latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// Copy the data plane's counters (sums over CPUs) into the metrics.
    pub fn update_from(
        &self,
        maps: &Maps,
        ids: &Ids,
        config: &Config,
        up: impl Fn(&BackendKey) -> bool,
    ) {
        for r in Reason::ALL {
            if let Ok(n) = maps.reason_count(*r) {
                let kind = format!("{:?}", r.kind()).to_lowercase();
                set(
                    &self.packets.get_or_create(&ReasonLabels {
                        reason: r.name().into(),
                        kind,
                    }),
                    n,
                );
            }
        }
        for v in &config.vips {
            let key = image::vip_key(v.address, v.port, v.protocol);
            let name = vip_name(v.address, v.port, v.protocol);
            if let Some(Ok(s)) = ids.vip(&key).map(|id| maps.vip_stats(id)) {
                let l = VipLabels { vip: name.clone() };
                set(&self.vip_packets.get_or_create(&l), s.packets);
                set(&self.vip_bytes.get_or_create(&l), s.bytes);
                set(&self.vip_new_flows.get_or_create(&l), s.new_flows);
                set(&self.vip_dropped.get_or_create(&l), s.dropped);
            }
            for b in &v.backends {
                let bkey = BackendKey {
                    vip: key,
                    addr: b.address,
                };
                let l = BackendLabels {
                    vip: name.clone(),
                    backend: b.address.to_string(),
                };
                self.backend_up.get_or_create(&l).set(up(&bkey) as i64);
                if let Some(Ok(s)) = ids.backend(&bkey).map(|id| maps.backend_stats(id)) {
                    set(&self.backend_packets.get_or_create(&l), s.packets);
                    set(&self.backend_bytes.get_or_create(&l), s.bytes);
                    set(&self.backend_new_flows.get_or_create(&l), s.new_flows);
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// Serve `GET /metrics` (and `GET /healthz`) on `addr`: a deliberately tiny
/// HTTP/1.0 responder, enough for Prometheus and probes.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body, kind) = match path {
                "/metrics" => (
                    "200 OK",
                    metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_list_matches_what_is_registered() {
        let m = Metrics::default();
        let b = BackendLabels {
            vip: "v".into(),
            backend: "b".into(),
        };
        let v = VipLabels { vip: "v".into() };
        m.vip_packets.get_or_create(&v).inc();
        m.vip_bytes.get_or_create(&v).inc();
        m.vip_new_flows.get_or_create(&v).inc();
        m.vip_dropped.get_or_create(&v).inc();
        m.backend_packets.get_or_create(&b).inc();
        m.backend_bytes.get_or_create(&b).inc();
        m.backend_new_flows.get_or_create(&b).inc();
        m.backend_up.get_or_create(&b).set(1);
        m.check_latency.get_or_create(&b).observe(0.001);
        m.packets
            .get_or_create(&ReasonLabels {
                reason: "tx".into(),
                kind: "forwarded".into(),
            })
            .inc();
        m.attached
            .get_or_create(&InterfaceLabels {
                interface: "eth0".into(),
                mode: "native".into(),
            })
            .set(1);
        let text = m.render();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, EXPORTED.len(), "{text}");
        for (name, kind) in EXPORTED {
            assert!(
                text.contains(&format!("# TYPE lb_{name} {kind}")),
                "lb_{name} {kind} missing:\n{text}"
            );
        }
    }
}
