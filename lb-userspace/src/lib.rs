//! The control plane of the load balancer: loading the XDP programs, writing
//! their maps, building Maglev tables, and (in `lbd`/`lbctl`) the daemon and
//! CLI around them.

pub mod addr;
pub mod announce;
pub mod attachments;
pub mod backend_load;
pub mod backend_reports;
pub mod bpffs;
pub mod capture;
pub mod cli_docs;
pub mod cluster;
pub mod config;
pub mod config_format;
pub mod conn_list;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod decap_sources;
pub mod egress;
pub mod errors;
pub mod health;
pub mod http_response;
pub mod ids;
pub mod image;
pub mod layout;
pub mod link_events;
pub mod load_header;
pub mod load_report;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod netdev;
pub mod occupancy;
pub mod onlink;
pub mod pin_lock;
pub mod pinned_links;
pub mod prometheus_text;
pub mod ring_digest;
pub mod ring_memory;
pub mod route_table;
pub mod runtime_state;
pub mod second_chance;
pub mod service_manager;
pub mod speaker;
pub mod sync;

pub mod tunnel_probe;
pub mod vip_cache;
pub mod vip_filter;
pub mod weight_controller;
pub mod xdp_link;

/// The compiled eBPF object holding the `lb` and `lb_decap` programs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
