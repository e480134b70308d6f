//! `lbctl top`: a live view of every VIP and backend (packets/s, bits/s,
//! new flows/s, health, weight, drain state), refreshed every second from
//! lbd's control socket.

use std::{path::Path, time::Duration};

use lb_userspace::control::{self, BackendRow, Request, Stats};
use ratatui::{
    Frame, Terminal,
    backend::TestBackend,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::Constraint,
    style::{Color, Modifier, Style},
    widgets::{Block, Cell, Row, Table},
};

/// One line of the view: a VIP (no backend) or one of its backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub vip: String,
    pub backend: Option<String>,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    pub new_flows_per_s: f64,
    pub health: String,
    pub weight: String,
    pub state: String,
}

/// Counters sampled at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    pub stats: Stats,
    pub backends: Vec<BackendRow>,
}

pub async fn sample(socket: &Path) -> Result<Sample, control::ClientError> {
    Ok(Sample {
        stats: control::call(socket, &Request::Stats).await?,
        backends: control::call(socket, &Request::BackendList { vip: None }).await?,
    })
}

/// Per second from `before` (zero when absent: a VIP or backend just
/// added) to `now`.
fn rate(before: Option<u64>, now: u64, dt: f64) -> f64 {
    now.saturating_sub(before.unwrap_or(0)) as f64 / dt
}

/// Rates between two samples, a VIP line followed by its backends' lines.
pub fn lines(prev: &Sample, cur: &Sample) -> Vec<Line> {
    let dt = (cur.stats.time_s - prev.stats.time_s).max(1e-3);
    let mut out = Vec::new();
    for v in &cur.stats.vips {
        let before = prev.stats.vips.iter().find(|p| p.vip == v.vip);
        out.push(Line {
            vip: v.vip.clone(),
            backend: None,
            packets_per_s: rate(before.map(|b| b.packets), v.packets, dt),
            bits_per_s: 8.0 * rate(before.map(|b| b.bytes), v.bytes, dt),
            new_flows_per_s: rate(before.map(|b| b.new_flows), v.new_flows, dt),
            health: String::new(),
            weight: String::new(),
            state: String::new(),
        });
        for b in cur.stats.backends.iter().filter(|b| b.vip == v.vip) {
            let before = prev
                .stats
                .backends
                .iter()
                .find(|p| p.vip == v.vip && p.address == b.address);
            let info = cur
                .backends
                .iter()
                .find(|r| r.vip == v.vip && r.address == b.address);
            let cell = |f: fn(&BackendRow) -> String| info.map_or_else(|| "-".into(), f);
            out.push(Line {
                vip: v.vip.clone(),
                backend: Some(b.address.to_string()),
                packets_per_s: rate(before.map(|b| b.packets), b.packets, dt),
                bits_per_s: 8.0 * rate(before.map(|b| b.bytes), b.bytes, dt),
                new_flows_per_s: rate(before.map(|b| b.new_flows), b.new_flows, dt),
                health: cell(|r| r.health.name().into()),
                weight: cell(|r| r.weight.to_string()),
                state: cell(|r| r.state.name().into()),
            });
        }
    }
    out
}

fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.1}G", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

