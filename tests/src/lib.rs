//! Shared helpers for the integration tests: a loaded data plane driven
//! through BPF_PROG_TEST_RUN, packet builders, and network namespaces that
//! clean up after themselves.

pub mod backend_server;
pub mod bird;
pub mod capture;
pub mod cluster;
pub mod cluster_story;
pub mod conversations;
pub mod flood;
pub mod fuzz;
pub mod harness;
pub mod http_client;
pub mod inference_sim;
pub mod lbd;
pub mod netns;
pub mod packets;
pub mod pins;
pub mod release;
pub mod topology;
