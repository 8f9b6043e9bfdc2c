//! `thaw`: build Go edge functions into pre-initialized, precompiled
//! artifacts, serve them, and inspect and export them.

mod progress;
mod service;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use thaw_builder::thaw_compiler::{Compiler, IncrementalCache, Worker};
use thaw_builder::thaw_snapshotter::{DEFAULT_INIT_MAX_MEMORY, SnapshotOptions};
use thaw_builder::{BuildOutcome, BuildRequest, Builder};
use thaw_core::fs::{Durability, write_atomic};
use thaw_core::settings::{parse_duration, parse_key_value};
use thaw_core::{Manifest, ModuleKind, Reference, TagRef, TargetProfile};
use thaw_gobuild::{BuildMode, Go};
use thaw_runner::options::{ServeOptions, SourceOptions};
use thaw_runner::{Runner, RunnerConfig, Source};
use thaw_store::ArtifactStore;

use crate::progress::{BuildProgress, format_duration};

/// Invoked under this name (a symlink to `thaw`), thaw behaves as
/// `thaw exec`, so that `GOOS=wasip1 GOARCH=wasm go test` runs through it.
const GO_EXEC_WRAPPER: &str = "go_wasip1_wasm_exec";

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
    /// Create a function directory that builds as it is: a go.mod and a
    /// main.go using the Go SDK that ships with this binary (no `replace`
    /// needed).
    New {
        /// The directory to create; its last component names the function
        /// and its Go module.
        dir: PathBuf,
    },
    /// Build a Go package or .wasm file for the host and serve it: the
    /// whole pipeline in one command.
    Up(UpArgs),
    /// Build a Go package directory or a .wasm file: snapshot its init and
    /// compile it for each target. Prints the manifest digest.
    Build(BuildArgs),
    /// Serve stored functions over HTTP.
    Run {
        /// `name:tag` or manifest digests. One function is served at `/`;
        /// several by path prefix `/<name>/` or `Host: <name>.…`.
        #[arg(required = true)]
        functions: Vec<Reference>,
        #[command(flatten)]
        source: SourceOptions,
        #[command(flatten)]
        serve: ServeOptions,
    },
    /// Run a wasip1 command module like a local program, through the AOT
    /// pipeline (compiled once, cached by digest): `/` preopened, `PWD` and
    /// `PATH` passed, 8 MiB of wasm stack, the exit status propagated.
    Exec {
        /// The `.wasm` command module.
        module: PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a stored function once on this host and print what it wrote to
    /// stdout (for SDK functions, the raw HTTP/1.1 response).
    Call {
        /// `name:tag` or a manifest digest.
        reference: Reference,
        #[command(flatten)]
        request: verify::RequestArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Execute the artifact built for `--target` and check it answers
    /// exactly like this host's artifact run natively: another ISA runs
    /// under QEMU user mode with the official wasmtime CLI; this host's own
    /// target runs under QEMU with an old CPU model (`--cpu`). Needs the
    /// tools from `scripts/install-isa-tools.sh`.
    ///
    /// With --rebuild instead: build the stored source module again, from
    /// scratch, and check that the snapshot and every artifact come out
    /// byte for byte the same.
    Verify {
        /// `name:tag` or a manifest digest.
        reference: Reference,
        /// The target whose artifact to execute.
        #[arg(long, required_unless_present = "rebuild", conflicts_with = "rebuild")]
        target: Option<String>,
        /// Rebuild from the stored source and compare, instead of executing.
        #[arg(long)]
        rebuild: bool,
        /// For --rebuild: a `KEY=VALUE` the original build's init saw
        /// (manifests keep only the names); repeatable.
        #[arg(long = "init-env", value_parser = parse_key_value, requires = "rebuild")]
        init_env: Vec<(String, String)>,
        /// The CPU model QEMU emulates when checking this host's target.
        #[arg(long, default_value = "Nehalem")]
        cpu: String,
        #[command(flatten)]
        request: verify::RequestArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Compile a module in a child process for `thaw registry` (internal).
    #[command(hide = true)]
    CompileWorker {
        #[arg(long)]
        module: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "target")]
        targets: Vec<String>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Create a registry signing key; prints the public key runners trust.
    Keygen(service::KeygenArgs),
    /// Run the registry: the build API and the read API over a store.
    Registry(service::RegistryArgs),
    /// Submit a Go package or .wasm file to a registry and follow its build.
    Push(service::PushArgs),
    /// Fetch a build from a registry into the local store, verifying the
    /// manifest's signature and every blob's digest.
    Pull(service::PullArgs),
    /// Show a tag's releases at a registry, newest first; or, given a
    /// manifest digest, point the tag at it (a rollback or a promotion).
    Tag(service::TagArgs),
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
        #[arg(long, default_value_t = thaw_core::target::host_triple())]
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
    /// Check the store's integrity: every blob decodes to its digest, and
    /// every manifest, tag and build-cache entry points at present data.
    Fsck {
        /// Remove what cannot be trusted (a corrupt blob, then the
        /// manifests, signatures, tags and cache entries that depend on
        /// it), until the store is consistent. Keys thaw does not write
        /// are left alone.
        #[arg(long)]
        repair: bool,
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
    /// The store: a directory, `file:///path`, `s3://bucket` (configured by
    /// the AWS environment variables) or `memory://`. Defaults to
    /// `$THAW_HOME/store`, else the XDG data directory (`~/.local/share/thaw/store`).
    #[arg(long, env = "THAW_STORE")]
    store: Option<String>,
}

impl StoreArgs {
    fn open(&self) -> Result<ArtifactStore> {
        ArtifactStore::open_or_default(self.store.as_deref()).context("opening the store")
    }
}

/// What to build and how to run its init; shared by `build` and `up`.
#[derive(Args)]
struct SourceArgs {
    /// A Go package directory (built with GOOS=wasip1) or a `.wasm` file.
    path: PathBuf,
    /// An environment variable visible to init, `KEY=VALUE`; repeatable.
    /// Init sees no host environment otherwise.
    #[arg(long = "init-env", value_parser = parse_key_value)]
    init_env: Vec<(String, String)>,
    /// Wall-clock limit for init, e.g. `30s`, `500ms`.
    #[arg(long, env = "THAW_INIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    init_timeout: Duration,
    /// Linear-memory limit for init, in MiB.
    #[arg(long, env = "THAW_INIT_MAX_MEMORY_MIB", default_value_t = DEFAULT_INIT_MAX_MEMORY >> 20)]
    init_max_memory_mib: u64,
    #[command(flatten)]
    choices: BuildChoices,
    #[command(flatten)]
    store: StoreArgs,
}

/// How a Go package becomes a module, and what its artifacts keep; shared
/// by `build`, `up` and `push`.
#[derive(Args)]
struct BuildChoices {
    /// How a Go package is linked.
    #[arg(long, value_enum, default_value_t = BuildMode::Auto)]
    go_buildmode: BuildMode,
    /// Keep the module's function names in the artifacts, so that traps
    /// and native profilers name wasm functions. Off by default: names
    /// cost every cold load about 90 µs, and the stored snapshot keeps them.
    #[arg(long, env = "THAW_KEEP_NAMES")]
    keep_names: bool,
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Tag the build as `name:tag`.
    #[arg(long)]
    name: Option<TagRef>,
    /// A target triple; repeat for several. Defaults to the host's.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Print the whole manifest as JSON instead of its digest.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Tag the build as `name:tag`. Default: the directory or file name, tag `latest`.
    #[arg(long)]
    name: Option<TagRef>,
    #[command(flatten)]
    serve: ServeOptions,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The access log of `thaw up`/`thaw run` is on by default.
            tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
                .unwrap_or_else(|_| "warn,thaw::access=info".into()),
        )
        .with_writer(std::io::stderr)
        // Escape codes only for a terminal, so log files stay parseable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let command = if invoked_as.as_deref() == Some(GO_EXEC_WRAPPER) {
        // go_wasip1_wasm_exec MODULE ARGS...: exactly Go's contract.
        let mut args = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned());
        let Some(module) = args.next() else {
            eprintln!("usage: {GO_EXEC_WRAPPER} MODULE.wasm [ARGS...]");
            return std::process::ExitCode::from(2);
        };
        Command::Exec {
            module: module.into(),
            args: args.collect(),
        }
    } else {
        Cli::parse().command
    };
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    match runtime.block_on(run(command)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<u8> {
    match command {
        Command::Up(args) => up(args).await?,
        Command::Build(args) => {
            let targets = if args.targets.is_empty() {
                vec![TargetProfile::host()?]
            } else {
                args.targets
                    .iter()
                    .map(|t| TargetProfile::by_name(t))
                    .collect::<Result<_, _>>()?
            };
            let outcome = build(&args.source, targets, args.name.clone()).await?;
            if args.json {
                std::io::stdout().write_all(&outcome.manifest.to_bytes())?;
            } else {
                println!("{}", outcome.manifest_digest);
            }
        }
        Command::Run {
            functions,
            source,
            serve,
        } => {
            let config = serve.runner_config()?;
            let source = source.open(&config.cache_dir)?;
            serve_functions(source, &functions, &serve, false).await?;
        }
        Command::CompileWorker {
            module,
            out,
            targets,
            cache_dir,
        } => {
            thaw_builder::thaw_compiler::worker::run(&module, &out, &targets, cache_dir.as_deref())?
        }
        Command::Keygen(args) => service::keygen(&args)?,
        Command::Registry(args) => service::registry(args).await?,
        Command::Push(args) => service::push(args).await?,
        Command::Pull(args) => service::pull(args).await?,
        Command::Tag(args) => service::tag(args).await?,
        Command::New { dir } => new_function(&dir)?,
        Command::Exec { module, args } => return exec(&module, args).await,
        Command::Call {
            reference,
            request,
            store,
        } => {
            let stdout = verify::call(&store.open()?, &reference, &request).await?;
            std::io::stdout().write_all(&stdout)?;
        }
        Command::Verify {
            reference,
            target: None,
            init_env,
            store,
            ..
        } => {
            let comparisons = verify::rebuild(&store.open()?, &reference, init_env).await?;
            for c in &comparisons {
                let digest = |d: &Option<thaw_core::Digest>| {
                    d.as_ref().map_or("(none)".to_string(), |d| d.to_string())
                };
                match c.matches() {
                    true => println!("{:<28} identical  {}", c.what, digest(&c.stored)),
                    false => println!(
                        "{:<28} DIFFERENT  stored {}, rebuilt {}",
                        c.what,
                        digest(&c.stored),
                        digest(&c.rebuilt)
                    ),
                }
            }
            let different = comparisons.iter().filter(|c| !c.matches()).count();
            if different > 0 {
                bail!("{different} output(s) of {reference} differ from a rebuild of its source");
            }
            eprintln!("{reference}: a rebuild of its source gives the same bytes");
        }
        Command::Verify {
            reference,
            target: Some(target),
            cpu,
            request,
            store,
            ..
        } => {
            let location = store.store.clone();
            verify::verify(
                &store.open()?,
                location.as_deref(),
                &reference,
                &target,
                &cpu,
                &request,
            )
            .await?;
        }
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
        }
        Command::Export {
            reference,
            target,
            part,
            output,
            store,
        } => export(&store.open()?, &reference, &target, part, &output).await?,
        Command::Fsck { repair, store } => {
            let store = store.open()?;
            if repair {
                for removed in store.repair(thaw_registry::RECORD_KINDS).await? {
                    println!("removed {removed}");
                }
            }
            let problems = store.check_integrity(thaw_registry::RECORD_KINDS).await?;
            for problem in &problems {
                println!("{problem}");
            }
            if !problems.is_empty() {
                bail!("{} problem(s) found", problems.len());
            }
            eprintln!("store is consistent");
        }
        Command::Ls { store } => {
            let listing = store.open()?.list_tags().await?;
            for (tag, digest) in listing.tags {
                println!("{tag}\t{digest}");
            }
            for (tag, e) in &listing.unreadable {
                eprintln!(
                    "warning: tag {tag} is unreadable: {}",
                    thaw_core::error::chain(e)
                );
            }
        }
    }
    Ok(0)
}

