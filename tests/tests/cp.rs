//! Control-plane tests: lbd, lbctl, lb-decap and the daemon's parts against
//! the real kernel, in namespaces the tests create.
//!
//! One test binary per prefix (tests/Cargo.toml), a module per file (below),
//! so a cold build links aya and tokio into a few binaries, not 30.

#[path = "cp_announce.rs"]
mod cp_announce;
#[path = "cp_daemon.rs"]
mod cp_daemon;
#[path = "cp_decap.rs"]
mod cp_decap;
#[path = "cp_lbd.rs"]
mod cp_lbd;
#[path = "cp_protocol.rs"]
mod cp_protocol;
#[path = "cp_sync.rs"]
mod cp_sync;
