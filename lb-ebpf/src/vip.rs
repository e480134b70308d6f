//! Which virtual service a packet is for: an exact (address, port, protocol)
//! match first, then the address's port-less VIP, if it has one (and the
//! control plane said port-less VIPs exist, `CFG_F_PORTLESS_VIPS`).
//!
//! While lbd says its lookup caches hold (`CFG_F_LOOKUP_CACHES`), a
//! destination whose bit in `VIP_FILTER` is clear is no VIP's (most of a
//! host's traffic is decided with one array read), and while it also says
//! so of `VIP_CACHE` (`CFG_F_VIP_CACHE`) a key is looked up there, in a
//! direct-mapped copy of `VIPS`: a cheap hash and one
//! array read instead of the hash map's jhash and bucket walk, which cost
//! about a third of an established packet's time. Only keys whose slot
//! several VIPs share go on to `VIPS`.

use lb_common::{
    FlowKey,
    maps::{
        CFG_F_LOOKUP_CACHES, CFG_F_PORTLESS_VIPS, CFG_LOOKUP_CACHES, CachedVip, LbConfig,
        VIP_CACHE_EMPTY, VIP_CACHE_ONE, VIP_F_PORTLESS, VipKey, VipMeta, vip_cache_slot,
        vip_filter_bit,
    },
};

use crate::{
    maps::{VIP_CACHE, VIP_FILTER, VIPS},
    mem,
};

#[inline(always)]
pub fn lookup(flow: &FlowKey, cfg: &LbConfig) -> Option<VipMeta> {
    if cfg.flags & CFG_F_LOOKUP_CACHES != 0 && !may_be_vip(flow) {
        return None;
    }
    // Read once for both lookups; unused without the cache.
    let cached = (cfg.flags & CFG_LOOKUP_CACHES == CFG_LOOKUP_CACHES).then(|| mem::dst_words(flow));
    if let Some(meta) = find(flow, flow.dport, cached.as_ref()) {
        return Some(meta);
    }
    if cfg.flags & CFG_F_PORTLESS_VIPS == 0 {
        return None;
    }
    match find(flow, 0, cached.as_ref()) {
        Some(meta) if meta.flags & VIP_F_PORTLESS != 0 => Some(meta),
        _ => None,
    }
}

/// The VIP at the flow's address and protocol with `port`: `VIP_CACHE`'s
/// answer when the cache may be read (`addr`: the flow's destination as
/// words) and the slot is not shared, else `VIPS`'s.
#[inline(always)]
fn find(flow: &FlowKey, port: u16, addr: Option<&[u32; 4]>) -> Option<VipMeta> {
    if let Some(addr) = addr {
        let slot = vip_cache_slot(addr, port, flow.proto, flow.family);
        if let Some(cached) = VIP_CACHE.get(slot) {
            // The state first, as lbd writes it last (`CachedVip`).
            // SAFETY: a field of a map value, aligned.
            let state = unsafe { core::ptr::read_volatile(&cached.state) };
            match state {
                VIP_CACHE_EMPTY => return None,
                VIP_CACHE_ONE if holds(cached, addr, port, flow) => return Some(cached.meta),
                VIP_CACHE_ONE => return None,
                _ => {}
            }
        }
    }
    let key = VipKey {
        addr: flow.dst,
        port,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out before the map can change it.
    unsafe { VIPS.get(&key) }.copied()
}

/// Whether the cache slot's key is the flow's, with `port`.
#[inline(always)]
fn holds(cached: &CachedVip, addr: &[u32; 4], port: u16, flow: &FlowKey) -> bool {
    cached.addr[0] == addr[0]
        && cached.addr[1] == addr[1]
        && cached.addr[2] == addr[2]
        && cached.addr[3] == addr[3]
        && cached.port == port
        && cached.proto == flow.proto
        && cached.family == flow.family
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
