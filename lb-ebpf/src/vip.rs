//! Which virtual service a packet is for: an exact (address, port, protocol)
//! match first, then the address's port-less VIP, if it has one (and the
//! control plane said port-less VIPs exist, `CFG_F_PORTLESS_VIPS`).
//! A destination whose bit in `VIP_FILTER` is clear is no VIP's: most of a
//! host's traffic is decided with one array read instead of a hash lookup.

use lb_common::{
    FlowKey,
    maps::{
        CFG_F_LOOKUP_CACHES, CFG_F_PORTLESS_VIPS, LbConfig, VIP_F_PORTLESS, VipKey, VipMeta,
        vip_filter_bit,
    },
};

use crate::maps::{VIP_FILTER, VIPS};

#[inline(always)]
pub fn lookup(flow: &FlowKey, cfg: &LbConfig) -> Option<VipMeta> {
    if cfg.flags & CFG_F_LOOKUP_CACHES != 0 && !may_be_vip(flow) {
        return None;
    }
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

/// Whether the flow's destination has its bit in `VIP_FILTER`.
#[inline(always)]
fn may_be_vip(flow: &FlowKey) -> bool {
    let bit = vip_filter_bit(&flow.dst, flow.family);
    match VIP_FILTER.get(bit / 64) {
        Some(word) => *word & (1u64 << (bit % 64)) != 0,
        // Out of the map's range cannot happen; look the address up.
        None => true,
    }
}
