//! `lbctl conn list`: the flows the data plane holds, like `ipvsadm -Lc`.
//!
//! Read from the connection table (and, if asked, the probation table) by
//! walking the map in the kernel's order, a syscall pair per entry, so a
//! walk is bounded (`scan`) and says when it stopped early: the daemon's
//! loop waits while it runs. Each row says whether the entry still pins
//! its flow, by the same rule the data plane applies (`entry_pins`).

use std::net::IpAddr;

use crate::{
    addr::from_map,
    config::Protocol,
    control::{ConnList, ConnRow, ConnTable, VipRef},
    ids::Ids,
    image,
    maps::{Maps, MapsError},
};
use ipnet::IpNet;
use lb_common::{
    FlowKey,
    maps::{ConnEntry, entry_pins},
};

/// Which flows to show.
#[derive(Clone, Debug, Default)]
pub struct ConnFilter {
    pub vip: Option<VipRef>,
    pub backend: Option<IpAddr>,
    pub client: Option<IpNet>,
    /// Also the probation table (flows seen once).
    pub probation: bool,
    /// Rows to return at most.
    pub limit: usize,
    /// Entries to read at most, per table.
    pub scan: usize,
}

pub fn list(maps: &Maps, ids: &Ids, filter: &ConnFilter) -> Result<ConnList, MapsError> {
    let vip_id = match &filter.vip {
        Some(v) => match ids.vip(&image::vip_key(v.address, v.port, v.protocol)) {
            Some(id) => Some(id),
            None => {
                return Ok(ConnList {
                    rows: Vec::new(),
                    scanned: 0,
                    truncated: false,
                    more: false,
                    matched: 0,
                    pinned: 0,
                });
            }
        },
        None => None,
    };
    let vip_names: std::collections::BTreeMap<u32, String> =
        ids.vips().map(|(k, id)| (*id, k.to_string())).collect();
    let backend_addrs: std::collections::BTreeMap<u32, IpAddr> =
        ids.backends().map(|(k, id)| (*id, k.addr)).collect();
    let now_ns = monotonic_coarse_ns();
    let mut out = ConnList {
        rows: Vec::new(),
        scanned: 0,
        truncated: false,
        more: false,
        matched: 0,
        pinned: 0,
    };
    let tables: &[ConnTable] = if filter.probation {
        &[ConnTable::Connection, ConnTable::Probation]
    } else {
        &[ConnTable::Connection]
    };
    for &table in tables {
        let entries = match table {
            ConnTable::Connection => maps.conns(filter.scan + 1)?,
            ConnTable::Probation => maps.probation_entries(filter.scan + 1)?,
        };
        if entries.len() > filter.scan {
            out.truncated = true;
        }
        for (flow, entry) in entries.into_iter().take(filter.scan) {
            out.scanned += 1;
            if vip_id.is_some_and(|id| id != entry.vip_id) {
                continue;
            }
            let backend = backend_addrs.get(&entry.backend_id).copied();
            if filter.backend.is_some() && filter.backend != backend {
                continue;
            }
            let Some(client) = from_map(&flow.src, flow.family) else {
                continue;
            };
            if filter.client.is_some_and(|net| !net.contains(&client)) {
                continue;
            }
            let row = row(
                &flow, &entry, table, client, backend, &vip_names, maps, now_ns,
            );
            out.matched += 1;
            // A flow the client closed (FIN or RST seen) is ending.
            out.pinned += (row.stale.is_none() && !row.closed) as usize;
            if out.rows.len() == filter.limit {
                out.more = true;
                continue;
            }
            out.rows.push(row);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn row(
    flow: &FlowKey,
    entry: &ConnEntry,
    table: ConnTable,
    client: IpAddr,
    backend: Option<IpAddr>,
    vip_names: &std::collections::BTreeMap<u32, String>,
    maps: &Maps,
    now_ns: u64,
) -> ConnRow {
    let stale = match maps.backend(entry.backend_id) {
        Ok(b) => entry_pins(entry, entry.vip_id, &b)
            .err()
            .map(|why| why.help().to_string()),
        Err(_) => Some("its backend id is not in the backend table".to_string()),
    };
    let client = std::net::SocketAddr::new(client, flow.sport).to_string();
    ConnRow {
        protocol: Protocol::from_number(flow.proto).map(Into::into),
        client,
        vip: vip_names
            .get(&entry.vip_id)
            .cloned()
            .unwrap_or_else(|| format!("VIP id {}", entry.vip_id)),
        backend: backend.map_or_else(
            || format!("backend id {}", entry.backend_id),
            |a| a.to_string(),
        ),
        table: table.into(),
        idle_s: now_ns.saturating_sub(entry.last_seen()) / 1_000_000_000,
        closed: entry.closed(),
        stale,
    }
}

/// The clock of `bpf_ktime_get_coarse_ns`.
pub(crate) fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