/// Runs the build pipeline with progress on the terminal.
async fn build(
    source: &SourceArgs,
    targets: Vec<&'static TargetProfile>,
    tag: Option<TagRef>,
) -> Result<BuildOutcome> {
    let store = source.store.open()?;
    warn_init_env_is_public(&source.init_env);
    let progress = Arc::new(BuildProgress::new());
    let wasm = read_or_build_module(&source.path, source.choices.go_buildmode, &progress)?;
    let builder = builder(store, None)?;
    let request = BuildRequest {
        targets,
        snapshot: SnapshotOptions {
            init_timeout: source.init_timeout,
            max_memory: source.init_max_memory_mib << 20,
            env: source.init_env.clone(),
            ..SnapshotOptions::default()
        },
        tag: tag.clone(),
        keep_names: source.choices.keep_names,
    };
    let events = progress.clone();
    let outcome = builder
        .build(Bytes::from(wasm), &request, move |e| events.on_event(e))
        .await;
    match outcome {
        Ok(outcome) => {
            if let Some(tag) = tag {
                eprintln!("tagged {tag}");
            }
            Ok(outcome)
        }
        Err(e) => {
            progress.abandon();
            Err(e).context(format!("building {}", source.path.display()))
        }
    }
}

/// Init runs at build time, so what it reads is baked into the snapshot,
/// which anyone who can pull the build can read. Said before every build
/// that passes `--init-env`, naming the variables (never their values).
fn warn_init_env_is_public(init_env: &[(String, String)]) {
    if init_env.is_empty() {
        return;
    }
    let names: Vec<_> = init_env.iter().map(|(k, _)| k.as_str()).collect();
    eprintln!(
        "warning: --init-env values are baked into the snapshot, readable by anyone who can \
         pull this build ({}); give secrets to the runner instead \
         (thaw-runner --function-env-file NAME:FILE)",
        names.join(", ")
    );
}