pub fn draw(frame: &mut Frame, lines: &[Line]) {
    let header = Row::new([
        "VIP / BACKEND",
        "PKT/S",
        "BIT/S",
        "NEW/S",
        "HEALTH",
        "WEIGHT",
        "STATE",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = lines.iter().map(|l| {
        let name = match &l.backend {
            None => l.vip.clone(),
            Some(b) => format!("  {b}"),
        };
        let health_style = match l.health.as_str() {
            "down" => Style::default().fg(Color::Red),
            "up" => Style::default().fg(Color::Green),
            _ => Style::default(),
        };
        let row = Row::new(vec![
            Cell::from(name),
            Cell::from(si(l.packets_per_s)),
            Cell::from(si(l.bits_per_s)),
            Cell::from(si(l.new_flows_per_s)),
            Cell::from(l.health.clone()).style(health_style),
            Cell::from(l.weight.clone()),
            Cell::from(l.state.clone()),
        ]);
        if l.backend.is_none() {
            row.style(Style::default().add_modifier(Modifier::BOLD))
        } else {
            row
        }
    });
    let widths = [
        Constraint::Min(28),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(" lbctl top — q to quit "));
    frame.render_widget(table, frame.area());
}

/// The view as plain text, for `--once` and tests.
pub fn render_text(lines: &[Line], width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    let _ = terminal.draw(|f| draw(f, lines));
    let buffer = terminal.backend().buffer().clone();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Run the live view until `q`, Esc or Ctrl-C; with `once`, print one
/// screen (rates over one second) and return.
pub async fn run(socket: &Path, once: bool) -> Result<(), String> {
    let mut prev = sample(socket).await.map_err(|e| e.to_string())?;
    if once {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cur = sample(socket).await.map_err(|e| e.to_string())?;
        println!(
            "{}",
            render_text(
                &lines(&prev, &cur),
                100,
                2 + 2 + lines(&prev, &cur).len() as u16
            )
        );
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            // Wait up to a second for a key, then refresh.
            let quit = tokio::task::block_in_place(|| -> std::io::Result<bool> {
                if event::poll(Duration::from_secs(1))?
                    && let Event::Key(k) = event::read()?
                {
                    return Ok(matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)));
                }
                Ok(false)
            })
            .map_err(|e| e.to_string())?;
            if quit {
                return Ok(());
            }
            let cur = sample(socket).await.map_err(|e| e.to_string())?;
            let view = lines(&prev, &cur);
            terminal
                .draw(|f| draw(f, &view))
                .map_err(|e| e.to_string())?;
            prev = cur;
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use lb_userspace::{
        config::AdminState,
        control::{BackendCounters, BackendHealth, VipCounters},
    };

    use super::*;

    fn stats(time_s: f64, vip: &str, packets: u64, bytes: u64, new_flows: u64) -> Stats {
        Stats {
            time_s,
            vips: vec![VipCounters {
                vip: vip.into(),
                packets,
                bytes,
                new_flows,
                dropped: 0,
            }],
            backends: vec![BackendCounters {
                vip: vip.into(),
                address: "198.51.100.101".parse().unwrap(),
                packets,
                bytes,
                new_flows,
            }],
            counters: Default::default(),
        }
    }

    fn row(vip: &str) -> BackendRow {
        BackendRow {
            vip: vip.into(),
            address: "198.51.100.101".parse().unwrap(),
            id: Some(0),
            weight: 3,
            state: AdminState::Drain.into(),
            health: BackendHealth::Down.into(),
            in_table: false,
            last_check: None,
            check_latency_ms: None,
            drain_remaining_s: Some(300),
            effective_weight: None,
            weight_reason: None,
            active_flows: None,
            inactive_flows: None,
            new_flows_per_s: None,
            bytes_per_s: None,
        }
    }

    #[test]
    fn rates_and_states_are_shown_per_vip_and_backend() {
        let vip = "198.51.100.10:80/tcp";
        let prev = Sample {
            stats: stats(100.0, vip, 1000, 100_000, 10),
            backends: Vec::new(),
        };
        let cur = Sample {
            stats: stats(102.0, vip, 5000, 2_100_000, 30),
            backends: vec![row(vip)],
        };
        let l = lines(&prev, &cur);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].packets_per_s, l[0].bits_per_s, l[0].new_flows_per_s),
            (2000.0, 8_000_000.0, 10.0)
        );
        assert_eq!(
            (
                l[1].health.as_str(),
                l[1].weight.as_str(),
                l[1].state.as_str()
            ),
            ("down", "3", "drain")
        );
        let screen = render_text(&l, 90, 6);
        assert!(screen.contains("198.51.100.10:80/tcp"), "{screen}");
        let backend_line = screen
            .lines()
            .find(|s| s.contains("198.51.100.101"))
            .unwrap();
        for cell in ["2.0k", "8.0M", "10", "down", "3", "drain"] {
            assert!(
                backend_line.contains(cell),
                "{cell} missing in {backend_line:?}"
            );
        }
    }
}
