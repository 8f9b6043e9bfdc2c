//! `thaw`: build Go edge functions into pre-initialized, precompiled
//! artifacts, and inspect and export them.

mod progress;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use thaw_artifact::{ArtifactStore, Manifest, Reference, TagRef, TargetProfile};
use thaw_gobuild::{BuildMode, Go};
use thaw_registry::thaw_compiler::{Compiler, IncrementalCache};
use thaw_registry::thaw_snapshotter::{DEFAULT_INIT_MAX_MEMORY, SnapshotOptions};
use thaw_registry::{BuildRequest, Builder};

use crate::progress::{BuildProgress, format_duration};

#[derive(Parser)]
#[command(
    name = "thaw",
    version,
    about = "Pre-initialized, precompiled Go edge functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a Go package directory or a .wasm file: snapshot its init and
    /// compile it for each target. Prints the manifest digest.
    Build(BuildArgs),
    /// Show a stored build's manifest.
    Inspect {
        /// `name:tag` or a manifest digest.
        reference: Reference,
        /// Print the manifest JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write one verified blob of a build to a file.
    Export {
        /// `name:tag` or a manifest digest.
        reference: Reference,
        /// The target whose artifact to export.
        #[arg(long, default_value_t = thaw_artifact::profile::host_triple())]
        target: String,
        /// What to export.
        #[arg(long, value_enum, default_value_t = Part::Artifact)]
        part: Part,
        /// The output file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tags.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Part {
    /// The precompiled `.cwasm` for `--target`.
    Artifact,
    /// The Wizer snapshot (`.wasm`).
    Snapshot,
    /// The module as submitted (`.wasm`).
    Source,
}

#[derive(Args)]
struct StoreArgs {
    /// The store: a directory, `file:///path` or `memory://`. Defaults to
    /// `$THAW_HOME/store`, else the XDG data directory (`~/.local/share/thaw/store`).
    #[arg(long, env = "THAW_STORE")]
    store: Option<String>,
}

impl StoreArgs {
    fn open(&self) -> Result<ArtifactStore> {
        let location = match &self.store {
            Some(location) => location.clone(),
            None => thaw_home()?.join("store").display().to_string(),
        };
        ArtifactStore::open(&location).with_context(|| format!("opening store {location}"))
    }
}

/// `$THAW_HOME`, else `$XDG_DATA_HOME/thaw` (usually `~/.local/share/thaw`).
fn thaw_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("THAW_HOME") {
        return Ok(PathBuf::from(home));
    }
    dirs::data_dir()
        .map(|d| d.join("thaw"))
        .context("no data directory: set THAW_HOME or pass --store")
}

#[derive(Args)]
struct BuildArgs {
    /// A Go package directory (built with GOOS=wasip1) or a `.wasm` file.
    path: PathBuf,
    /// Tag the build as `name:tag`.
    #[arg(long)]
    name: Option<TagRef>,
    /// A target triple; repeat for several. Defaults to the host's.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Print the whole manifest as JSON instead of its digest.
    #[arg(long)]
    json: bool,
    /// An environment variable visible to init, `KEY=VALUE`; repeatable.
    /// Init sees no host environment otherwise.
    #[arg(long = "init-env", value_parser = parse_env)]
    init_env: Vec<(String, String)>,
    /// Wall-clock limit for init, e.g. `30s`, `500ms`.
    #[arg(long, env = "THAW_INIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    init_timeout: Duration,
    /// Linear-memory limit for init, in MiB.
    #[arg(long, env = "THAW_INIT_MAX_MEMORY_MIB", default_value_t = DEFAULT_INIT_MAX_MEMORY >> 20)]
    init_max_memory_mib: u64,
    /// How a Go package is linked.
    #[arg(long, value_enum, default_value_t = BuildMode::Auto)]
    go_buildmode: BuildMode,
    #[command(flatten)]
    store: StoreArgs,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => build(args).await,
        Command::Inspect {
            reference,
            json,
            store,
        } => {
            let (digest, manifest) = store.open()?.resolve(&reference).await?;
            if json {
                std::io::stdout().write_all(&manifest.to_bytes())?;
            } else {
                print_summary(&digest.to_string(), &manifest);
            }
            Ok(())
        }
        Command::Export {
            reference,
            target,
            part,
            output,
            store,
        } => export(&store.open()?, &reference, &target, part, &output).await,
        Command::Ls { store } => {
            for (tag, digest) in store.open()?.list_tags().await? {
                println!("{tag}\t{digest}");
            }
            Ok(())
        }
    }
}

