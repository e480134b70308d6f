//! The daemon driven in-process (`lb_userspace::daemon::Daemon`), inside a
//! namespace the test creates: for orderings of events that the lbd binary
//! cannot be made to show deterministically.

use std::net::TcpListener;

use lb_tests::{
    lbd::Paths,
    netns::{Netns, veth},
};
use lb_userspace::{
    config::{Config, NodeOverrides},
    control::Request,
    daemon::{self, CheckKey, Daemon},
    health::{HealthEvent, Transition},
};
use serde_json::json;
use tokio::sync::mpsc;

const VIP: &str = "198.51.100.10";
const BACKEND: &str = "198.51.100.101";

/// Removes what the daemon pinned, also when the test fails.
struct Teardown(Config);

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = daemon::teardown(&self.0);
    }
}

fn config(paths: &Paths, interval_ms: u64) -> Config {
    let json = json!({
        "interfaces": [{"name": "lb0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "next_hop": {"fib": false, "gateway_mac": "02:00:00:00:00:fe"},
        "tables": {"ring_size": 251, "conn_entries": 1024, "max_vips": 4, "max_backends": 16},
        "pin_dir": paths.pin_dir,
        "control": {"socket": paths.socket},
        "vips": [{
            "address": VIP, "port": 80, "protocol": "tcp",
            // The backend is an address of this namespace: no tunnel.
            "health_check": {"type": "tcp", "interval_ms": interval_ms, "timeout_ms": 50, "rise": 1, "fall": 1, "through_tunnel": false},
            "backends": [{"address": BACKEND}],
        }],
    });
    Config::from_json(&json.to_string()).expect("valid config")
}

/// The backend's health as `lbctl backend list` shows it, and whether it
/// is in the VIP's table.
fn health(daemon: &mut Daemon) -> (String, bool) {
    let reply = daemon.handle(Request::BackendList { vip: None });
    let row = &reply.data.expect("backend list")[0];
    (
        row["health"].as_str().unwrap().to_string(),
        row["in_table"].as_bool().unwrap(),
    )
}

/// The next result of the checker of generation `generation`, skipping
/// results of others.
async fn next_of(
    rx: &mut mpsc::Receiver<HealthEvent<CheckKey>>,
    generation: u64,
) -> HealthEvent<CheckKey> {
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a health result within 5 s")
            .expect("checker running");
        if ev.key.generation == generation {
            return ev;
        }
    }
}

/// Defect: when a backend's check settings change, its checker is
/// replaced, but results the old checker had queued were still applied
/// and could flip the backend for an interval. They are ignored now; the
/// new checker's results count.
#[test]
fn cp_health_results_queued_by_a_replaced_checker_are_ignored() {
    let ns = Netns::new("hgen");
    veth(&ns, "lb0", &ns, "lb1");
    ns.exec(&["ip", "addr", "add", &format!("{BACKEND}/32"), "dev", "lo"]);
    let paths = Paths::new("hgen");
    let first = config(&paths, 100);
    let _teardown = Teardown(first.clone());
    ns.enter(|| {
        let _listener = TcpListener::bind((BACKEND, 80)).expect("backend port");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tx, mut rx) = mpsc::channel(64);
            let path = paths.config.clone();
            let mut daemon =
                Daemon::start(first, path, NodeOverrides::default(), tx).expect("daemon starts");
            assert_eq!(health(&mut daemon).0, "down", "checked backends start down");
            let old = next_of(&mut rx, 1).await;
            assert!(old.up, "{old:?}");
            daemon.on_health(old.clone());
            assert_eq!(health(&mut daemon), ("up".into(), true));

            // New check settings: a new checker (generation 2) takes over.
            daemon.apply(config(&paths, 150)).expect("apply");
            // A result the replaced checker had queued, saying down.
            let stale = HealthEvent {
                up: false,
                transition: Some(Transition::Down),
                ..old
            };
            daemon.on_health(stale);
            assert_eq!(
                health(&mut daemon),
                ("up".into(), true),
                "a replaced checker's result flipped the backend"
            );

            // The new checker's results do count.
            let new = next_of(&mut rx, 2).await;
            daemon.on_health(HealthEvent {
                up: false,
                transition: Some(Transition::Down),
                ..new
            });
            assert_eq!(health(&mut daemon), ("down".into(), false));
        });
    });
}
