//! Writes the run as Markdown (the tables people read), JSON (everything,
//! for machines) and SVG (cold start and latency at a glance).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::{Measurement, Report};

/// Hand-written earlier measurements, appended to the generated page.
const HISTORY: &str = include_str!("../history.md");

fn find<'a>(
    report: &'a Report,
    section: &str,
    example: &str,
    system: &str,
    metric: &str,
) -> Option<&'a Measurement> {
    report.measurements.iter().find(|m| {
        m.section == section && m.example == example && m.system == system && m.metric == metric
    })
}

fn median(
    report: &Report,
    section: &str,
    example: &str,
    system: &str,
    metric: &str,
) -> Option<f64> {
    find(report, section, example, system, metric)?
        .summary
        .as_ref()
        .map(|s| s.median)
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "–".into(),
    }
}

/// Systems of a section and example, in first-seen order.
fn systems<'a>(report: &'a Report, section: &str, example: &str) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for m in &report.measurements {
        if m.section == section && m.example == example && !seen.contains(&m.system.as_str()) {
            seen.push(&m.system);
        }
    }
    seen
}

fn examples<'a>(report: &'a Report, section: &str) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for m in &report.measurements {
        if m.section == section && !seen.contains(&m.example.as_str()) {
            seen.push(&m.example);
        }
    }
    seen
}

fn goals(report: &Report) -> String {
    let mut out = String::from("| what | goal | measured | met |\n|---|---|---|---|\n");
    let mut row = |what: &str, goal: &str, value: Option<f64>, shown: String, met: Option<bool>| {
        let met = match (value, met) {
            (Some(_), Some(true)) => "yes",
            (Some(_), Some(false)) => "**no**",
            _ => "–",
        };
        let _ = writeln!(out, "| {what} | {goal} | {shown} | {met} |");
    };
    let cold = |example: &str, system: &str| {
        median(
            report,
            "cold start",
            example,
            system,
            "start to first response",
        )
    };
    let r = cold("hello", "thaw").zip(cold("hello", "wasmtime run --allow-precompiled"));
    let v = r.map(|(a, b)| a / b);
    row(
        "cold start, thaw ÷ `wasmtime run --allow-precompiled`, hello",
        "≤ 0.2×",
        v,
        v.map_or("–".into(), |v| format!("{v:.3}×")),
        v.map(|v| v <= 0.2),
    );
    for (what, system, metric) in [
        (
            "first request, hello cached but not loaded, on a running host",
            "thaw, cached, not loaded",
            "first request",
        ),
        (
            "first request, hello fetched from a registry, minus the artifact's download",
            "thaw, fetched from a registry",
            "first request minus the artifact's download",
        ),
    ] {
        let v = median(report, "edge host", "hello", system, metric);
        row(
            what,
            "≤ 1 ms",
            v,
            v.map_or("–".into(), |v| format!("{v:.3} ms")),
            v.map(|v| v <= 1.0),
        );
    }
    let v = cold("init-heavy", "thaw")
        .zip(cold(
            "init-heavy",
            "thaw, command module (init per request)",
        ))
        .map(|(a, b)| a / b);
    row(
        "cold start, init-heavy, thaw ÷ command module running init",
        "≤ 0.01×",
        v,
        v.map_or("–".into(), |v| format!("{v:.4}×")),
        v.map(|v| v <= 0.01),
    );
    let v = median(
        report,
        "serving",
        "hello",
        "thaw, inside the runner",
        "request",
    );
    row(
        "per request inside the runner, hello, c=1, p50",
        "≤ 40 µs",
        v,
        v.map_or("–".into(), |v| format!("{:.0} µs", v * 1000.0)),
        v.map(|v| v <= 0.040),
    );
    let v = median(report, "serving", "hello", "thaw", "c=1 p50");
    row(
        "per request with HTTP, hello, c=1, p50",
        "≤ 0.15 ms",
        v,
        v.map_or("–".into(), |v| format!("{v:.3} ms")),
        v.map(|v| v <= 0.15),
    );
    let v = median(report, "serving", "hello", "thaw", "c=32 throughput")
        .zip(median(
            report,
            "serving",
            "hello",
            "native Go net/http",
            "c=32 throughput",
        ))
        .map(|(a, b)| a / b);
    row(
        "throughput, hello, c=32, thaw ÷ native Go net/http",
        "≥ 0.5×",
        v,
        v.map_or("–".into(), |v| format!("{v:.2}×")),
        v.map(|v| v >= 0.5),
    );
    for example in ["hello", "init-heavy"] {
        let thaw = median(
            report,
            "build",
            example,
            "thaw, cold (x86_64 + aarch64)",
            "wall",
        );
        let peer = median(
            report,
            "build",
            example,
            "Wizer CLI + wasmtime compile ×2",
            "wall",
        );
        let v = thaw.zip(peer).map(|(a, b)| a / b);
        let shown = match (
            v,
            &find(
                report,
                "build",
                example,
                "Wizer CLI + wasmtime compile ×2",
                "wall",
            )
            .and_then(|m| m.note.clone()),
        ) {
            (Some(v), _) => format!("{v:.2}×"),
            (None, Some(_)) => "peer pipeline fails (see Build)".into(),
            _ => "–".into(),
        };
        row(
            &format!("build, both targets, cold, {example}, thaw ÷ manual peer pipeline"),
            "≤ 0.6×",
            v,
            shown,
            v.map(|v| v <= 0.6),
        );
    }
    for example in ["hello", "init-heavy"] {
        let v = median(report, "build", example, "thaw, cache hit", "wall");
        row(
            &format!("build, cache hit, {example} (whole `thaw build` process)"),
            "≤ 50 ms",
            v,
            v.map_or("–".into(), |v| format!("{v:.0} ms")),
            v.map(|v| v <= 50.0),
        );
    }
    let v = median(
        report,
        "footprint",
        "hello",
        "thaw-runner",
        "RSS peak, 256 connections",
    );
    row(
        "runner RSS, 256 connections in flight, hello",
        "≤ 64 MiB",
        v,
        v.map_or("–".into(), |v| format!("{v:.1} MiB")),
        v.map(|v| v <= 64.0),
    );
    out
}