/// The builder over `store`, with the compile cache under the cache home.
/// With a `compile_timeout`, each compile runs in a child process of this
/// binary (`thaw compile-worker`), killed at the timeout.
fn builder(store: ArtifactStore, compile_timeout: Option<Duration>) -> Result<Builder> {
    let cache_home = thaw_core::paths::cache_home().context("no cache directory: set THAW_HOME")?;
    let cache = IncrementalCache::in_directory(cache_home.join("cranelift"))
        .context("opening the compile cache")?;
    let mut compiler = Compiler::with_cache(cache);
    if let Some(deadline) = compile_timeout {
        // The running binary itself, even if its file was replaced by an
        // upgrade since it started.
        let program = match std::path::Path::new("/proc/self/exe") {
            path if path.exists() => path.to_path_buf(),
            _ => std::env::current_exe().context("finding this program to run compiles")?,
        };
        compiler = compiler.isolated(Worker::new(
            program,
            vec!["compile-worker".into()],
            deadline,
        ));
    }
    Ok(Builder::new(store, compiler)?)
}

async fn up(args: UpArgs) -> Result<()> {
    let name = match args.name.clone() {
        Some(name) => name,
        None => default_name(&args.source.path)?,
    };
    let outcome = build(
        &args.source,
        vec![TargetProfile::host()?],
        Some(name.clone()),
    )
    .await?;
    eprintln!("built {name} ({})", outcome.manifest_digest);
    let store = args.source.store.open()?;
    serve_functions(
        Source::Store(store),
        &[Reference::Tag(name)],
        &args.serve,
        true,
    )
    .await
}

