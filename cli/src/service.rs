//! The registry side of the CLI: `thaw keygen`, `thaw registry`,
//! `thaw push` and `thaw pull`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use thaw_builder::thaw_snapshotter::{DEFAULT_INIT_MAX_MEMORY, SnapshotOptions};
use thaw_client::{PushRequest, RegistryClient};
use thaw_core::api::{BuildState, BuildStatus};
use thaw_core::settings::{parse_duration, parse_key_value};
use thaw_core::signing::{PublicKey, RegistryKey, TrustedKeys};
use thaw_core::{Reference, TagRef};
use thaw_http::ConnectionArgs;
use thaw_registry::{
    DEFAULT_MAX_MODULE_BYTES, DEFAULT_MAX_UPLOADS, DEFAULT_QUEUE_CAPACITY, DEFAULT_TENANT_QUOTA,
    DEFAULT_WORKERS, Service, ServiceConfig, Tokens,
};
use thaw_store::ArtifactStore;

use crate::progress::{BuildProgress, format_duration};
use crate::{StoreArgs, builder, read_or_build_module};

/// `thaw keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (refuses to overwrite).
    #[arg(long)]
    out: PathBuf,
}

pub fn keygen(args: &KeygenArgs) -> Result<()> {
    let key = RegistryKey::generate();
    key.write(&args.out)?;
    eprintln!(
        "wrote the signing key to {} (keep it secret)",
        args.out.display()
    );
    println!("{}", key.public());
    Ok(())
}

/// `thaw registry`.
#[derive(Args)]
pub struct RegistryArgs {
    /// Address to listen on.
    #[arg(long, env = "THAW_REGISTRY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    /// The ed25519 key manifests are signed with (from `thaw keygen`).
    #[arg(long, env = "THAW_SIGNING_KEY")]
    signing_key: PathBuf,
    /// File of bearer tokens, one per line: `TOKEN SCOPE...`, where a scope
    /// is a name, a prefix ending in `*`, or either after `pull:` for
    /// read-only access (see docs/deployment.md).
    #[arg(long, env = "THAW_TOKENS_FILE")]
    tokens: PathBuf,
    /// Let anyone read tags, manifests and blobs without a token. Off by
    /// default: modules and snapshots (with their init environment) of
    /// every tenant would be public.
    #[arg(long, env = "THAW_PUBLIC_READS")]
    public_reads: bool,
    /// Once, after upgrading from a thaw whose tags were bare digests: sign
    /// those tags as releases at start (only tags with no release history
    /// that name manifests this registry signed).
    #[arg(long)]
    sign_legacy_tags: bool,
    /// Largest module accepted, in MiB.
    #[arg(long, env = "THAW_MAX_MODULE_MIB", default_value_t = DEFAULT_MAX_MODULE_BYTES >> 20)]
    max_module_mib: usize,
    /// Time a whole upload has to arrive; slower gets 408.
    #[arg(long, env = "THAW_UPLOAD_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    upload_timeout: Duration,
    /// Uploads read at once; more get 503 with Retry-After before their
    /// bodies are buffered.
    #[arg(long, env = "THAW_MAX_UPLOADS", default_value_t = DEFAULT_MAX_UPLOADS)]
    max_uploads: usize,
    #[command(flatten)]
    connections: ConnectionArgs,
    /// Builds that may wait for a worker; more get 503 with Retry-After.
    #[arg(long, env = "THAW_BUILD_QUEUE", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    queue: usize,
    /// Builds this process runs at once.
    #[arg(long, env = "THAW_BUILD_WORKERS", default_value_t = DEFAULT_WORKERS)]
    workers: usize,
    /// How long a build lease lasts unrenewed; a build whose process died
    /// is reported failed after this.
    #[arg(long, env = "THAW_BUILD_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// MiB each token may store through its builds; a token at its quota
    /// gets 507. 0: no quota.
    #[arg(long, env = "THAW_TENANT_QUOTA_MIB", default_value_t = DEFAULT_TENANT_QUOTA >> 20)]
    tenant_quota_mib: u64,
    /// Wall-clock limit for compiling one module for all its targets; each
    /// compile runs in a child process that is killed at this limit.
    #[arg(long, env = "THAW_COMPILE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    compile_timeout: Duration,
    /// Wall-clock limit for each module's init.
    #[arg(long, env = "THAW_INIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    init_timeout: Duration,
    /// Linear-memory limit for each module's init, in MiB.
    #[arg(long, env = "THAW_INIT_MAX_MEMORY_MIB", default_value_t = DEFAULT_INIT_MAX_MEMORY >> 20)]
    init_max_memory_mib: u64,
}

