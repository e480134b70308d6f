//! Control requests answered: each `Request` dispatched, and the edits
//! (`lbctl vip add`, `backend drain`, ...) applied as a new configuration.

use std::net::IpAddr;

use crate::{
    config::{AdminState, Config},
    conn_list,
    control::{Applied, Reply, ReplyData, Request, VipRef},
    sync::SyncReport,
};

use super::Daemon;

impl Daemon {
    pub fn handle(&mut self, req: Request) -> Reply {
        match self.dispatch(req) {
            Ok(v) => Reply::data(v),
            Err(e) => Reply::error(e),
        }
    }

    fn edit(
        &mut self,
        change: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<ReplyData, String> {
        let mut config = self.config.clone();
        change(&mut config)?;
        Ok(applied(&self.apply(config)?))
    }

    fn dispatch(&mut self, req: Request) -> Result<ReplyData, String> {
        match req {
            Request::Status => Ok(self.status().into()),
            Request::VipList => Ok(self.vip_list().into()),
            Request::VipAdd { vip } => self.edit(|c| {
                c.vips.push(*vip);
                Ok(())
            }),
            Request::VipDel { vip } => self.edit(|c| {
                let i = find_vip(c, &vip)?;
                c.vips.remove(i);
                Ok(())
            }),
            Request::BackendList { vip } => self.backend_list(vip.as_ref()).map(Into::into),
            Request::VipShow { vip } => self.vip_show(&vip).map(Into::into),
            Request::BackendAdd { vip, backend } => self.edit(|c| {
                let i = find_vip(c, &vip)?;
                c.vips[i].backends.push(backend);
                Ok(())
            }),
            Request::BackendDel { vip, address } => self.edit(|c| {
                let (i, j) = find_backend(c, &vip, address)?;
                c.vips[i].backends.remove(j);
                Ok(())
            }),
            Request::BackendDrain { vip, address } => {
                self.edit(|c| set_state(c, &vip, address, AdminState::Drain))
            }
            Request::BackendUndrain { vip, address } => {
                self.edit(|c| set_state(c, &vip, address, AdminState::Active))
            }
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => self.edit(|c| {
                let (i, j) = find_backend(c, &vip, address)?;
                c.vips[i].backends[j].weight = weight;
                Ok(())
            }),
            Request::Stats => self.stats().map(Into::into),
            Request::Flow {
                src,
                sport,
                dst,
                dport,
                protocol,
            } => self.flow(src, sport, dst, dport, protocol).map(Into::into),
            Request::ConnList {
                vip,
                backend,
                client,
                probation,
                limit,
                scan,
            } => {
                if let (Some(vip), Some(_)) = (vip, backend) {
                    self.refuse_stateless_flow_count(vip)?;
                }
                let filter = conn_list::ConnFilter {
                    vip,
                    backend,
                    client,
                    probation,
                    limit: limit.min(CONN_LIST_MAX_ROWS),
                    scan: scan.min(CONN_LIST_MAX_SCAN),
                };
                let list =
                    conn_list::list(&self.maps, &self.ids, &filter).map_err(|e| e.to_string())?;
                Ok(list.into())
            }
            Request::Apply { text, format } => {
                let config =
                    Config::from_text_for(&text, format, &self.node).map_err(|e| e.to_string())?;
                Ok(applied(&self.apply(config)?))
            }
            Request::ConfigDump => Ok(self.config.clone().into()),
            Request::NodeDrain => self.set_drained(true).map(Into::into),
            Request::NodeResume => self.set_drained(false).map(Into::into),
            Request::Capture { .. } => Err("capture is served on its own connection".into()),
        }
    }
}

impl Daemon {
    /// A stateless VIP has no flows in the tables, so a count of a
    /// backend's flows there says 0 while its streams go on as second
    /// hops: an lbctl from before stateless VIPs would then call a
    /// drained backend free to remove (`backend drain --wait`). Refused,
    /// saying what to watch instead.
    fn refuse_stateless_flow_count(&self, vip: VipRef) -> Result<(), String> {
        if find_vip(&self.config, &vip).is_ok_and(|i| self.config.vips[i].stateless) {
            return Err(format!(
                "{vip} is stateless: the LB keeps no flows for it to count per backend; a drained backend's flows reach it as second hops until its drain time is over (lbctl backend list shows the time left, ss on the backend its connections)"
            ));
        }
        Ok(())
    }
}

/// The reply to an edit that went through.
fn applied(report: &SyncReport) -> ReplyData {
    Applied {
        applied: true,
        rings_rebuilt: report.rings_rebuilt,
        elapsed_ms: report.elapsed.as_secs_f64() * 1e3,
    }
    .into()
}

pub(super) fn find_vip(c: &Config, v: &VipRef) -> Result<usize, String> {
    c.vips
        .iter()
        .position(|x| x.address == v.address && x.port == v.port && x.protocol == v.protocol)
        .ok_or_else(|| format!("no VIP {v}"))
}

fn find_backend(c: &Config, v: &VipRef, address: IpAddr) -> Result<(usize, usize), String> {
    let i = find_vip(c, v)?;
    let j = c.vips[i]
        .backends
        .iter()
        .position(|b| b.address == address)
        .ok_or_else(|| format!("VIP {v} has no backend {address}"))?;
    Ok((i, j))
}

fn set_state(c: &mut Config, v: &VipRef, address: IpAddr, state: AdminState) -> Result<(), String> {
    let (i, j) = find_backend(c, v, address)?;
    c.vips[i].backends[j].state = state;
    Ok(())
}

/// `lbctl conn list` bounds: rows returned, and entries read per table
/// (the daemon's loop waits while the table is read, about a microsecond
/// per entry).
const CONN_LIST_MAX_ROWS: usize = 100_000;
const CONN_LIST_MAX_SCAN: usize = 2_000_000;
