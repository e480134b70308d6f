//! IP fragments of VIP traffic. Only the first fragment carries the ports, so
//! it is balanced like any packet of its flow and its choice is remembered
//! under (source, destination, protocol, datagram id); later fragments look
//! that up and follow it. A later fragment that overtakes its first one is
//! passed to the kernel (counted as `pass_frag_untracked`).

use lb_common::{
    Reason,
    maps::{FragEntry, FragKey, VipMeta},
};

use crate::{maglev, maps::FRAGS, parse::Parsed};

#[inline(always)]
fn key(p: &Parsed, id: u32) -> FragKey {
    FragKey {
        src: p.flow.src,
        dst: p.flow.dst,
        id,
        proto: p.frag_proto,
        family: p.flow.family,
        _pad: [0; 2],
    }
}

/// Remember where the first fragment of datagram `id` went.
#[inline(always)]
pub fn remember(p: &Parsed, id: u32, vip: &VipMeta, backend_id: u32) {
    let entry = FragEntry {
        backend_id,
        vip_id: vip.vip_id,
        vip_flags: vip.flags,
        _pad: 0,
    };
    // On failure the later fragments go to the kernel, counted; nothing else to do.
    let _ = FRAGS.insert(&key(p, id), &entry, 0);
}

/// The VIP and backend of a later fragment's first fragment.
#[inline(always)]
pub fn follow(p: &Parsed, id: u32) -> Result<(VipMeta, maglev::Chosen), Reason> {
    // SAFETY: copied out at once.
    let entry = match unsafe { FRAGS.get(&key(p, id)) } {
        Some(e) => *e,
        None => return Err(Reason::PassFragUntracked),
    };
    let vip = VipMeta {
        vip_id: entry.vip_id,
        flags: entry.vip_flags,
        active_ring: 0,
        _pad: 0,
    };
    Ok((vip, maglev::backend_of_vip(entry.backend_id, entry.vip_id)?))
}