pub async fn registry(args: RegistryArgs) -> Result<()> {
    let store = args.store.open()?;
    let key = RegistryKey::read(&args.signing_key)?;
    let tokens = Tokens::read(&args.tokens)
        .with_context(|| format!("reading tokens from {}", args.tokens.display()))?;
    let mut config = ServiceConfig::new(tokens);
    config.public_reads = args.public_reads;
    config.max_module_bytes = args.max_module_mib << 20;
    config.body_timeout = args.upload_timeout;
    config.max_uploads = args.max_uploads;
    config.queue_capacity = args.queue;
    config.workers = args.workers;
    config.lease_ttl = args.lease_ttl;
    config.tenant_quota = (args.tenant_quota_mib > 0).then_some(args.tenant_quota_mib << 20);
    config.snapshot = SnapshotOptions {
        init_timeout: args.init_timeout,
        max_memory: args.init_max_memory_mib << 20,
        ..SnapshotOptions::default()
    };
    let location = store.location().to_string();
    let service = Service::start(builder(store, Some(args.compile_timeout))?, key, config)?;
    if args.sign_legacy_tags {
        let signed = service
            .sign_legacy_tags()
            .await
            .context("signing the tags an older thaw wrote")?;
        eprintln!("signed {signed} tag(s) written by an older thaw");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = %location, "registry listening");
    eprintln!("registry on http://{address}/ (store {location})");
    let limits = args.connections.limits();
    thaw_http::serve(
        listener,
        service.router(),
        limits,
        thaw_http::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Registry address and credentials, shared by `push` and `pull`.
#[derive(Args)]
pub struct RemoteArgs {
    /// The registry, `http://host:port`.
    #[arg(long, env = "THAW_REGISTRY")]
    registry: String,
    /// Bearer token (needed to push, and to pull unless the registry has
    /// public reads).
    #[arg(long, env = "THAW_REGISTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl RemoteArgs {
    fn client(&self, trusted: TrustedKeys) -> Result<RegistryClient> {
        Ok(RegistryClient::new(&self.registry, trusted)?.with_token(self.token.clone()))
    }
}

/// `thaw push`.
#[derive(Args)]
pub struct PushArgs {
    /// A Go package directory (built with GOOS=wasip1) or a `.wasm` file.
    path: PathBuf,
    /// Tag the build as `name:tag`.
    #[arg(long)]
    name: Option<TagRef>,
    /// A target profile; repeat for several. Default: the registry's
    /// (x86_64 and aarch64).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// An environment variable visible to init, `KEY=VALUE`; repeatable.
    #[arg(long = "init-env", value_parser = parse_key_value)]
    init_env: Vec<(String, String)>,
    #[command(flatten)]
    choices: crate::BuildChoices,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub async fn push(args: PushArgs) -> Result<()> {
    crate::warn_init_env_is_public(&args.init_env);
    let progress = Arc::new(BuildProgress::new());
    let wasm = read_or_build_module(&args.path, args.choices.go_buildmode, &progress)?;
    let client = args.remote.client(TrustedKeys::default())?;
    let request = PushRequest {
        reference: args.name.clone(),
        targets: args.targets.clone(),
        init_env: args.init_env.clone(),
        keep_names: args.choices.keep_names,
    };
    let started = Instant::now();
    let mut shown = StepDisplay::default();
    let pushed = client
        .push(Bytes::from(wasm), &request, |status| {
            shown.show(&progress, status)
        })
        .await;
    let status = match pushed {
        Ok(status) => status,
        Err(e) => {
            progress.abandon();
            return Err(e).context(format!("pushing {}", args.path.display()));
        }
    };
    if let BuildState::Succeeded {
        manifest,
        cache_hit,
    } = &status.state
    {
        let how = if *cache_hit { "cache hit" } else { "built" };
        eprintln!(
            "{how} in {}{}",
            format_duration(started.elapsed()),
            args.name
                .map(|n| format!(", tagged {n}"))
                .unwrap_or_default()
        );
        println!("{manifest}");
    }
    Ok(())
}

/// Turns successive build statuses into progress-bar starts and finishes.
#[derive(Default)]
struct StepDisplay {
    started: Vec<String>,
    finished: Vec<String>,
}

impl StepDisplay {
    fn show(&mut self, progress: &BuildProgress, status: &BuildStatus) {
        for step in &status.steps {
            if !self.started.contains(&step.step) {
                progress.start(&step.step);
                self.started.push(step.step.clone());
            }
            if let Some(millis) = step.millis
                && !self.finished.contains(&step.step)
            {
                progress.finish(&step.step, Duration::from_millis(millis));
                self.finished.push(step.step.clone());
            }
        }
        if matches!(status.state, BuildState::Failed { .. }) {
            progress.abandon();
        }
    }
}

/// `thaw pull`.
#[derive(Args)]
pub struct PullArgs {
    /// `name:tag` or a manifest digest.
    reference: Reference,
    #[command(flatten)]
    trust: TrustArgs,
    /// Refuse a release made longer ago than this (`30d`, `12h`).
    #[arg(long, env = "THAW_MAX_RELEASE_AGE", value_parser = parse_duration)]
    max_release_age: Option<Duration>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// The registry keys `thaw pull` and `thaw tag` trust.
#[derive(Args)]
pub struct TrustArgs {
    /// A registry public key to trust (`ed25519:<hex>`); repeatable.
    #[arg(
        long = "trust-key",
        env = "THAW_TRUST_KEYS",
        value_delimiter = ',',
        required = true
    )]
    trust_keys: Vec<PublicKey>,
}

/// The client `thaw pull` and `thaw tag` use: it remembers the highest
/// release seen per tag under the cache home, so a registry rolled back to
/// an older release is refused on the next pull.
fn verifying_client(
    remote: &RemoteArgs,
    trust: TrustArgs,
    max_release_age: Option<Duration>,
) -> Result<RegistryClient> {
    let mut client = remote
        .client(TrustedKeys::new(trust.trust_keys))?
        .with_max_release_age(max_release_age);
    if let Some(cache) = thaw_core::paths::cache_home() {
        client = client.with_cache_root(&cache);
    }
    Ok(client)
}

/// Pulls a build into the local store: the manifest (signature checked),
/// then every blob (each decoded and checked against the manifest before
/// it is written), then the tag. An interrupted pull leaves no tag or
/// manifest pointing at missing data.
pub async fn pull(args: PullArgs) -> Result<()> {
    let started = Instant::now();
    let client = verifying_client(&args.remote, args.trust, args.max_release_age)?;
    let store: ArtifactStore = args.store.open()?;
    let (digest, manifest) = client.resolve(&args.reference).await?;
    let mut bytes = 0;
    for blob in manifest.blobs() {
        if store.has_blob(&blob.digest).await? {
            continue;
        }
        let fetched = client
            .fetch_blob(blob)
            .await
            .with_context(|| format!("pulling blob {}", blob.digest))?;
        bytes += fetched.compressed.len();
        store.put_blob_compressed(blob, fetched.compressed).await?;
    }
    let stored = store.put_manifest(&manifest).await?;
    if stored != digest {
        bail!("the manifest stored locally as {stored}, not {digest}: thaw versions differ");
    }
    if let Reference::Tag(tag) = &args.reference {
        store.set_tag(tag, &digest).await?;
    }
    eprintln!(
        "pulled {} ({} blob bytes) in {}",
        args.reference,
        bytes,
        format_duration(started.elapsed())
    );
    println!("{digest}");
    Ok(())
}

/// `thaw tag`.
#[derive(Args)]
pub struct TagArgs {
    /// `name:tag`.
    tag: TagRef,
    /// Point the tag at this manifest digest (one the registry signed: a
    /// rollback or a promotion). Without it, list the tag's releases.
    manifest: Option<thaw_core::Digest>,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Moves a tag at the registry, or lists its history (newest first), each
/// release's signature checked.
pub async fn tag(args: TagArgs) -> Result<()> {
    let client = verifying_client(&args.remote, args.trust, None)?;
    match args.manifest {
        Some(manifest) => {
            let release = client.move_tag(&args.tag, &manifest).await?;
            eprintln!(
                "{} now points at {} (release {})",
                args.tag, release.manifest, release.sequence
            );
        }
        None => {
            for release in client.tag_history(&args.tag).await? {
                let by = release.by.as_deref().unwrap_or("-");
                println!(
                    "{:>6}  {}  {}  {by}",
                    release.sequence,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(release.issued_at)
                    ),
                    release.manifest
                );
            }
        }
    }
    Ok(())
}
