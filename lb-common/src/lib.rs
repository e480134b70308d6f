//! What the XDP program and the control plane must agree on, compiled for both.
//!
//! Everything here is `#[repr(C)]` plain data or a pure function. The flow hash
//! lives here so that `lbctl flow` computes exactly the backend the kernel
//! picks; map names live here so neither side can misspell the other's.
#![no_std]

pub mod bench;
pub mod capture;
pub mod flow;
pub mod gue;
pub mod maps;
pub mod stats;

pub use flow::{FlowKey, flow_hash, maglev_slot};
pub use stats::Reason;
