//! The systems under test and how each is built, started and timed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use thaw_gobuild::{BuildMode, Go};

use crate::http::{check_same, get, parse_cgi, parse_http, request};
use crate::{Example, Report, file_size, output_line, run};

const X86: &str = "x86_64-unknown-linux-gnu";
const ARM: &str = "aarch64-unknown-linux-gnu";
/// Wizer's npm release installed by `benches/install-peers.sh`.
const WIZER_VERSION: &str = "11.0.3";

/// The programs the harness drives.
pub struct Tools {
    thaw: PathBuf,
    runner: PathBuf,
    wasmtime: PathBuf,
    wasmtime_min: PathBuf,
    wizer: PathBuf,
    go: Go,
}

impl Tools {
    pub fn find(root: &Path) -> Result<Tools> {
        let exists = |path: PathBuf| -> Result<PathBuf> {
            if path.exists() {
                Ok(path)
            } else {
                bail!(
                    "{} is missing: run benches/run, which installs and builds it",
                    path.display()
                )
            }
        };
        let wasmtime_dir = root.join(".toolchain/wasmtime-x86_64/wasmtime_cli");
        Ok(Tools {
            thaw: exists(root.join("target/release/thaw"))?,
            runner: exists(root.join("target/release/thaw-runner"))?,
            wasmtime: exists(wasmtime_dir.join("wasmtime"))?,
            wasmtime_min: exists(wasmtime_dir.join("wasmtime-min"))?,
            wizer: exists(
                root.join(".toolchain/wizer/node_modules/@bytecodealliance/wizer-linux-x64/wizer"),
            )?,
            go: Go::find().context("finding Go")?,
        })
    }

    pub fn versions(&self) -> Vec<(String, String)> {
        let version = |program: &Path, arg: &str| {
            output_line(Command::new(program).arg(arg)).unwrap_or_else(|e| e.to_string())
        };
        vec![
            (
                "thaw".into(),
                format!(
                    "{} (wasmtime {})",
                    env!("CARGO_PKG_VERSION"),
                    thaw_engine::profile::WASMTIME_VERSION
                ),
            ),
            ("wasmtime CLI".into(), version(&self.wasmtime, "--version")),
            (
                "Wizer CLI".into(),
                format!("@bytecodealliance/wizer {WIZER_VERSION} (npm)"),
            ),
            ("Go".into(), self.go.version.clone()),
            ("wrk".into(), version(Path::new("wrk"), "-v")),
        ]
    }
}

/// An example built every way the comparison needs.
pub struct Prepared<'a> {
    example: &'a Example,
    reactor: PathBuf,
    native: PathBuf,
    store: PathBuf,
    cache: PathBuf,
    /// `wasmtime compile` of the reactor, for `--allow-precompiled`.
    precompiled: PathBuf,
    /// The manual peer pipeline's result, or why it failed.
    peer_pipeline: Result<PathBuf, String>,
    /// The body thaw answers; every system must answer the same.
    expected: Vec<u8>,
}

fn snapshot_ref(example: &Example) -> String {
    format!("{}:snapshot", example.name)
}

/// The reactor built with Go's collector off (`GOGC=off`, read by the
/// runtime's init, so frozen into the snapshot) and a memory limit as its
/// backstop.
fn gc_off_ref(example: &Example) -> String {
    format!("{}:gc-off", example.name)
}

