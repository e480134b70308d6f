//! `cargo xtask bench --against REV`: this tree's per-packet figures next
//! to another revision's, measured in one session.
//!
//! The eBPF object is embedded in the bench binary when it is built, so a
//! bench built from REV's source measures REV's data plane. REV's source is
//! exported (`git archive`, as `upgrade-test` does: nothing registered in
//! the repository, reused while the commit is the same) into
//! target/bench-against/<short hash>/ and built with a target directory of
//! its own that stays warm between runs. The two binaries then run the
//! `per_packet` section in turns (A B B A A B ...), because the VM flips
//! between a fast and a slower state several times a second: only figures
//! against the floor of the same run, gathered over rounds that each side
//! had its share of, compare.
//!
//! The comparison reads only what every revision's bench.json holds
//! (`per_packet_ns`: `path` and `median` of each row, the floor first), so
//! an older revision's bench works unchanged.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// A round's floor within this share above a side's lowest floor counts
/// as the fast state.
const FAST_MARGIN: f64 = 0.10;

/// One run's per-packet figures: the floor, and each path's ns above it.
#[derive(Clone, Debug, PartialEq)]
pub struct PerPacketRun {
    pub floor_ns: f64,
    pub rows: Vec<(String, f64)>,
}

/// A figure over the rounds of one side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The median over the rounds whose floor was in the fast state.
    pub fast: f64,
}

/// One path, this tree (`a`) against the other revision (`b`); `None`
/// where a side has no such row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowComparison {
    pub path: String,
    pub a: Option<Spread>,
    pub b: Option<Spread>,
}

impl RowComparison {
    /// This tree's median minus the other's, in ns above the floor.
    pub fn difference(&self) -> Option<f64> {
        Some(self.a?.median - self.b?.median)
    }

    /// This tree's median over the other's (none unless the other's is
    /// above its floor).
    pub fn ratio(&self) -> Option<f64> {
        let (a, b) = (self.a?.median, self.b?.median);
        (b > 0.0).then(|| a / b)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The floor program's ns (not above anything), each side.
    pub floor: [Spread; 2],
    pub rows: Vec<RowComparison>,
}

/// The per-packet figures in a bench.json: the floor is the row whose path
/// starts with "floor" (the first row in every revision so far).
pub fn parse_per_packet(bench: &Value) -> Result<PerPacketRun> {
    let rows = bench["per_packet_ns"]
        .as_array()
        .context("bench.json has no per_packet_ns list")?;
    let mut parsed = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let path = row["path"]
            .as_str()
            .with_context(|| format!("per_packet_ns[{i}].path is not a string"))?;
        let median = row["median"]
            .as_f64()
            .with_context(|| format!("per_packet_ns[{i}].median is not a number"))?;
        parsed.push((path.to_string(), median));
    }
    let floor_at = parsed
        .iter()
        .position(|(p, _)| p.starts_with("floor"))
        .context("bench.json's per_packet_ns has no floor row")?;
    let (_, floor_ns) = parsed.remove(floor_at);
    Ok(PerPacketRun {
        floor_ns,
        rows: parsed.into_iter().map(|(p, m)| (p, m - floor_ns)).collect(),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `values[i]` measured in the round with floor `floors[i]`; `fast_floor`
/// the highest floor still in the fast state. None when empty.
fn spread(values: &[(f64, f64)], fast_floor: f64) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut all: Vec<f64> = values.iter().map(|(v, _)| *v).collect();
    let mut fast: Vec<f64> = values
        .iter()
        .filter(|(_, floor)| *floor <= fast_floor)
        .map(|(v, _)| *v)
        .collect();
    Some(Spread {
        min: all.iter().copied().fold(f64::INFINITY, f64::min),
        max: all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        median: median(&mut all),
        fast: if fast.is_empty() {
            f64::NAN
        } else {
            median(&mut fast)
        },
    })
}

/// Both sides' rounds merged by path: this tree's paths in its order, then
/// those only the other revision has. Each side needs one round at least.
pub fn compare(a: &[PerPacketRun], b: &[PerPacketRun]) -> Comparison {
    let fast_floor = |runs: &[PerPacketRun]| {
        runs.iter()
            .map(|r| r.floor_ns)
            .fold(f64::INFINITY, f64::min)
            * (1.0 + FAST_MARGIN)
    };
    let (fast_a, fast_b) = (fast_floor(a), fast_floor(b));
    let floor = |runs: &[PerPacketRun], fast: f64| {
        let values: Vec<_> = runs.iter().map(|r| (r.floor_ns, r.floor_ns)).collect();
        spread(&values, fast).expect("one round at least")
    };
    let mut paths: Vec<&str> = Vec::new();
    for run in a.iter().chain(b) {
        for (path, _) in &run.rows {
            if !paths.contains(&path.as_str()) {
                paths.push(path);
            }
        }
    }
    let row = |runs: &[PerPacketRun], path: &str, fast: f64| {
        let values: Vec<_> = runs
            .iter()
            .filter_map(|r| {
                let (_, above) = r.rows.iter().find(|(p, _)| p == path)?;
                Some((*above, r.floor_ns))
            })
            .collect();
        spread(&values, fast)
    };
    Comparison {
        floor: [floor(a, fast_a), floor(b, fast_b)],
        rows: paths
            .into_iter()
            .map(|path| RowComparison {
                path: path.to_string(),
                a: row(a, path, fast_a),
                b: row(b, path, fast_b),
            })
            .collect(),
    }
}

/// Which side runs first in round `round` (0-based): A B, B A, A B, ...
/// so that neither side always runs while the machine warms up or settles.
pub fn a_first(round: usize) -> bool {
    round.is_multiple_of(2)
}

fn ns(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.0}"),
        _ => "-".into(),
    }
}

