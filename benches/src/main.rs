//! `thaw-bench`: thaw side by side with what users would otherwise run, in
//! one run on one machine. `benches/run` installs the peers and builds
//! everything first; see `docs/benchmarks.md` for what each figure means.
//!
//! Every system serves the same Go handler source (the SDK's `thaw.Main`
//! makes one source a reactor, a wasip1 command and a native program), and
//! the harness checks that each answers the same bytes before it times
//! anything.

mod http;
mod report;
mod stats;
mod systems;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

use crate::stats::Summary;
use crate::systems::Tools;

#[derive(Parser)]
#[command(name = "thaw-bench", about = "Benchmarks thaw against its peers")]
struct Args {
    /// Timed runs of each cold start.
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Timed runs of each build.
    #[arg(long, default_value_t = 3)]
    build_runs: usize,
    /// Seconds of load per warm-serving measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Where to write benchmarks.md, benchmarks.json and benchmarks.svg.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Scratch directory (stores, builds). Default: target/bench.
    #[arg(long)]
    work: Option<PathBuf>,
}

/// An example and the request every system is sent.
pub struct Example {
    pub name: &'static str,
    pub path: &'static str,
    /// Part of the cold-start and build comparisons (all are served warm).
    pub cold: bool,
}

const EXAMPLES: [Example; 3] = [
    Example {
        name: "hello",
        path: "/",
        cold: true,
    },
    Example {
        name: "init-heavy",
        // `/` reports when init ran, which differs by design between a
        // snapshot and a process that runs init itself.
        path: "/stable",
        cold: true,
    },
    Example {
        name: "json-api",
        path: "/items/1",
        cold: false,
    },
];

/// One figure of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub section: &'static str,
    pub example: String,
    pub system: String,
    pub metric: &'static str,
    pub unit: &'static str,
    pub summary: Option<Summary>,
    /// Why there is no figure, or what qualifies it.
    pub note: Option<String>,
}

/// Everything the run found, as written to `benchmarks.json`.
#[derive(Serialize)]
pub struct Report {
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
    pub measurements: Vec<Measurement>,
}

impl Report {
    fn add(
        &mut self,
        section: &'static str,
        example: &str,
        system: &str,
        metric: &'static str,
        unit: &'static str,
        outcome: Result<Vec<f64>>,
    ) {
        let (summary, note) = match outcome {
            Ok(samples) if !samples.is_empty() => (Some(Summary::of(&samples)), None),
            Ok(_) => (None, Some("no samples".to_string())),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        if let Some(note) = &note {
            eprintln!("  {section} {example} {system}: {note}");
        } else if let Some(s) = &summary {
            eprintln!(
                "  {section} {example} {system} {metric}: median {:.3} {unit} (min {:.3}, max {:.3}, n={})",
                s.median, s.min, s.max, s.runs
            );
        }
        self.measurements.push(Measurement {
            section,
            example: example.to_string(),
            system: system.to_string(),
            metric,
            unit,
            summary,
            note,
        });
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = std::env::current_dir()?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| root.join("target/bench"));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let tools = Tools::find(&root)?;
    let mut report = Report {
        machine: machine(),
        versions: tools.versions(),
        settings: vec![
            ("cold-start runs".into(), args.runs.to_string()),
            ("build runs".into(), args.build_runs.to_string()),
            (
                "load duration".into(),
                format!("{} s per point", args.duration),
            ),
        ],
        measurements: Vec::new(),
    };
    let started = Instant::now();
    for example in &EXAMPLES {
        eprintln!("== {}", example.name);
        let prepared =
            systems::prepare(&tools, &root, &work, example, args.build_runs, &mut report)
                .with_context(|| format!("preparing {}", example.name))?;
        if example.cold {
            systems::cold_starts(&tools, &prepared, args.runs, &mut report);
        }
        systems::warm_serving(&tools, &prepared, args.duration, &mut report);
        if example.name == "hello" {
            systems::edge_cold_paths(&tools, &prepared, args.runs, &mut report);
            systems::footprint(&tools, &prepared, args.duration, &mut report);
        }
    }
    report.settings.push((
        "harness wall time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    report::write(&report, &args.out)?;
    eprintln!(
        "wrote {0}/benchmarks.md, {0}/benchmarks.json, {0}/benchmarks.svg",
        args.out.display()
    );
    Ok(())
}

/// What the machine is, for the report's first lines.
fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let avx512 = cpuinfo.contains(" avx512f");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    let kernel = output_line(Command::new("uname").arg("-r")).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        (
            "cpu".into(),
            format!("{model}{}", if avx512 { " (AVX-512)" } else { "" }),
        ),
        ("cores".into(), cores.to_string()),
        ("memory".into(), memory),
        ("kernel".into(), format!("Linux {kernel}")),
    ]
}

/// The first line a command prints, trimmed.
pub fn output_line(command: &mut Command) -> Result<String> {
    let output = command.output().context("running a version command")?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Runs a command to completion, failing with its stderr.
pub fn run(command: &mut Command) -> Result<std::process::Output> {
    let output = command
        .output()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} {:?} failed: {}",
            command.get_program(),
            command.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Size of a file in bytes.
pub fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}
