//! `lbctl top`: a live view of every VIP and backend (packets/s, bits/s,
//! new flows/s, health, weight, drain state), refreshed every second from
//! lbd's control socket.

use std::{path::Path, time::Duration};

use ratatui::{
    Frame, Terminal,
    backend::TestBackend,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::Constraint,
    style::{Color, Modifier, Style},
    widgets::{Block, Cell, Row, Table},
};
use serde_json::Value;

use lb_userspace::control::{self, Request};

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
    pub stats: Value,
    pub backends: Value,
}

pub async fn sample(socket: &Path) -> Result<Sample, control::ClientError> {
    Ok(Sample {
        stats: control::call(socket, &Request::Stats).await?,
        backends: control::call(socket, &Request::BackendList { vip: None }).await?,
    })
}

fn rate(a: &Value, b: &Value, field: &str, dt: f64) -> f64 {
    b[field]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(a[field].as_u64().unwrap_or(0)) as f64
        / dt
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Rates between two samples, a VIP line followed by its backends' lines.
pub fn lines(prev: &Sample, cur: &Sample) -> Vec<Line> {
    let dt = (cur.stats["time_s"].as_f64().unwrap_or(0.0)
        - prev.stats["time_s"].as_f64().unwrap_or(0.0))
    .max(1e-3);
    let find = |list: &Value, vip: &Value, addr: Option<&Value>| -> Value {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|e| e["vip"] == *vip && addr.is_none_or(|a| e["address"] == *a))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut out = Vec::new();
    for v in cur.stats["vips"].as_array().into_iter().flatten() {
        let before = find(&prev.stats["vips"], &v["vip"], None);
        out.push(Line {
            vip: text(&v["vip"]),
            backend: None,
            packets_per_s: rate(&before, v, "packets", dt),
            bits_per_s: 8.0 * rate(&before, v, "bytes", dt),
            new_flows_per_s: rate(&before, v, "new_flows", dt),
            health: String::new(),
            weight: String::new(),
            state: String::new(),
        });
        for b in cur.stats["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["vip"] == v["vip"])
        {
            let before = find(&prev.stats["backends"], &v["vip"], Some(&b["address"]));
            let info = find(&cur.backends, &v["vip"], Some(&b["address"]));
            out.push(Line {
                vip: text(&v["vip"]),
                backend: Some(text(&b["address"])),
                packets_per_s: rate(&before, b, "packets", dt),
                bits_per_s: 8.0 * rate(&before, b, "bytes", dt),
                new_flows_per_s: rate(&before, b, "new_flows", dt),
                health: text(&info["health"]),
                weight: text(&info["weight"]),
                state: text(&info["state"]),
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
    use serde_json::json;

    use super::*;

    #[test]
    fn rates_and_states_are_shown_per_vip_and_backend() {
        let vip = "198.51.100.10:80/tcp";
        let prev = Sample {
            stats: json!({"time_s": 100.0, "vips": [{"vip": vip, "packets": 1000, "bytes": 100000, "new_flows": 10}],
                "backends": [{"vip": vip, "address": "198.51.100.101", "packets": 1000, "bytes": 100000, "new_flows": 10}]}),
            backends: json!([]),
        };
        let cur = Sample {
            stats: json!({"time_s": 102.0, "vips": [{"vip": vip, "packets": 5000, "bytes": 2100000, "new_flows": 30}],
                "backends": [{"vip": vip, "address": "198.51.100.101", "packets": 5000, "bytes": 2100000, "new_flows": 30}]}),
            backends: json!([{"vip": vip, "address": "198.51.100.101", "health": "down", "weight": 3, "state": "drain"}]),
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
