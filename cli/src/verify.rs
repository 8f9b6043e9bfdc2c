//! `thaw call` and `thaw verify`: run a stored function once, here, or for
//! another ISA or CPU model under QEMU, and compare the responses; or
//! rebuild a stored function from its source and compare the bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use thaw_builder::thaw_compiler::Compiler;
use thaw_builder::{BuildRequest, Builder};
use thaw_core::target::host_triple;
use thaw_core::{Digest, Manifest, ModuleKind, Reference, TargetProfile};
use thaw_engine::profile;
use thaw_runner::{Runner, RunnerConfig};
use thaw_store::ArtifactStore;

/// Where `scripts/install-isa-tools.sh` puts the aarch64 wasmtime CLI.
const LOCAL_AARCH64_WASMTIME: &str = ".toolchain/wasmtime-aarch64/wasmtime_cli/wasmtime";

/// The request a function gets: a whole HTTP/1.1 request for SDK reactors,
/// stdin for commands.
#[derive(clap::Args, Clone, Debug)]
pub struct RequestArgs {
    /// A file holding the raw request (reactors: an HTTP/1.1 request;
    /// commands: stdin). Overrides --method and --path.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// Method of the generated request.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path of the generated request.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Run this target profile's artifact instead of the best one for this CPU.
    #[arg(long)]
    pub profile: Option<String>,
}

impl RequestArgs {
    fn bytes(&self, kind: ModuleKind) -> Result<Vec<u8>> {
        if let Some(file) = &self.request {
            return std::fs::read(file).with_context(|| format!("reading {}", file.display()));
        }
        Ok(match kind {
            ModuleKind::Reactor => format!(
                "{} {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
                self.method, self.path
            )
            .into_bytes(),
            ModuleKind::Command => Vec::new(),
        })
    }
}

/// Runs `reference` once on this host through the runner; returns stdout.
pub async fn call(
    store: &ArtifactStore,
    reference: &Reference,
    request: &RequestArgs,
) -> Result<Vec<u8>> {
    let cache = thaw_core::paths::artifact_cache().context("no cache directory: set THAW_HOME")?;
    let mut config = RunnerConfig::new(cache);
    // One call: one slot, so the pooling allocator reserves little address
    // space (this also runs under QEMU).
    config.max_instances = 1;
    let runner = Runner::new(config)?;
    let function = runner
        .load_profile(store, reference, request.profile.as_deref())
        .await?;
    let stdin = request.bytes(function.kind())?;
    let output = function.call(stdin, &[]).await?;
    Ok(output.stdout.to_vec())
}

/// Checks that the artifact for `target` gives the same response as this
/// host's artifact run natively: another ISA runs under QEMU user mode with
/// the official wasmtime CLI; this host's own target runs under QEMU with
/// an old CPU model, proving the artifact needs no newer CPU features.
pub async fn verify(
    store: &ArtifactStore,
    store_location: Option<&str>,
    reference: &Reference,
    target: &str,
    cpu: &str,
    request: &RequestArgs,
) -> Result<()> {
    let (digest, manifest) = store.resolve(reference).await?;
    let artifact = manifest.artifact_for(target).with_context(|| {
        format!(
            "{reference} has no artifact for {target}; it has: {}",
            manifest.profile_names()
        )
    })?;
    let host = host_triple();
    // Natively, the runner picks the best artifact for this CPU.
    let native_request = RequestArgs {
        profile: None,
        ..request.clone()
    };
    let expected = call(store, &Reference::Digest(digest), &native_request)
        .await
        .context("running natively")?;
    let native = thaw_runner::best_artifact_for_host(&manifest)
        .map(|a| format!("{} artifact {}", a.profile, a.blob.digest.short()))
        .unwrap_or_default();
    println!(
        "native: {native} through thaw's runner: {} bytes",
        expected.len()
    );

    let (actual, how) = if artifact.target == host {
        let qemu = find_tool(&format!("qemu-{}-static", arch(&artifact.target)))?;
        let exe = std::env::current_exe().context("locating the thaw binary")?;
        let request_file = tempfile::NamedTempFile::new()?;
        std::fs::write(request_file.path(), request.bytes(manifest.kind)?)?;
        let mut command = Command::new(&qemu);
        command
            .args(["-cpu", cpu])
            .arg(exe)
            .args([
                "call",
                &digest.to_string(),
                "--profile",
                target,
                "--request",
            ])
            .arg(request_file.path());
        if let Some(location) = store_location {
            command.args(["--store", location]);
        }
        let output = run(command, None)?;
        (
            output,
            format!("thaw's runner under {} -cpu {cpu}", qemu.display()),
        )
    } else {
        let arch = arch(&artifact.target);
        let qemu = find_tool(&format!("qemu-{arch}-static"))?;
        let sysroot = PathBuf::from(format!("/usr/{arch}-linux-gnu"));
        if !sysroot.is_dir() {
            bail!(
                "{} is missing: run scripts/install-isa-tools.sh",
                sysroot.display()
            );
        }
        let wasmtime = foreign_wasmtime(&artifact.target)?;
        let bytes = store.get_blob(&artifact.blob).await?;
        let file = tempfile::Builder::new().suffix(".cwasm").tempfile()?;
        std::fs::write(file.path(), &bytes)?;
        let mut command = Command::new(&qemu);
        command
            .arg("-L")
            .arg(&sysroot)
            .arg(&wasmtime)
            .args(["run", "--allow-precompiled"])
            .args(profile::wasmtime_cli_args(Duration::from_secs(60)))
            .args(["-W", &format!("max-wasm-stack={}", thaw_runner::WASM_STACK)])
            // The CLI has no outbound HTTP (`thaw_http`): a call to it
            // traps, and verifying never makes one.
            .args(["-W", "unknown-imports-trap=y"]);
        if manifest.kind == ModuleKind::Reactor {
            command.args(["--invoke", &manifest.entry]);
        }
        command.arg(file.path());
        let output = run(command, Some(request.bytes(manifest.kind)?))?;
        (
            output,
            format!("{} under {}", wasmtime.display(), qemu.display()),
        )
    };
    println!(
        "{target}: artifact {} through {how}: {} bytes",
        artifact.blob.digest.short(),
        actual.len()
    );
    if actual != expected {
        bail!(
            "responses differ\n--- native ({host}) ---\n{}\n--- {target} ---\n{}",
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(&actual)
        );
    }
    println!("identical responses");
    Ok(())
}