async fn build(args: BuildArgs) -> Result<()> {
    let store = args.store.open()?;
    let targets = if args.targets.is_empty() {
        vec![TargetProfile::host()?]
    } else {
        args.targets
            .iter()
            .map(|t| TargetProfile::by_triple(t))
            .collect::<Result<_, _>>()?
    };
    let progress = Arc::new(BuildProgress::new());
    let wasm = read_or_build_module(&args.path, args.go_buildmode, &progress)?;

    let cache = IncrementalCache::in_directory(cache_dir()?.join("cranelift"))
        .context("opening the compile cache")?;
    let builder = Builder::new(store, Compiler::with_cache(cache))?;
    let request = BuildRequest {
        targets,
        snapshot: SnapshotOptions {
            init_timeout: args.init_timeout,
            max_memory: args.init_max_memory_mib << 20,
            env: args.init_env,
            ..SnapshotOptions::default()
        },
        tag: args.name.clone(),
    };
    let events = progress.clone();
    let outcome = builder
        .build(Bytes::from(wasm), &request, move |e| events.on_event(e))
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            progress.abandon();
            return Err(e).context(format!("building {}", args.path.display()));
        }
    };
    if args.json {
        std::io::stdout().write_all(&outcome.manifest.to_bytes())?;
    } else {
        println!("{}", outcome.manifest_digest);
    }
    if let Some(name) = &args.name {
        eprintln!("tagged {name}");
    }
    Ok(())
}

/// Where caches live: `$THAW_HOME/cache`, else the XDG cache directory.
fn cache_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("THAW_HOME") {
        return Ok(PathBuf::from(home).join("cache"));
    }
    dirs::cache_dir()
        .map(|d| d.join("thaw"))
        .context("no cache directory: set THAW_HOME")
}

fn read_or_build_module(path: &Path, mode: BuildMode, progress: &BuildProgress) -> Result<Vec<u8>> {
    if path.is_dir() {
        let go = Go::find(path)?;
        let step = format!("go build ({})", go.version);
        progress.start(&step);
        let started = Instant::now();
        let wasm = go.build(path, mode);
        match &wasm {
            Ok(_) => progress.finish(&step, started.elapsed()),
            Err(_) => progress.abandon(),
        }
        return Ok(wasm?);
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

async fn export(
    store: &ArtifactStore,
    reference: &Reference,
    target: &str,
    part: Part,
    output: &Path,
) -> Result<()> {
    let (_, manifest) = store.resolve(reference).await?;
    let blob = match part {
        Part::Artifact => {
            &manifest
                .artifact_for(target)
                .with_context(|| {
                    format!(
                        "{reference} has no artifact for {target}; it has: {}",
                        manifest
                            .artifacts
                            .iter()
                            .map(|a| a.target.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?
                .blob
        }
        Part::Snapshot => manifest
            .snapshot
            .as_ref()
            .with_context(|| format!("{reference} is a command module: it has no snapshot"))?,
        Part::Source => &manifest.source,
    };
    // `get_blob` verifies the digest before returning a byte.
    let bytes = store.get_blob(blob).await?;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(output)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {} ({} bytes, {})",
        output.display(),
        bytes.len(),
        blob.digest
    );
    Ok(())
}

fn print_summary(digest: &str, m: &Manifest) {
    println!("manifest   {digest}");
    println!("kind       {} (entry `{}`)", m.kind, m.entry);
    println!("source     {}  {} bytes", m.source.digest, m.source.size);
    if let Some(s) = &m.snapshot {
        println!("snapshot   {}  {} bytes", s.digest, s.size);
    }
    for a in &m.artifacts {
        println!(
            "artifact   {}  {}  {} bytes ({} stored)",
            a.target, a.blob.digest, a.blob.size, a.blob.compressed_size
        );
    }
    let steps: Vec<String> = m
        .build
        .steps
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.step,
                format_duration(Duration::from_millis(s.millis))
            )
        })
        .collect();
    println!(
        "built by   thaw {} / wasmtime {}",
        m.build.thaw_version, m.build.wasmtime_version
    );
    println!("steps      {}", steps.join(", "));
}
