//! Which virtual service a packet is for: an exact (address, port, protocol)
//! match first, then the address's port-less VIP, if it has one (and the
//! control plane said port-less VIPs exist, `CFG_F_PORTLESS_VIPS`).

use lb_common::{
    FlowKey,
    maps::{CFG_F_PORTLESS_VIPS, LbConfig, VIP_F_PORTLESS, VipKey, VipMeta},
};

use crate::maps::VIPS;

#[inline(always)]
pub fn lookup(flow: &FlowKey, cfg: &LbConfig) -> Option<VipMeta> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out before the map can change it.
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(*meta);
    }
    if cfg.flags & CFG_F_PORTLESS_VIPS == 0 {
        return None;
    }
    key.port = 0;
    // SAFETY: as above.
    match unsafe { VIPS.get(&key) } {
        Some(meta) if meta.flags & VIP_F_PORTLESS != 0 => Some(*meta),
        _ => None,
    }
}