fn arch(triple: &str) -> &str {
    triple.split('-').next().unwrap_or(triple)
}

fn run(mut command: Command, stdin: Option<Vec<u8>>) -> Result<Vec<u8>> {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {described}"))?;
    let mut input = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&stdin.unwrap_or_default());
    });
    let output = child.wait_with_output()?;
    let _ = writer.join();
    if !output.status.success() {
        bail!(
            "{described} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

fn find_tool(name: &str) -> Result<PathBuf> {
    which::which(name).with_context(|| {
        format!("{name} not found: run scripts/install-isa-tools.sh (Debian's qemu-user-static)")
    })
}

/// The wasmtime CLI for `target`: `$THAW_WASMTIME_AARCH64`, else the copy
/// installed in the checkout.
fn foreign_wasmtime(target: &str) -> Result<PathBuf> {
    if arch(target) != "aarch64" {
        bail!("no foreign wasmtime CLI is known for {target}");
    }
    if let Some(path) = std::env::var_os("THAW_WASMTIME_AARCH64") {
        return Ok(PathBuf::from(path));
    }
    // Next to the binary's checkout (target/release/thaw) or the current one.
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().map(Path::to_path_buf));
    }
    if let Ok(dir) = std::env::current_dir() {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    roots
        .iter()
        .map(|r| r.join(LOCAL_AARCH64_WASMTIME))
        .find(|p| p.is_file())
        .context("no aarch64 wasmtime CLI: run scripts/install-isa-tools.sh or set THAW_WASMTIME_AARCH64")
}

/// One stored output and its rebuilt counterpart.
#[derive(Debug, PartialEq, Eq)]
pub struct Comparison {
    /// `snapshot` or `artifact <target profile>`.
    pub what: String,
    /// The stored digest, if the stored build has this output.
    pub stored: Option<Digest>,
    /// The rebuilt digest, if the rebuild has this output.
    pub rebuilt: Option<Digest>,
}

impl Comparison {
    /// Whether the two are the same bytes.
    pub fn matches(&self) -> bool {
        self.stored.is_some() && self.stored == self.rebuilt
    }
}

/// The snapshot and every stored artifact of `stored`, against `rebuilt`.
pub fn compare(stored: &Manifest, rebuilt: &Manifest) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    if stored.snapshot.is_some() || rebuilt.snapshot.is_some() {
        comparisons.push(Comparison {
            what: "snapshot".into(),
            stored: stored.snapshot.as_ref().map(|b| b.digest),
            rebuilt: rebuilt.snapshot.as_ref().map(|b| b.digest),
        });
    }
    for artifact in &stored.artifacts {
        comparisons.push(Comparison {
            what: format!("artifact {}", artifact.profile),
            stored: Some(artifact.blob.digest),
            rebuilt: rebuilt
                .artifacts
                .iter()
                .find(|a| a.profile == artifact.profile)
                .map(|a| a.blob.digest),
        });
    }
    comparisons
}

/// `thaw verify --rebuild`: builds the stored source module of `reference`
/// again, from scratch and into a scratch store (the build cache and the
/// store are not touched), for the stored targets, and compares the
/// snapshot and artifacts with the stored ones. `init_env` must name the
/// variables the stored build's init saw: their values were never stored.
pub async fn rebuild(
    store: &ArtifactStore,
    reference: &Reference,
    init_env: Vec<(String, String)>,
) -> Result<Vec<Comparison>> {
    let (digest, stored) = store.resolve(reference).await?;
    let mut given: Vec<&str> = init_env.iter().map(|(k, _)| k.as_str()).collect();
    given.sort_unstable();
    let mut expected: Vec<&str> = stored.build.init_env.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if given != expected {
        bail!(
            "{reference} ({digest}) was built with init environment {expected:?}, and this \
             rebuild has {given:?}: pass the same names with --init-env (their values were \
             never stored)"
        );
    }
    let source = store
        .get_blob(&stored.source)
        .await
        .context("reading the stored source module")?;
    let targets = stored
        .artifacts
        .iter()
        .map(|a| TargetProfile::by_name(&a.profile))
        .collect::<Result<Vec<_>, _>>()?;
    let scratch = ArtifactStore::open("memory://")?;
    let builder = Builder::new(scratch, Compiler::new())?;
    let mut request = BuildRequest::new(targets);
    request.snapshot.env = init_env;
    // Builds from before the choice was recorded all kept names.
    request.keep_names = stored.build.keep_names.unwrap_or(true);
    let rebuilt = builder
        .build(source, &request, |_| {})
        .await
        .context("rebuilding the stored source module")?;
    Ok(compare(&stored, &rebuilt.manifest))
}