fn command_ref(example: &Example) -> String {
    format!("{}:command", example.name)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn prepare<'a>(
    tools: &Tools,
    root: &Path,
    work: &Path,
    example: &'a Example,
    build_runs: usize,
    report: &mut Report,
) -> Result<Prepared<'a>> {
    let dir = work.join(example.name);
    std::fs::create_dir_all(&dir)?;
    let source = root.join("examples").join(example.name);
    let reactor = dir.join("reactor.wasm");
    std::fs::write(&reactor, tools.go.build(&source, BuildMode::Reactor)?)?;
    let command = dir.join("command.wasm");
    std::fs::write(&command, tools.go.build(&source, BuildMode::Command)?)?;
    let native = dir.join("native");
    run(tools
        .go
        .command(&source, "linux")
        .env("GOARCH", "amd64")
        .args(["build", "-trimpath", "-o"])
        .arg(&native)
        .arg("."))?;

    // Builds, timed: thaw cold (fresh home: no compile cache) and on a
    // cache hit, against the manual peer pipeline. The last cold build's
    // store is the one served below.
    let store = dir.join("store");
    let thaw_build = |home: &Path| {
        let mut command = Command::new(&tools.thaw);
        command
            .args(["build"])
            .arg(&reactor)
            .args([
                "--name",
                &snapshot_ref(example),
                "--target",
                X86,
                "--target",
                ARM,
                "--store",
            ])
            .arg(&store)
            .env("THAW_HOME", home);
        command
    };
    let mut cold = Vec::new();
    let mut hit = Vec::new();
    let mut peer = Vec::new();
    let mut peer_pipeline = Err("not run".to_string());
    // Examples outside the build comparison are built once, to serve.
    let build_runs = if example.cold { build_runs } else { 1 };
    for i in 0..build_runs {
        let home = dir.join(format!("home-{i}"));
        if i > 0 {
            std::fs::remove_dir_all(&store)?;
        }
        let started = Instant::now();
        run(&mut thaw_build(&home))?;
        cold.push(ms(started.elapsed()));
        let started = Instant::now();
        run(&mut thaw_build(&home))?;
        hit.push(ms(started.elapsed()));
        let started = Instant::now();
        let outcome = peer_build(tools, &reactor, &dir);
        peer.push(ms(started.elapsed()));
        peer_pipeline = outcome.map_err(|e| format!("{e:#}"));
    }
    if example.cold {
        report.add(
            "build",
            example.name,
            "thaw, cold (x86_64 + aarch64)",
            "wall",
            "ms",
            Ok(cold),
        );
        report.add(
            "build",
            example.name,
            "thaw, cache hit",
            "wall",
            "ms",
            Ok(hit),
        );
        let peer_outcome = match &peer_pipeline {
            Ok(_) => Ok(peer),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        report.add(
            "build",
            example.name,
            "Wizer CLI + wasmtime compile ×2",
            "wall",
            "ms",
            peer_outcome,
        );
    }
    let command_build = Command::new(&tools.thaw)
        .arg("build")
        .arg(&command)
        .args(["--name", &command_ref(example), "--store"])
        .arg(&store)
        .env("THAW_HOME", dir.join("home-command"))
        .output()?;
    if !command_build.status.success() {
        bail!(
            "thaw build (command): {}",
            String::from_utf8_lossy(&command_build.stderr)
        );
    }
    run(Command::new(&tools.thaw)
        .arg("build")
        .arg(&reactor)
        .args(["--name", &gc_off_ref(example), "--target", X86])
        .args(["--init-env", "GOGC=off", "--init-env", "GOMEMLIMIT=256MiB"])
        .arg("--store")
        .arg(&store)
        .env("THAW_HOME", dir.join("home-gc-off")))?;
    artifact_sizes(tools, example, &store, report)?;

    let precompiled = dir.join("reactor.cwasm");
    run(Command::new(&tools.wasmtime)
        .arg("compile")
        .arg(&reactor)
        .arg("-o")
        .arg(&precompiled))?;

    let answer = run(Command::new(&tools.thaw)
        .args([
            "call",
            &snapshot_ref(example),
            "--path",
            example.path,
            "--store",
        ])
        .arg(&store)
        .env("THAW_HOME", dir.join("home-call")))?;
    let (status, expected) = parse_http(&answer.stdout)?;
    if status != 200 {
        bail!("thaw answered {status} to {}", example.path);
    }
    Ok(Prepared {
        example,
        reactor,
        native,
        store,
        cache: dir.join("runner-cache"),
        precompiled,
        peer_pipeline,
        expected,
    })
}