fn with_spread(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!("{:.0} [{:.0}-{:.0}]", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// The comparison as a markdown table; `labels` name the two sides.
pub fn markdown(c: &Comparison, labels: [&str; 2], rounds: usize) -> String {
    let [a, b] = labels;
    let mut md = format!(
        "## Per packet: {a} against {b} ({rounds} alternating rounds each)\n\n\
         ns above the same run's floor: median over the rounds [min-max]; \
         fast: median over the rounds whose floor was within {:.0}% of that \
         side's lowest.\n\n\
         | Path | {a} | {b} | difference | ratio | fast: {a} | fast: {b} |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        FAST_MARGIN * 100.0
    );
    let [fa, fb] = c.floor;
    md.push_str(&format!(
        "| floor: MAC swap + XDP_TX (ns, not above) | {} | {} | {} | {} | {:.0} | {:.0} |\n",
        with_spread(Some(fa)),
        with_spread(Some(fb)),
        ns(Some(fa.median - fb.median)),
        format_ratio(Some(fa.median / fb.median)),
        fa.fast,
        fb.fast,
    ));
    for r in &c.rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.path,
            with_spread(r.a),
            with_spread(r.b),
            ns(r.difference()),
            format_ratio(r.ratio()),
            ns(r.a.map(|s| s.fast)),
            ns(r.b.map(|s| s.fast)),
        ));
    }
    md
}

fn format_ratio(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.2}"),
        _ => "-".into(),
    }
}

fn spread_json(s: Option<Spread>) -> Value {
    match s {
        Some(s) => json!({
            "median": s.median, "min": s.min, "max": s.max,
            "fast": if s.fast.is_finite() { json!(s.fast) } else { Value::Null },
        }),
        None => Value::Null,
    }
}

pub fn to_json(c: &Comparison, labels: [&str; 2], runs: [&[PerPacketRun]; 2]) -> Value {
    json!({
        "sides": labels,
        "floor_ns": [spread_json(Some(c.floor[0])), spread_json(Some(c.floor[1]))],
        "floors_per_round": [
            runs[0].iter().map(|r| r.floor_ns).collect::<Vec<_>>(),
            runs[1].iter().map(|r| r.floor_ns).collect::<Vec<_>>(),
        ],
        "rows": c.rows.iter().map(|r| json!({
            "path": r.path,
            "above_floor_ns": [spread_json(r.a), spread_json(r.b)],
            "difference_ns": r.difference(),
            "ratio": r.ratio(),
        })).collect::<Vec<_>>(),
    })
}

/// A bench binary and where its bench.json lands.
struct Side {
    label: String,
    binary: PathBuf,
    tree: PathBuf,
    json: PathBuf,
    /// `BENCH_OUT_DIR` for this side's runs (this tree's bench has it, so
    /// its target/bench keeps the last full run's figures).
    out_dir: Option<PathBuf>,
    runs: Vec<PerPacketRun>,
}

