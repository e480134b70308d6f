//! The two programs as the kernel holds them: instructions after the
//! verifier's rewrites (xlated), bytes of JIT-compiled code, and the
//! instructions the verifier processed to accept the program (what a load
//! costs; it walks paths, so it is not a count of any one packet's
//! instructions). This VM has no hardware PMU, so instructions executed
//! per packet cannot be counted with `perf stat`.

use lb_common::maps::{PROG_DECAP, PROG_LB};
use lb_userspace::datapath::{Datapath, MapSizes};
use serde_json::{Value, json};

use crate::forwarding::xdp;

/// Bytes per BPF instruction slot (a 64-bit immediate load takes two).
const INSN_BYTES: u32 = 8;

pub fn run() -> Value {
    let mut dp = Datapath::load(MapSizes::default()).expect("load");
    [PROG_LB, PROG_DECAP]
        .into_iter()
        .map(|name| {
            let info = xdp(&mut dp, name).info().expect("program info");
            json!({
                "program": name,
                "xlated_insns": info.size_translated().map(|b| b / INSN_BYTES),
                "jited_bytes": info.size_jitted(),
                "verified_insns": info.verified_instruction_count(),
            })
        })
        .collect()
}