/// The `thaw_http` imports (docs/abi.md) for peers that lack them: `send`
/// answers "unavailable" and `take` has nothing to give.
const OUTBOUND_STUB: &str = r#"(module
  (func (export "send") (param i32 i32 i32) (result i32) i32.const 7)
  (func (export "take") (param i32 i32 i32) (result i32) i32.const -1))
"#;

/// The manual peer pipeline: Wizer CLI, then `wasmtime compile` per target.
fn peer_build(tools: &Tools, reactor: &Path, dir: &Path) -> Result<PathBuf> {
    let snapshot = dir.join("peer-snapshot.wasm");
    // Wizer links only WASI: the SDK's outbound HTTP imports get stubs
    // that refuse every request, as thaw's own init does.
    let outbound_stub = dir.join("thaw_http-stub.wat");
    std::fs::write(&outbound_stub, OUTBOUND_STUB)?;
    // `_initialize` cannot be the init function (Wizer calls it itself, and
    // Go then aborts with "randinit twice"): use the SDK's hook.
    run(Command::new(&tools.wizer)
        .arg(reactor)
        .arg("-o")
        .arg(&snapshot)
        .args(["--allow-wasi", "--init-func", "thaw_pre_snapshot"])
        .arg("--preload")
        .arg(format!("thaw_http={}", outbound_stub.display())))?;
    let compiled = dir.join("peer-snapshot.cwasm");
    run(Command::new(&tools.wasmtime)
        .arg("compile")
        .arg(&snapshot)
        .arg("-o")
        .arg(&compiled))?;
    run(Command::new(&tools.wasmtime)
        .args(["compile", "--target", ARM])
        .arg(&snapshot)
        .arg("-o")
        .arg(dir.join("peer-snapshot.aarch64.cwasm")))?;
    Ok(compiled)
}