impl Side {
    fn run_once(&mut self, round: usize, logs: &Path) -> Result<()> {
        let _ = std::fs::remove_file(&self.json);
        let slug: String = self
            .label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let log_path = logs.join(format!("{slug}-round{}.log", round + 1));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.env("BENCH_ONLY", "per_packet")
            .current_dir(&self.tree)
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(dir) = &self.out_dir {
            cmd.env("BENCH_OUT_DIR", dir);
        }
        let started = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !status.success() {
            bail!(
                "{}'s bench failed ({status}); its output is in {}",
                self.label,
                log_path.display()
            );
        }
        let text = std::fs::read_to_string(&self.json)
            .with_context(|| format!("reading {}", self.json.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", self.json.display()))?;
        let run =
            parse_per_packet(&value).with_context(|| format!("in {}", self.json.display()))?;
        println!(
            "xtask: round {}, {}: floor {:.0} ns, {} rows, {:.0?}",
            round + 1,
            self.label,
            run.floor_ns,
            run.rows.len(),
            started.elapsed()
        );
        self.runs.push(run);
        Ok(())
    }
}

/// In the shared target directory: the commit whose bench was built last.
const BUILT_STAMP: &str = ".built-commit";

/// Cargo tells what to rebuild by file times, and `git archive` gives
/// every file its commit's time: a revision exported after another was
/// built in the shared target directory (an older commit, or one exported
/// earlier) looks older than that build, and cargo would keep the other
/// revision's eBPF object (the object is built by a build script that
/// reruns only on newer files). So when the target directory last built
/// another commit, every file of this one is touched first: its own crates
/// rebuild, the dependencies stay warm.
fn freshen_if_another_was_built(source: &Path, target: &Path, commit: &str) -> Result<()> {
    if std::fs::read_to_string(target.join(BUILT_STAMP)).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    touch_tree(source, std::time::SystemTime::now())
}

/// Set the modification time of every file under `dir` (its `target`
/// output directory aside) to `now`.
fn touch_tree(dir: &Path, now: std::time::SystemTime) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != "target" {
                touch_tree(&path, now)?;
            }
        } else if kind.is_file() {
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(now))
                .with_context(|| format!("touching {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn run(root: &Path, rev: &str, rounds: usize) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be 1 or more");
    }
    let started = Instant::now();
    let commit = super::upgrade::git(
        root,
        &["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("{rev:?} names no commit in this repository"))?;
    let short = &commit[..12];
    let base = root.join("target/bench-against");
    let source = base.join(short);
    super::upgrade::export(root, &commit, &source)?;
    let rev_target = base.join("target");
    freshen_if_another_was_built(&source, &rev_target, &commit)?;
    let bench = ["-p", "lb-tests", "--example", "bench"];
    println!(
        "xtask: building {rev} ({short})'s bench in {}",
        source.display()
    );
    super::cargo_in(
        &source,
        &[&["build", "--release", "--locked"], &bench[..]].concat(),
        &[("CARGO_TARGET_DIR", rev_target.as_os_str())],
    )?;
    let stamp = rev_target.join(BUILT_STAMP);
    std::fs::write(&stamp, &commit).with_context(|| format!("writing {}", stamp.display()))?;
    super::cargo(&[&["build", "--release"], &bench[..]].concat())?;
    let built = started.elapsed();
    let this_target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let ours_out = base.join("this-tree");
    let logs = base.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut sides = [
        Side {
            label: "this tree".into(),
            binary: this_target.join("release/examples/bench"),
            tree: root.to_path_buf(),
            json: ours_out.join("bench.json"),
            out_dir: Some(ours_out),
            runs: Vec::new(),
        },
        Side {
            label: rev.to_string(),
            binary: rev_target.join("release/examples/bench"),
            tree: source.clone(),
            // Where its bench writes: CARGO_MANIFEST_DIR/../target/bench,
            // fixed when it was built from `source`.
            json: source.join("target/bench/bench.json"),
            out_dir: None,
            runs: Vec::new(),
        },
    ];
    for round in 0..rounds {
        let order = if a_first(round) { [0, 1] } else { [1, 0] };
        for i in order {
            sides[i].run_once(round, &logs)?;
        }
    }
    let labels = [sides[0].label.as_str(), sides[1].label.as_str()];
    let rev_label = format!("{rev} ({})", &commit[..7]);
    let comparison = compare(&sides[0].runs, &sides[1].runs);
    let md = markdown(&comparison, [labels[0], &rev_label], rounds);
    let mut value = to_json(&comparison, labels, [&sides[0].runs, &sides[1].runs]);
    value["against"] = json!({"rev": rev, "commit": commit});
    value["rounds"] = json!(rounds);
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("against.md"), &md)?;
    std::fs::write(out.join("against.json"), serde_json::to_vec_pretty(&value)?)?;
    println!("{md}");
    println!(
        "xtask: written to {} (built in {:.0?}, {:.0?} in all; each run's output in {})",
        out.join("against.md").display(),
        built,
        started.elapsed(),
        logs.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A revision exported after another was built gets newer file times
    /// than that build (so cargo rebuilds it), its bench output aside;
    /// the same revision built last is left as it is.
    #[test]
    fn a_revision_after_another_is_touched_and_the_same_one_is_not() {
        use std::time::{Duration, SystemTime};
        let dir = std::env::temp_dir().join(format!("lb-touch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (source, target) = (dir.join("src"), dir.join("target"));
        std::fs::create_dir_all(source.join("lb-ebpf/src")).unwrap();
        std::fs::create_dir_all(source.join("target/bench")).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let file = source.join("lb-ebpf/src/main.rs");
        let output = source.join("target/bench/bench.json");
        for path in [&file, &output] {
            std::fs::write(path, "x").unwrap();
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        std::fs::write(target.join(BUILT_STAMP), "aaaa").unwrap();
        freshen_if_another_was_built(&source, &target, "aaaa").unwrap();
        assert_eq!(mtime(&file), old, "the commit built last: untouched");
        freshen_if_another_was_built(&source, &target, "bbbb").unwrap();
        assert!(mtime(&file) > old + Duration::from_secs(3600), "touched");
        assert_eq!(mtime(&output), old, "its output directory aside");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn run(floor: f64, rows: &[(&str, f64)]) -> PerPacketRun {
        PerPacketRun {
            floor_ns: floor,
            rows: rows.iter().map(|(p, v)| (p.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn parses_a_bench_json_as_every_revision_writes_it() {
        let bench = json!({"per_packet_ns": [
            {"path": "floor: MAC swap + XDP_TX", "median": 60.0, "p10": 60.0, "above_floor": 0.0},
            {"path": "IPv4 TCP established", "median": 270.0, "p10": 260.0, "above_floor": 210.0},
            {"path": "non-VIP (XDP_PASS)", "median": 120.0, "p10": 110.0},
        ]});
        assert_eq!(
            parse_per_packet(&bench).unwrap(),
            run(
                60.0,
                &[
                    ("IPv4 TCP established", 210.0),
                    ("non-VIP (XDP_PASS)", 60.0)
                ]
            )
        );
    }

    #[test]
    fn a_bench_json_without_per_packet_figures_is_refused() {
        let err = parse_per_packet(&json!({"machine": {}})).unwrap_err();
        assert!(err.to_string().contains("per_packet_ns"), "{err}");
        let no_floor = json!({"per_packet_ns": [{"path": "IPv4 UDP", "median": 1.0}]});
        assert!(
            parse_per_packet(&no_floor)
                .unwrap_err()
                .to_string()
                .contains("floor")
        );
    }

    #[test]
    fn rows_merge_by_path_with_medians_spreads_difference_and_ratio() {
        let a = [
            run(60.0, &[("est", 200.0), ("new", 500.0)]),
            run(62.0, &[("est", 210.0), ("new", 520.0)]),
            run(100.0, &[("est", 300.0), ("new", 700.0)]),
        ];
        let b = [
            run(61.0, &[("est", 100.0), ("gone", 5.0)]),
            run(90.0, &[("est", 150.0), ("gone", 7.0)]),
            run(63.0, &[("est", 110.0), ("gone", 6.0)]),
        ];
        let c = compare(&a, &b);
        assert_eq!(
            c.floor[0],
            Spread {
                median: 62.0,
                min: 60.0,
                max: 100.0,
                // 60 and 62 are within 10% of 60; 100 is not.
                fast: 61.0,
            }
        );
        assert_eq!(c.floor[1].fast, 62.0);
        let paths: Vec<_> = c.rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            ["est", "new", "gone"],
            "this tree's order, then the other's"
        );
        let est = &c.rows[0];
        assert_eq!(
            est.a,
            Some(Spread {
                median: 210.0,
                min: 200.0,
                max: 300.0,
                fast: 205.0
            })
        );
        assert_eq!(est.b.unwrap().median, 110.0);
        assert_eq!(est.b.unwrap().fast, 105.0, "the 90-ns round left out");
        assert_eq!(est.difference(), Some(100.0));
        assert_eq!(est.ratio(), Some(210.0 / 110.0));
        assert_eq!(c.rows[1].b, None);
        assert_eq!(c.rows[1].difference(), None);
        assert_eq!(c.rows[2].a, None);
        assert_eq!(c.rows[2].ratio(), None);
    }

    #[test]
    fn a_row_at_or_below_the_others_floor_has_no_ratio() {
        let c = compare(&[run(50.0, &[("p", 10.0)])], &[run(50.0, &[("p", 0.0)])]);
        assert_eq!(c.rows[0].difference(), Some(10.0));
        assert_eq!(c.rows[0].ratio(), None);
    }

    #[test]
    fn one_sided_rows_show_a_dash_in_the_table() {
        let c = compare(&[run(50.0, &[("new row", 10.0)])], &[run(50.0, &[])]);
        let md = markdown(&c, ["this tree", "main (abc1234)"], 1);
        assert!(
            md.contains("| new row | 10 [10-10] | - | - | - | 10 | - |"),
            "{md}"
        );
    }

    #[test]
    fn sides_take_turns_going_first() {
        let order: Vec<bool> = (0..4).map(a_first).collect();
        assert_eq!(order, [true, false, true, false]);
    }
}
