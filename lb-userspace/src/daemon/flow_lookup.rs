//! `lbctl flow`: where the data plane sends a flow's next packet, decided
//! as the program decides, over the live maps.

use std::net::IpAddr;

use crate::{addr::to_map, config::Protocol, control::FlowDecision, image};
use lb_common::{
    FlowKey,
    flow::{PROTO_TCP, flow_hash, maglev_slot},
    maps::{VIP_F_AFFINITY, VIP_F_PORTLESS, VIP_F_STATELESS, backend_serves, entry_pins},
};

use super::Daemon;

impl Daemon {
    /// What the data plane does with the flow's next packet, decided the
    /// way it decides (`lb_common::maps::entry_pins` / `backend_serves`)
    /// over the live maps: a connection entry that the program would find
    /// stale is reported as such, with where the flow goes instead.
    pub(super) fn flow(
        &self,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        protocol: Protocol,
    ) -> Result<FlowDecision, String> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err("source and destination must be of the same address family".into());
        }
        let exact = image::vip_key(dst, dport, protocol);
        let portless = image::vip_key(dst, 0, protocol);
        let (vkey, vip) = [exact, portless]
            .into_iter()
            .find_map(|k| self.applied.vips.get(&k).map(|v| (k, v.clone())))
            .filter(|(k, v)| k.port == dport || v.flags & VIP_F_PORTLESS != 0)
            .ok_or_else(|| format!("{dst}:{dport}/{} is not a VIP", protocol.name()))?;
        let (s, family) = to_map(src);
        let (d, _) = to_map(dst);
        let proto = vkey.proto;
        let flow = FlowKey {
            src: s,
            dst: d,
            sport,
            dport,
            proto,
            family,
            _pad: [0; 2],
        };
        let describe = |id: u32| {
            self.ids
                .backends()
                .find(|(_, i)| **i == id)
                .map(|(k, _)| k.addr.to_string())
                .unwrap_or_else(|| format!("id {id}"))
        };
        let backend = |id: u32| self.maps.backend(id).map_err(|e| e.to_string());
        // The program looks in the connection table, and only when the
        // flow has no entry there, in the probation table; for a stateless
        // VIP in neither (an entry left from before it was made stateless
        // is ignored).
        let stateless = vip.flags & VIP_F_STATELESS != 0;
        let conn = if stateless {
            None
        } else {
            self.maps.conn(&flow).map_err(|e| e.to_string())?
        };
        let (entry, table, holds) = match conn {
            Some(e) => (
                Some(e),
                "connection",
                "connection entry (established flow keeps its backend)",
            ),
            None if stateless => (None, "", ""),
            None => (
                self.maps
                    .probation_entry(&flow)
                    .map_err(|e| e.to_string())?,
                "probation",
                "probation entry (one packet seen; the next enters the connection table)",
            ),
        };
        let mut stale = None;
        if let Some(entry) = entry {
            match entry_pins(&entry, vip.id, &backend(entry.backend_id)?) {
                Ok(()) => {
                    return Ok(FlowDecision {
                        backend: Some(describe(entry.backend_id)),
                        backend_id: Some(entry.backend_id),
                        hash: None,
                        slot: None,
                        second_hop: None,
                        stale_entry: None,
                        reason: holds.into(),
                    });
                }
                Err(_) if entry.vip_id != vip.id => {
                    stale = Some(format!("its {table} entry was made for another VIP"));
                }
                Err(why) => {
                    stale = Some(format!(
                        "its {table} entry names backend id {} ({}), which can no longer take it: {}",
                        entry.backend_id,
                        describe(entry.backend_id),
                        why.help()
                    ));
                }
            }
        }
        let rescheduled = stale
            .as_ref()
            .map(|why| format!("; rescheduled, since {why}"))
            .unwrap_or_default();
        let hash = flow_hash(&flow, vip.flags & VIP_F_AFFINITY != 0);
        let slot = maglev_slot(hash, self.config.tables.ring_size);
        let meta = self
            .maps
            .vip(&vkey.into())
            .map_err(|e| e.to_string())?
            .ok_or("VIP not in the data plane")?;
        let id = self
            .maps
            .ring_slot(&meta, slot)
            .map_err(|e| e.to_string())?;
        // Dropped: the table names no backend that can take the flow.
        let dropped = |reason: String| FlowDecision {
            backend: None,
            backend_id: None,
            hash: Some(hash),
            slot: Some(slot),
            second_hop: None,
            stale_entry: stale.clone(),
            reason,
        };
        if id == lb_common::maps::NO_BACKEND {
            return Ok(dropped(format!(
                "table slot {slot} is empty: the VIP has no backend in service (drop_no_backend){rescheduled}"
            )));
        }
        if let Err(why) = backend_serves(&backend(id)?, vip.id) {
            return Ok(dropped(format!(
                "table slot {slot} names backend {}, which cannot take it: dropped as {} ({}){rescheduled}",
                describe(id),
                why.name(),
                why.help()
            )));
        }
        let second_hop = if proto == PROTO_TCP {
            self.second_hop(meta.vip_id, slot, id)?
        } else {
            None
        };
        let note = match second_hop {
            Some(prev) => format!(
                " (the slot moved from {} within the VIP's second-chance window: {} goes there with {} as its second hop, which keeps it if it has the connection)",
                describe(prev),
                if stateless {
                    "every packet but a SYN (stateless VIP)"
                } else {
                    "a packet in neither table but a SYN"
                },
                describe(prev)
            ),
            None if stateless => " (stateless VIP: every packet goes by the ring, and no entry is made)".to_string(),
            None if proto == PROTO_TCP => " (a SYN is not entered in the connection table; the handshake's ACK goes on probation, the next packet enters it)".to_string(),
            None => String::new(),
        };
        Ok(FlowDecision {
            backend: Some(describe(id)),
            backend_id: Some(id),
            hash: Some(hash),
            slot: Some(slot),
            second_hop: second_hop.map(describe),
            reason: format!(
                "table slot {slot} of {}{note}{rescheduled}",
                self.config.tables.ring_size
            ),
            stale_entry: stale,
        })
    }

    /// The previous owner a packet on `slot` of VIP `vip_id` (owned by
    /// `owner` now) takes along as a second hop, by the program's rule
    /// (`second_chance::previous_owner`): second chance on, the slot's
    /// window open, and the previous owner still serving the VIP (not
    /// down), in the owner's address family.
    fn second_hop(&self, vip_id: u32, slot: u32, owner: u32) -> Result<Option<u32>, String> {
        let e = |e: crate::maps::MapsError| e.to_string();
        if self.maps.second_chance().map_err(e)?.gue_port == 0 {
            return Ok(None);
        }
        let now_s = lb_common::maps::coarse_seconds(crate::second_chance::monotonic_ns());
        let prev = self.maps.prev_owners(vip_id).map_err(e)?[slot as usize];
        if !prev.live_at(now_s) || prev.owner == owner {
            return Ok(None);
        }
        let hop = self.maps.backend(prev.owner).map_err(e)?;
        let now = self.maps.backend(owner).map_err(e)?;
        let usable = backend_serves(&hop, vip_id).is_ok() && hop.family == now.family;
        Ok(usable.then_some(prev.owner))
    }
}
