//! End-to-end tests: real sockets through a real lbd to backends running
//! lb_decap, in namespaces the tests create.
//!
//! One test binary per prefix (tests/Cargo.toml), a module per file (below),
//! so a cold build links aya and tokio into a few binaries, not 30.

#[path = "e2e_backend_load.rs"]
mod e2e_backend_load;
#[path = "e2e_capture.rs"]
mod e2e_capture;
#[path = "e2e_inference.rs"]
mod e2e_inference;
#[path = "e2e_load_balancing.rs"]
mod e2e_load_balancing;
#[path = "e2e_load_reports.rs"]
mod e2e_load_reports;
#[path = "e2e_resilience.rs"]
mod e2e_resilience;
#[path = "e2e_second_chance.rs"]
mod e2e_second_chance;
#[path = "e2e_traffic.rs"]
mod e2e_traffic;
#[path = "e2e_upgrade.rs"]
mod e2e_upgrade;
