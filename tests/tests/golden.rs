//! Packet-level tests: the `lb` and `lb_decap` programs run on crafted
//! frames through BPF_PROG_TEST_RUN; the exact bytes and verdicts they give.
//!
//! One test binary per prefix (tests/Cargo.toml), a module per file (below),
//! so a cold build links aya and tokio into a few binaries, not 30.

#[path = "golden_capture.rs"]
mod golden_capture;
#[path = "golden_decap.rs"]
mod golden_decap;
#[path = "golden_fib.rs"]
mod golden_fib;
#[path = "golden_forwarding.rs"]
mod golden_forwarding;
#[path = "golden_fragments_icmp.rs"]
mod golden_fragments_icmp;
#[path = "golden_hash_agreement.rs"]
mod golden_hash_agreement;
#[path = "golden_lookup_caches.rs"]
mod golden_lookup_caches;
#[path = "golden_malformed.rs"]
mod golden_malformed;
#[path = "golden_native_attach.rs"]
mod golden_native_attach;
#[path = "golden_paths.rs"]
mod golden_paths;
#[path = "golden_second_chance.rs"]
mod golden_second_chance;
#[path = "golden_too_big.rs"]
mod golden_too_big;
#[path = "golden_tunnel_probe.rs"]
mod golden_tunnel_probe;