fn cold_start_tables(report: &Report) -> String {
    let mut out = String::new();
    for example in examples(report, "cold start") {
        let thaw = median(
            report,
            "cold start",
            example,
            "thaw",
            "start to first response",
        );
        let _ = writeln!(out, "### {example}\n");
        out.push_str(
            "| system | median | p99 | min | max | thaw ÷ system |\n|---|---|---|---|---|---|\n",
        );
        for system in systems(report, "cold start", example) {
            let m = find(
                report,
                "cold start",
                example,
                system,
                "start to first response",
            )
            .unwrap();
            match &m.summary {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "| {system} | {} ms | {} ms | {} ms | {} ms | {} |",
                        number(s.median),
                        number(s.p99),
                        number(s.min),
                        number(s.max),
                        ratio(thaw, Some(s.median))
                    );
                }
                None => {
                    let _ = writeln!(out, "| {system} | fails | | | | |");
                }
            }
        }
        out.push('\n');
    }
    out
}

fn serving_tables(report: &Report) -> String {
    let mut out = String::new();
    let metrics = [
        "c=1 p50",
        "c=1 p99",
        "c=1 throughput",
        "c=32 p50",
        "c=32 p99",
        "c=32 throughput",
    ];
    for example in examples(report, "serving") {
        let _ = writeln!(out, "### {example}\n");
        out.push_str("| system | c=1 p50 | c=1 p99 | c=1 req/s | c=32 p50 | c=32 p99 | c=32 req/s | c=32 thaw ÷ system |\n|---|---|---|---|---|---|---|---|\n");
        let thaw_rps = median(report, "serving", example, "thaw", "c=32 throughput");
        for system in systems(report, "serving", example) {
            if system == "thaw, inside the runner" {
                continue;
            }
            let cells: Vec<String> = metrics
                .iter()
                .map(
                    |metric| match find(report, "serving", example, system, metric) {
                        Some(Measurement {
                            summary: Some(s),
                            unit,
                            ..
                        }) => {
                            if *unit == "ms" {
                                format!("{} ms", number(s.median))
                            } else {
                                format!("{:.0}", s.median)
                            }
                        }
                        Some(Measurement { note: Some(_), .. }) => "fails".into(),
                        _ => "–".into(),
                    },
                )
                .collect();
            let rps = median(report, "serving", example, system, "c=32 throughput");
            let _ = writeln!(
                out,
                "| {system} | {} | {} |",
                cells.join(" | "),
                ratio(thaw_rps, rps)
            );
        }
        if let Some(Measurement {
            summary: Some(s), ..
        }) = find(
            report,
            "serving",
            example,
            "thaw, inside the runner",
            "request",
        ) {
            let _ = writeln!(
                out,
                "\nInside the runner (from its access log, c=1, {} requests): p50 {:.0} µs, p99 {:.0} µs.\n",
                s.runs,
                s.median * 1000.0,
                s.p99 * 1000.0,
            );
            out.push_str("| part of a request | p50 | p99 |\n|---|---|---|\n");
            // Times are recorded in ms and shown in µs; the reset in KiB;
            // faults as counted.
            for (part, metric, scale, unit) in [
                (
                    "HTTP front (routing, body, environment, parsing the answer)",
                    "HTTP front",
                    1000.0,
                    " µs",
                ),
                (
                    "instantiation (a pooled slot, the snapshot's memory image)",
                    "instantiate",
                    1000.0,
                    " µs",
                ),
                (
                    "guest run (WASI setup, runtime entry, handler)",
                    "guest run",
                    1000.0,
                    " µs",
                ),
                (
                    "guest CPU (of the guest run, on the host's thread)",
                    "guest CPU",
                    1000.0,
                    " µs",
                ),
                (
                    "page faults (pages first touched in the slot; a warm slot takes none)",
                    "page faults",
                    1.0,
                    "",
                ),
                (
                    "slot reset, after the answer: bytes copied back (pages the request wrote)",
                    "slot reset copies",
                    1.0,
                    " KiB",
                ),
            ] {
                if let Some(Measurement {
                    summary: Some(p), ..
                }) = find(
                    report,
                    "serving",
                    example,
                    "thaw, inside the runner",
                    metric,
                ) {
                    let _ = writeln!(
                        out,
                        "| {part} | {:.0}{unit} | {:.0}{unit} |",
                        p.median * scale,
                        p.p99 * scale
                    );
                }
            }
        }
        out.push('\n');
    }
    out
}