/// A function name from a path: `examples/hello` → `hello:latest`.
fn default_name(path: &Path) -> Result<TagRef> {
    let absolute = std::path::absolute(path)?;
    let stem = absolute
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    TagRef::new(cleaned.trim_matches('-'), thaw_core::DEFAULT_TAG).with_context(|| {
        format!(
            "cannot derive a function name from {}; pass --name",
            path.display()
        )
    })
}

async fn serve_functions(
    source: Source,
    references: &[Reference],
    options: &ServeOptions,
    announce_first_request: bool,
) -> Result<()> {
    let mut app = options.load_app(source, references, false).await?;
    if announce_first_request {
        let announced = AtomicBool::new(false);
        app = app.on_response(move |record| {
            if !announced.swap(true, Ordering::Relaxed) {
                let instantiate = record
                    .usage
                    .and_then(|u| u.instantiate)
                    .map(|d| format!(", instantiate {} µs", d.as_micros()))
                    .unwrap_or_default();
                eprintln!(
                    "first request: {} in {} µs inside the runner{instantiate}",
                    record.status,
                    record.total.as_micros()
                );
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let address = listener.local_addr()?;
    let names = app.names();
    match names.as_slice() {
        [only] => eprintln!("serving {only} on http://{address}/  (Ctrl-C to stop)"),
        _ => {
            for name in &names {
                eprintln!("serving {name} on http://{address}/{name}/");
            }
        }
    }
    thaw_runner::serve(listener, app, options.connections.limits()).await?;
    Ok(())
}

/// `thaw exec`: build (or reuse) the module as a command and run it here.
async fn exec(module: &Path, args: Vec<String>) -> Result<u8> {
    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let store = StoreArgs {
        store: std::env::var("THAW_STORE").ok(),
    }
    .open()?;
    let outcome = builder(store.clone(), None)?
        .build(
            Bytes::from(wasm),
            &BuildRequest::new(vec![TargetProfile::host()?]),
            |_| {},
        )
        .await
        .with_context(|| format!("compiling {}", module.display()))?;
    if outcome.manifest.kind != ModuleKind::Command {
        bail!(
            "{} is a reactor; `thaw exec` runs commands (serve reactors with `thaw run`)",
            module.display()
        );
    }
    let cache = thaw_core::paths::artifact_cache().context("no cache directory: set THAW_HOME")?;
    let mut config = RunnerConfig::new(cache);
    config.max_instances = 1;
    // A local program, not an edge request: the whole 32-bit address space.
    config.max_memory = 4 << 30;
    let runner = Runner::new(config)?;
    let function = runner
        .load(&store, &Reference::Digest(outcome.manifest_digest))
        .await?;
    let mut argv = vec![module.display().to_string()];
    argv.extend(args);
    let mut env = Vec::new();
    for key in ["PWD", "PATH"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_string(), value));
        }
    }
    let code = function.exec(&argv, &env).await?;
    Ok(u8::try_from(code).unwrap_or(1))
}

fn read_or_build_module(path: &Path, mode: BuildMode, progress: &BuildProgress) -> Result<Vec<u8>> {
    if path.is_dir() {
        let go = Go::find()?;
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
                        manifest.profile_names()
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
    write_atomic(output, &bytes, Durability::Synced)
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
            a.profile, a.blob.digest, a.blob.size, a.blob.compressed_size
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

/// `thaw new`: a function directory whose build needs no edits.
fn new_function(dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable last component", dir.display()))?;
    TagRef::new(name, thaw_core::DEFAULT_TAG)
        .with_context(|| format!("{name:?} cannot name a function"))?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in thaw_gobuild::sdk::new_function_files(name) {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created {0}: serve it here with `thaw up {0}`, build it with `thaw build {0} --name {name}`",
        dir.display()
    );
    Ok(())
}