fn artifact_sizes(
    tools: &Tools,
    example: &Example,
    store: &Path,
    report: &mut Report,
) -> Result<()> {
    let manifest = run(Command::new(&tools.thaw)
        .args(["inspect", &snapshot_ref(example), "--json", "--store"])
        .arg(store))?;
    let manifest: thaw_core::Manifest =
        serde_json::from_slice(&manifest.stdout).context("parsing the manifest")?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let mut parts = vec![("source module", manifest.source.clone())];
    if let Some(snapshot) = &manifest.snapshot {
        parts.push(("snapshot", snapshot.clone()));
    }
    for artifact in &manifest.artifacts {
        parts.push((
            if artifact.profile == X86 {
                "x86_64 artifact"
            } else {
                "aarch64 artifact"
            },
            artifact.blob.clone(),
        ));
    }
    for (part, blob) in parts {
        report.add(
            "size",
            example.name,
            part,
            "raw",
            "MiB",
            Ok(vec![mib(blob.size)]),
        );
        report.add(
            "size",
            example.name,
            part,
            "zstd",
            "MiB",
            Ok(vec![mib(blob.compressed_size)]),
        );
    }
    Ok(())
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A way to start one of the serving systems.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Thaw,
    ThawTextAbi,
    ThawGcOff,
    ThawWholeRegion,
    ThawOnDemand,
    ThawCommand,
    NativeGo,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Thaw => "thaw",
            Server::ThawTextAbi => "thaw, HTTP/1.1 text ABI",
            Server::ThawGcOff => "thaw, Go GC off (GOGC=off, 256 MiB limit)",
            Server::ThawWholeRegion => "thaw, whole-region slot reset",
            Server::ThawOnDemand => "thaw, on-demand allocator",
            Server::ThawCommand => "thaw, command module (init per request)",
            Server::NativeGo => "native Go net/http",
        }
    }

    fn command(self, tools: &Tools, prepared: &Prepared, address: SocketAddr) -> Command {
        let mut command = match self {
            Server::NativeGo => {
                let mut command = Command::new(&prepared.native);
                command.env("THAW_LISTEN", address.to_string());
                command
            }
            _ => {
                let reference = match self {
                    Server::ThawCommand => command_ref(prepared.example),
                    Server::ThawGcOff => gc_off_ref(prepared.example),
                    _ => snapshot_ref(prepared.example),
                };
                let allocator = match self {
                    Server::ThawOnDemand => "on-demand",
                    _ => "pooling",
                };
                let slot_reset = match self {
                    Server::ThawWholeRegion => "whole-region",
                    _ => "auto",
                };
                let request_abi = match self {
                    Server::ThawTextAbi => "text",
                    _ => "compact",
                };
                let mut command = Command::new(&tools.runner);
                command
                    .arg(reference)
                    .arg("--store")
                    .arg(&prepared.store)
                    .arg("--cache-dir")
                    .arg(&prepared.cache)
                    .args(["--listen", &address.to_string()])
                    .args(["--instance-allocator", allocator, "--max-instances", "256"])
                    .args(["--slot-reset", slot_reset])
                    .args(["--request-abi", request_abi])
                    .env("THAW_LOG", "warn");
                command
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// Starts the server and times process start → first complete 200.
    fn start(self, tools: &Tools, prepared: &Prepared) -> Result<(Running, SocketAddr, Duration)> {
        let address = free_address();
        let mut command = self.command(tools, prepared, address);
        let started = Instant::now();
        let child = Running(command.spawn().context("starting the server")?);
        loop {
            if let Ok(raw) = get(address, prepared.example.path) {
                let elapsed = started.elapsed();
                check_same(self.label(), &prepared.expected, parse_http(&raw)?)?;
                return Ok((child, address, elapsed));
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} did not answer within 60 s", self.label());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A one-shot system: a process per request, reading it on stdin (or CGI
/// environment) and writing the response to stdout.
#[derive(Clone, Copy)]
enum OneShot {
    WasmtimeJit,
    WasmtimePrecompiled,
    PeerPipeline,
    NativeCgi,
}

impl OneShot {
    fn label(self) -> &'static str {
        match self {
            OneShot::WasmtimeJit => "wasmtime run (JIT, cache off)",
            OneShot::WasmtimePrecompiled => "wasmtime run --allow-precompiled",
            OneShot::PeerPipeline => "Wizer CLI + wasmtime compile + run",
            OneShot::NativeCgi => "native Go CGI process",
        }
    }

    fn run_once(self, tools: &Tools, prepared: &Prepared) -> Result<Duration> {
        let path = prepared.example.path;
        let mut command = match self {
            OneShot::NativeCgi => {
                let mut command = Command::new(&prepared.native);
                command
                    .env("GATEWAY_INTERFACE", "CGI/1.1")
                    .env("REQUEST_METHOD", "GET")
                    .env("SERVER_PROTOCOL", "HTTP/1.1")
                    .env("REQUEST_URI", path)
                    .env("SCRIPT_NAME", "")
                    .env("PATH_INFO", path)
                    .env("SERVER_NAME", "bench")
                    .env("SERVER_PORT", "80")
                    .env("HTTP_HOST", "bench");
                command
            }
            _ => {
                let module = match self {
                    OneShot::WasmtimeJit => prepared.reactor.clone(),
                    OneShot::WasmtimePrecompiled => prepared.precompiled.clone(),
                    _ => prepared
                        .peer_pipeline
                        .clone()
                        .map_err(|e| anyhow::anyhow!("the peer pipeline failed to build: {e}"))?,
                };
                let mut command = Command::new(&tools.wasmtime);
                command.arg("run");
                match self {
                    OneShot::WasmtimeJit => command.args(["-C", "cache=n"]),
                    _ => command.arg("--allow-precompiled"),
                };
                // The CLI has no outbound HTTP (`thaw_http`), which no
                // benchmark calls: a call would trap.
                command
                    .args(["-W", "unknown-imports-trap=y"])
                    .args(["--invoke", "thaw_handle"])
                    .arg(module);
                command
            }
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn()?;
        if !matches!(self, OneShot::NativeCgi) {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(request(path).as_bytes())?;
        }
        let output = child.wait_with_output()?;
        let elapsed = started.elapsed();
        let answer = match self {
            OneShot::NativeCgi => parse_cgi(&output.stdout),
            _ => parse_http(&output.stdout),
        }
        .with_context(|| {
            format!(
                "{} wrote no response; stderr: {}",
                self.label(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
        check_same(self.label(), &prepared.expected, answer)?;
        Ok(elapsed)
    }
}

/// Process start to first complete response, with the artifact on disk.
pub fn cold_starts(tools: &Tools, prepared: &Prepared, runs: usize, report: &mut Report) {
    let name = prepared.example.name;
    for server in [Server::Thaw, Server::ThawCommand] {
        let outcome = (|| {
            // The first start fills the runner's local artifact cache and,
            // once the file is past the cache's racy window, records its
            // identity in the background (docs/runner.md): it runs long
            // enough to, as any host that served for a second has. Killed
            // sooner, every start below would hash the whole artifact.
            let (filled, _, _) = server.start(tools, prepared)?;
            std::thread::sleep(Duration::from_millis(1500));
            drop(filled);
            (0..runs)
                .map(|_| server.start(tools, prepared).map(|(_, _, d)| ms(d)))
                .collect()
        })();
        report.add(
            "cold start",
            name,
            server.label(),
            "start to first response",
            "ms",
            outcome,
        );
    }
    for one_shot in [
        OneShot::WasmtimeJit,
        OneShot::WasmtimePrecompiled,
        OneShot::PeerPipeline,
        OneShot::NativeCgi,
    ] {
        let outcome = (|| {
            one_shot.run_once(tools, prepared)?;
            (0..runs)
                .map(|_| one_shot.run_once(tools, prepared).map(ms))
                .collect()
        })();
        report.add(
            "cold start",
            name,
            one_shot.label(),
            "start to first response",
            "ms",
            outcome,
        );
    }
}

/// What `wrk --latency` reports.
struct Load {
    p50_ms: f64,
    p99_ms: f64,
    requests_per_second: f64,
}

fn wrk(address: SocketAddr, path: &str, connections: u32, seconds: u64) -> Result<Load> {
    let threads = connections.min(2);
    let output = run(Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-d", &format!("{seconds}s")])
        .arg(format!("http://{address}{path}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        bail!("wrk saw errors:\n{text}");
    }
    let percentile = |label: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .with_context(|| format!("no {label} in wrk's output:\n{text}"))?;
        parse_wrk_duration(line.split_whitespace().nth(1).unwrap_or(""))
    };
    let requests_per_second = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    Ok(Load {
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        requests_per_second,
    })
}

/// `251.00us`, `1.20ms`, `2.00s` → milliseconds.
fn parse_wrk_duration(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => bail!("bad duration unit in {text:?}"),
    })
}

/// Latency and throughput at concurrency 1 and 32, fresh instance per
/// request for every thaw variant.
pub fn warm_serving(tools: &Tools, prepared: &Prepared, seconds: u64, report: &mut Report) {
    let name = prepared.example.name;
    for server in [
        Server::Thaw,
        Server::ThawTextAbi,
        Server::ThawGcOff,
        Server::ThawWholeRegion,
        Server::ThawOnDemand,
        Server::ThawCommand,
        Server::NativeGo,
    ] {
        let started = server.start(tools, prepared);
        let (_child, address) = match started {
            Ok((child, address, _)) => (child, address),
            Err(e) => {
                report.add("serving", name, server.label(), "c=1 p50", "ms", Err(e));
                continue;
            }
        };
        for connections in [1, 32] {
            match wrk(address, prepared.example.path, connections, seconds) {
                Ok(load) => {
                    let (p50, p99, rps) = match connections {
                        1 => ("c=1 p50", "c=1 p99", "c=1 throughput"),
                        _ => ("c=32 p50", "c=32 p99", "c=32 throughput"),
                    };
                    report.add(
                        "serving",
                        name,
                        server.label(),
                        p50,
                        "ms",
                        Ok(vec![load.p50_ms]),
                    );
                    report.add(
                        "serving",
                        name,
                        server.label(),
                        p99,
                        "ms",
                        Ok(vec![load.p99_ms]),
                    );
                    report.add(
                        "serving",
                        name,
                        server.label(),
                        rps,
                        "req/s",
                        Ok(vec![load.requests_per_second]),
                    );
                }
                Err(e) => report.add("serving", name, server.label(), "c=1 p50", "ms", Err(e)),
            }
        }
    }
    if let Err(e) = inside_runner(tools, prepared, seconds, report) {
        report.add(
            "serving",
            name,
            "thaw, inside the runner",
            "c=1 p50",
            "ms",
            Err(e),
        );
    }
}

/// Time inside the runner (instantiate + call + teardown), from its access
/// log, in a separate run so that logging does not slow the figures above.
fn inside_runner(
    tools: &Tools,
    prepared: &Prepared,
    seconds: u64,
    report: &mut Report,
) -> Result<()> {
    let address = free_address();
    let log = tempfile::NamedTempFile::new()?;
    let mut command = Server::Thaw.command(tools, prepared, address);
    command
        .env("THAW_LOG", "thaw::access=info")
        .stderr(log.reopen()?);
    let _child = Running(command.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(address, prepared.example.path).is_err() {
        if Instant::now() > deadline {
            bail!("the runner did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    wrk(address, prepared.example.path, 1, seconds.min(5))?;
    let text = std::fs::read_to_string(log.path())?;
    let number = |line: &str, name: &str| -> Option<f64> {
        let value = line.split(name).nth(1)?;
        value
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let field = |name: &str, scale: f64| -> Vec<f64> {
        text.lines()
            .filter_map(|l| number(l, name))
            .map(|v| v / scale)
            .collect()
    };
    // Each request split into where its time went, from its own log line:
    // the HTTP front is everything but the call (routing, the body, the
    // environment, parsing the guest's answer), the guest's run is the
    // call but instantiation (WASI setup, the runtime's entry, the
    // handler).
    let parts: Vec<(f64, f64, f64)> = text
        .lines()
        .filter_map(|l| {
            Some((
                number(l, "total_us=")?,
                number(l, "call_us=")?,
                number(l, "instantiate_us=")?,
            ))
        })
        .collect();
    let name = prepared.example.name;
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "request",
        "ms",
        Ok(field("total_us=", 1000.0)),
    );
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "instantiate",
        "ms",
        Ok(field("instantiate_us=", 1000.0)),
    );
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "HTTP front",
        "ms",
        Ok(parts
            .iter()
            .map(|(total, call, _)| (total - call) / 1000.0)
            .collect()),
    );
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "guest run",
        "ms",
        Ok(parts
            .iter()
            .map(|(_, call, instantiate)| (call - instantiate) / 1000.0)
            .collect()),
    );
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "guest CPU",
        "ms",
        Ok(field("cpu_us=", 1000.0)),
    );
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "page faults",
        "faults",
        Ok(field("page_faults=", 1.0)),
    );
    // Absent (and reported as such) when the whole-region reset was chosen.
    report.add(
        "serving",
        name,
        "thaw, inside the runner",
        "slot reset copies",
        "KiB",
        Ok(field("reset_bytes=", 1024.0)),
    );
    Ok(())
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// Resident memory of the runner, idle and under 256 connections, and
/// binary sizes.
pub fn footprint(tools: &Tools, prepared: &Prepared, seconds: u64, report: &mut Report) {
    let name = prepared.example.name;
    let outcome = (|| -> Result<(f64, f64)> {
        let (child, address, _) = Server::Thaw.start(tools, prepared)?;
        std::thread::sleep(Duration::from_millis(500));
        let pid = child.0.id();
        let idle = rss_mib(pid)?;
        let path = prepared.example.path.to_string();
        let load = std::thread::spawn(move || wrk(address, &path, 256, seconds.min(5)));
        let mut peak: f64 = idle;
        while !load.is_finished() {
            peak = peak.max(rss_mib(pid)?);
            std::thread::sleep(Duration::from_millis(20));
        }
        load.join().expect("wrk thread")?;
        Ok((idle, peak))
    })();
    match outcome {
        Ok((idle, peak)) => {
            report.add(
                "footprint",
                name,
                "thaw-runner",
                "RSS idle",
                "MiB",
                Ok(vec![idle]),
            );
            report.add(
                "footprint",
                name,
                "thaw-runner",
                "RSS peak, 256 connections",
                "MiB",
                Ok(vec![peak]),
            );
        }
        Err(e) => report.add("footprint", name, "thaw-runner", "RSS idle", "MiB", Err(e)),
    }
    let mib = |path: &Path| file_size(path).map(|b| vec![b as f64 / (1 << 20) as f64]);
    report.add(
        "footprint",
        "-",
        "thaw-runner",
        "binary",
        "MiB",
        mib(&tools.runner),
    );
    report.add(
        "footprint",
        "-",
        "wasmtime CLI",
        "binary",
        "MiB",
        mib(&tools.wasmtime),
    );
    report.add(
        "footprint",
        "-",
        "wasmtime-min (runtime only)",
        "binary",
        "MiB",
        mib(&tools.wasmtime_min),
    );
}

/// Waits until a server on `address` answers `path`.
fn wait_for(address: SocketAddr, path: &str) -> Result<()> {
    let started = Instant::now();
    while get(address, path).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("nothing answered on {address} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Times one GET (connect, request, whole response) and checks the body.
fn timed_get(address: SocketAddr, path: &str, label: &str, expected: &[u8]) -> Result<f64> {
    let started = Instant::now();
    let raw = get(address, path)?;
    let elapsed = ms(started.elapsed());
    check_same(label, expected, parse_http(&raw)?)?;
    Ok(elapsed)
}

/// The edge host's cold paths, against the goals of a shared host:
/// - a function present in the local cache but not loaded, on a running
///   host (on-demand, no function named at start): its first request;
/// - a function the host has never seen, fetched from a registry: its
///   first request, and that minus the download of its artifact.
pub fn edge_cold_paths(tools: &Tools, prepared: &Prepared, runs: usize, report: &mut Report) {
    let name = prepared.example.name;
    let host = thaw_core::target::host_triple();
    let cached = (|| -> Result<Vec<f64>> {
        // One build under `runs` + 2 names (the first builds, the rest are
        // cache hits).
        let names: Vec<String> = (0..runs + 2).map(|i| format!("cold{i}")).collect();
        for name in &names {
            run(Command::new(&tools.thaw)
                .arg("build")
                .arg(&prepared.reactor)
                .args(["--name", &format!("{name}:latest"), "--target", &host])
                .arg("--store")
                .arg(&prepared.store)
                .env("THAW_HOME", prepared.store.parent().unwrap())
                .env("THAW_LOG", "warn"))?;
        }
        let address = free_address();
        let _runner = Running(
            Command::new(&tools.runner)
                .arg("--store")
                .arg(&prepared.store)
                .arg("--cache-dir")
                .arg(&prepared.cache)
                .args(["--listen", &address.to_string()])
                .args(["--max-loaded", &(runs + 1).to_string()])
                .env("THAW_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting thaw-runner")?,
        );
        wait_for(address, "/healthz")?;
        // "Present in the local cache": fetched, and verified once its
        // file is older than the cache's racy window (1 s), as on a host
        // that has run the function before.
        timed_get(address, "/cold0/", "thaw", &prepared.expected)?;
        std::thread::sleep(Duration::from_millis(1200));
        timed_get(address, "/cold1/", "thaw", &prepared.expected)?;
        names[2..]
            .iter()
            .map(|name| timed_get(address, &format!("/{name}/"), "thaw", &prepared.expected))
            .collect()
    })();
    report.add(
        "edge host",
        name,
        "thaw, cached, not loaded",
        "first request",
        "ms",
        cached,
    );

    let fetched = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let dir = prepared.store.parent().unwrap().join("registry");
        std::fs::create_dir_all(&dir)?;
        let key_file = dir.join("registry.key");
        let key = String::from_utf8(
            run(Command::new(&tools.thaw)
                .args(["keygen", "--out"])
                .arg(&key_file))?
            .stdout,
        )?
        .trim()
        .to_string();
        std::fs::write(dir.join("tokens"), "bench-token\n")?;
        let address = free_address();
        let base = format!("http://{address}");
        let _registry = Running(
            Command::new(&tools.thaw)
                .arg("registry")
                .args(["--listen", &address.to_string()])
                .arg("--store")
                .arg(dir.join("store"))
                .arg("--signing-key")
                .arg(&key_file)
                .arg("--tokens")
                .arg(dir.join("tokens"))
                .arg("--public-reads")
                .env("THAW_HOME", &dir)
                .env("THAW_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting thaw registry")?,
        );
        wait_for(address, "/healthz")?;
        run(Command::new(&tools.thaw)
            .arg("push")
            .arg(&prepared.reactor)
            .args(["--registry", &base, "--name", "edge:latest"])
            .args(["--token", "bench-token", "--target", &host])
            .env("THAW_HOME", &dir))?;
        // The artifact the runner will download, to time its download.
        let tag: serde_json::Value =
            serde_json::from_slice(&parse_http(&get(address, "/v1/tags/edge:latest")?)?.1)?;
        let manifest = tag["manifest"].as_str().context("no manifest in the tag")?;
        let manifest: serde_json::Value = serde_json::from_slice(
            &parse_http(&get(address, &format!("/v1/manifests/{manifest}"))?)?.1,
        )?;
        let artifact = manifest["artifacts"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["target"] == host.as_str()))
            .and_then(|a| a["digest"].as_str())
            .context("no artifact for this host")?
            .to_string();
        let (mut first, mut overhead) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let download = {
                let started = Instant::now();
                let raw = get(address, &format!("/v1/blobs/{artifact}"))?;
                let elapsed = ms(started.elapsed());
                if parse_http(&raw)?.0 != 200 {
                    bail!("downloading the artifact failed");
                }
                elapsed
            };
            let cache = tempfile::tempdir()?;
            let edge = free_address();
            let _runner = Running(
                Command::new(&tools.runner)
                    .args(["--registry", &base, "--trust-key", &key])
                    .arg("--cache-dir")
                    .arg(cache.path())
                    .args(["--listen", &edge.to_string()])
                    .env("THAW_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting thaw-runner")?,
            );
            wait_for(edge, "/healthz")?;
            let total = timed_get(edge, "/edge/", "thaw", &prepared.expected)?;
            first.push(total);
            overhead.push(total - download);
        }
        Ok((first, overhead))
    })();
    let (first, overhead) = match fetched {
        Ok((first, overhead)) => (Ok(first), Ok(overhead)),
        Err(e) => (Err(anyhow::anyhow!("{e:#}")), Err(e)),
    };
    report.add(
        "edge host",
        name,
        "thaw, fetched from a registry",
        "first request",
        "ms",
        first,
    );
    report.add(
        "edge host",
        name,
        "thaw, fetched from a registry",
        "first request minus the artifact's download",
        "ms",
        overhead,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_durations() {
        assert_eq!(parse_wrk_duration("251.00us").unwrap(), 0.251);
        assert_eq!(parse_wrk_duration("1.50ms").unwrap(), 1.5);
        assert_eq!(parse_wrk_duration("2.00s").unwrap(), 2000.0);
        assert!(parse_wrk_duration("fast").is_err());
    }
}