fn simple_table(report: &Report, section: &str) -> String {
    let mut out = String::from(
        "| example | what | metric | median | min | max |\n|---|---|---|---|---|---|\n",
    );
    for m in report.measurements.iter().filter(|m| m.section == section) {
        match &m.summary {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} {} | {} | {} |",
                    m.example,
                    m.system,
                    m.metric,
                    number(s.median),
                    m.unit,
                    number(s.min),
                    number(s.max)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | fails | | |",
                    m.example, m.system, m.metric
                );
            }
        }
    }
    out
}

fn failures(report: &Report) -> String {
    let mut out = String::new();
    for m in report.measurements.iter().filter(|m| m.summary.is_none()) {
        let note = m.note.as_deref().unwrap_or("").replace('\n', " ");
        let note: String = note.chars().take(400).collect();
        let _ = writeln!(
            out,
            "- **{} / {} / {}**: {note}",
            m.section, m.example, m.system
        );
    }
    if out.is_empty() {
        out.push_str("None: every system answered the same bytes and was timed.\n");
    }
    out
}

fn markdown(report: &Report) -> String {
    let mut out = String::from("# Benchmarks\n\n");
    out.push_str(
        "<!-- Generated by `benches/run` (the `thaw-bench` harness); the section \
         after \"Earlier measurements\" comes from benches/history.md. -->\n\n",
    );
    out.push_str(
        "One run of `benches/run` on one machine: every system below was built, \
         checked to answer the same response body for the same request, and timed \
         in the same run. The machine is shared and noisy: read medians and ratios, \
         not single figures.\n\n",
    );
    for (title, pairs) in [
        ("Machine", &report.machine),
        ("Versions", &report.versions),
        ("Settings", &report.settings),
    ] {
        let _ = writeln!(
            out,
            "**{title}**: {}\n",
            pairs
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    out.push_str("![cold start and per-request latency](benchmarks.svg)\n\n");
    out.push_str("## Goals\n\n");
    out.push_str(&goals(report));
    out.push_str(
        "\n## Cold start\n\nProcess start to the first complete response to the same request, \
         the artifact already on local disk. thaw: `thaw-runner` started on the stored snapshot \
         artifact (its verified local cache warm: the artifact's identity recorded by an earlier \
         runner, so it is not hashed again), first HTTP response. CLI peers: one process \
         per request, the request on stdin, the response on stdout (`--invoke thaw_handle`). \
         Native Go: the same handler built with `go build`, run as a CGI process.\n\n",
    );
    out.push_str(&cold_start_tables(report));
    out.push_str(
        "## Edge host\n\nA running `thaw-runner` with no function named at start, so each \
         function loads on its first request. *Cached, not loaded*: the artifact is in the \
         runner's verified cache (trusted by identity, not re-hashed); the time is one GET over \
         a fresh loopback connection, from connect to the last byte. *Fetched from a registry*: \
         a fresh runner with an empty cache, `--registry` on loopback; the first request \
         includes the download, zstd decode and SHA-256 (overlapping the download) and mapping. *Minus the download* \
         subtracts one plain GET of the same compressed artifact from the same registry.\n\n",
    );
    out.push_str(&simple_table(report, "edge host"));
    out.push_str(
        "\n## Warm serving\n\n`wrk --latency` on loopback, sharing the 2 cores with the server. \
         Every thaw variant creates a fresh instance per request. The others are \
         ablations of *thaw*, one choice each: *HTTP/1.1 text ABI* hands requests over as \
         text (`--request-abi text`) instead of length-prefixed frames; *Go GC off* is the \
         same module built with `--init-env GOGC=off --init-env GOMEMLIMIT=256MiB`, so no \
         collection runs unless a request nears the limit; *whole-region slot reset* copies \
         back the whole kept region instead of the pages a request wrote; *on-demand \
         allocator* drops the pooling allocator; *command module* drops the snapshot (Go's \
         runtime and `init()` run on every request). Native Go \
         `net/http` is the ceiling without isolation.\n\n",
    );
    out.push_str(&serving_tables(report));
    out.push_str(
        "## Build\n\nFrom the `.wasm` module to artifacts for x86_64 and aarch64. thaw: \
         `thaw build --target x86_64-unknown-linux-gnu --target aarch64-unknown-linux-gnu`, \
         whole process, fresh home (no compile cache) for *cold*, then the same command again \
         for *cache hit*. Peer: the Wizer CLI (`--init-func thaw_pre_snapshot`, since Go \
         aborts when `_initialize` runs twice), then `wasmtime compile` once per target.\n\n",
    );
    out.push_str(&simple_table(report, "build"));
    out.push_str("\n## Footprint\n\n");
    out.push_str(&simple_table(report, "footprint"));
    out.push_str("\n### Artifact sizes\n\n");
    out.push_str(&simple_table(report, "size"));
    out.push_str("\n## What failed\n\n");
    out.push_str(&failures(report));
    out.push_str("\n## Earlier measurements\n\n");
    out.push_str(HISTORY);
    out
}

/// Horizontal bars on a log scale: cold start, and c=1 p50 latency.
fn svg(report: &Report) -> String {
    let mut rows: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for example in examples(report, "cold start") {
        let bars = systems(report, "cold start", example)
            .into_iter()
            .filter_map(|s| {
                median(report, "cold start", example, s, "start to first response")
                    .map(|v| (s.to_string(), v))
            })
            .collect();
        rows.push((format!("Cold start, {example} (ms, log scale)"), bars));
    }
    for example in examples(report, "serving") {
        let bars = systems(report, "serving", example)
            .into_iter()
            .filter_map(|s| {
                median(report, "serving", example, s, "c=1 p50").map(|v| (s.to_string(), v))
            })
            .collect();
        rows.push((
            format!("Per-request latency, {example}, c=1 p50 (ms, log scale)"),
            bars,
        ));
    }
    let (label_width, bar_width, line) = (330.0, 420.0, 18.0);
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, v)| *v))
        .collect();
    let low = all
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .max(1e-4)
        .log10()
        .floor();
    let high = all
        .iter()
        .cloned()
        .fold(0.0, f64::max)
        .max(1e-3)
        .log10()
        .ceil();
    let scale = |v: f64| ((v.max(1e-4).log10() - low) / (high - low).max(1.0)) * bar_width;
    let height: f64 = rows
        .iter()
        .map(|(_, b)| (b.len() as f64 + 2.0) * line)
        .sum::<f64>()
        + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        label_width + bar_width + 90.0
    );
    let mut y = 20.0;
    for (title, bars) in &rows {
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{y}\" font-weight=\"bold\">{title}</text>"
        );
        y += line;
        for (system, value) in bars {
            let width = scale(*value).max(1.0);
            let color = if system.starts_with("thaw") && !system.contains(',') {
                "#1f77b4"
            } else if system.starts_with("thaw") {
                "#9ecae1"
            } else {
                "#ff7f0e"
            };
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{label_width}\" y=\"{}\" width=\"{width:.1}\" height=\"{}\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                label_width - 6.0,
                y + 12.0,
                system.replace('&', "&amp;"),
                y + 2.0,
                line - 4.0,
                label_width + width + 4.0,
                y + 12.0,
                number(*value)
            );
            y += line;
        }
        y += line;
    }
    out.push_str("</svg>\n");
    out
}

pub fn write(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("benchmarks.md"), markdown(report))?;
    std::fs::write(
        dir.join("benchmarks.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(dir.join("benchmarks.svg"), svg(report))?;
    Ok(())
}
