//! Fuzz tests: the packet programs, the backend program and the
//! configuration parser against random and malformed input.
//!
//! One test binary per prefix (tests/Cargo.toml), a module per file (below),
//! so a cold build links aya and tokio into a few binaries, not 30.

#[path = "fuzz_config.rs"]
mod fuzz_config;
#[path = "fuzz_decap.rs"]
mod fuzz_decap;
#[path = "fuzz_packets.rs"]
mod fuzz_packets;
