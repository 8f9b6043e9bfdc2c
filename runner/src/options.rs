//! Command-line options shared by `thaw-runner` and `thaw run`/`thaw up`,
//! so every tunable has one definition, one default and one env override.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thaw_artifact::signing::{PublicKey, TrustedKeys};
use thaw_artifact::{ArtifactStore, BlobRef, Digest, Manifest, Reference};
use thaw_client::RegistryClient;

use crate::http::{App, DEFAULT_MAX_BODY, DuplicateName};
use crate::{
    Allocator, ArtifactSource, DEFAULT_KEEP_RESIDENT, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_STDERR, DEFAULT_MAX_STDOUT, RunError, Runner, RunnerConfig, function_name,
};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Serving options.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    #[arg(long, env = "THAW_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Instances that may run at once; more concurrent requests get 503.
    #[arg(long, env = "THAW_MAX_INSTANCES", default_value_t = DEFAULT_MAX_INSTANCES)]
    pub max_instances: u32,
    /// Linear-memory cap per instance, in MiB.
    #[arg(long, env = "THAW_MAX_MEMORY_MIB", default_value_t = DEFAULT_MAX_MEMORY >> 20)]
    pub max_memory_mib: u64,
    /// Wall-clock deadline per request, e.g. `10s`, `250ms`.
    #[arg(long, env = "THAW_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes; larger gets 413.
    #[arg(long, env = "THAW_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Largest response a function may write, in bytes; larger gets 502.
    #[arg(long, env = "THAW_MAX_RESPONSE_BYTES", default_value_t = DEFAULT_MAX_STDOUT)]
    pub max_response_bytes: usize,
    /// MiB of each instance slot's memory kept mapped and reset in place
    /// between requests (faster than unmapping; costs resident memory).
    #[arg(long, env = "THAW_KEEP_RESIDENT_MIB", default_value_t = DEFAULT_KEEP_RESIDENT >> 20)]
    pub keep_resident_mib: u64,
    /// How instances get memory: `pooling` (preallocated slots with
    /// copy-on-write images) or `on-demand` (slower; for comparison).
    #[arg(long, env = "THAW_INSTANCE_ALLOCATOR", value_enum, default_value_t = Allocator::Pooling)]
    pub instance_allocator: Allocator,
    /// An environment variable every function sees, `KEY=VALUE`; repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Directory of verified artifacts. Default: `<cache home>/artifacts`.
    #[arg(long, env = "THAW_ARTIFACT_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

impl ServeOptions {
    /// The runner configuration these options describe.
    pub fn runner_config(&self) -> Result<RunnerConfig, String> {
        let cache_dir = match &self.cache_dir {
            Some(dir) => dir.clone(),
            None => thaw_artifact::paths::artifact_cache()
                .ok_or("no cache directory: set THAW_HOME or pass --cache-dir")?,
        };
        Ok(RunnerConfig {
            cache_dir,
            max_instances: self.max_instances,
            max_memory: self.max_memory_mib << 20,
            request_timeout: self.request_timeout,
            max_stdout: self.max_response_bytes,
            max_stderr: DEFAULT_MAX_STDERR,
            keep_resident: self.keep_resident_mib << 20,
            allocator: self.instance_allocator,
        })
    }
}

/// Where functions come from: a trusted store, or a registry.
#[derive(clap::Args, Clone, Debug)]
pub struct SourceOptions {
    /// The trusted store: a directory, `file:///path`, `s3://bucket` or
    /// `memory://`. Default: `$THAW_HOME/store`, else
    /// `~/.local/share/thaw/store`.
    #[arg(long, env = "THAW_STORE", conflicts_with = "registry")]
    pub store: Option<String>,
    /// Pull functions from this registry (`http://host:port`) on first use
    /// instead of reading a store. Needs `--trust-key`.
    #[arg(long, env = "THAW_REGISTRY")]
    pub registry: Option<String>,
    /// A registry public key whose signatures are trusted
    /// (`ed25519:<hex>`, printed by `thaw keygen`); repeatable.
    #[arg(long = "trust-key", env = "THAW_TRUST_KEYS", value_delimiter = ',')]
    pub trust_keys: Vec<PublicKey>,
    /// Bearer token for a registry that protects pulls.
    #[arg(long, env = "THAW_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,
}

/// An opened [`SourceOptions`].
#[derive(Clone, Debug)]
pub enum Source {
    /// A store read directly.
    Store(ArtifactStore),
    /// A registry; verified manifests are cached for outages.
    Registry(RegistryClient),
}

impl SourceOptions {
    /// Opens the store or registry. `cache_dir` is the artifact cache; a
    /// registry's verified manifests are kept beside it.
    pub fn open(&self, cache_dir: &std::path::Path) -> Result<Source, String> {
        let Some(url) = &self.registry else {
            return ArtifactStore::open_or_default(self.store.as_deref())
                .map(Source::Store)
                .map_err(|e| e.to_string());
        };
        if self.trust_keys.is_empty() {
            return Err("--registry needs at least one --trust-key".into());
        }
        let manifests = cache_dir
            .join("registries")
            .join(Digest::of(url.as_bytes()).short());
        let client = RegistryClient::new(url, TrustedKeys::new(self.trust_keys.clone()))
            .map_err(|e| e.to_string())?
            .with_token(self.registry_token.clone())
            .with_cache_dir(manifests);
        Ok(Source::Registry(client))
    }
}

impl ArtifactSource for Source {
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, Manifest), RunError> {
        match self {
            Source::Store(store) => ArtifactSource::resolve(store, reference).await,
            Source::Registry(client) => ArtifactSource::resolve(client, reference).await,
        }
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<bytes::Bytes, RunError> {
        match self {
            Source::Store(store) => ArtifactSource::fetch_blob(store, blob).await,
            Source::Registry(client) => ArtifactSource::fetch_blob(client, blob).await,
        }
    }
}

/// Why [`ServeOptions::load_app`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadAppError {
    /// The options do not describe a usable runner.
    #[error("{0}")]
    Options(String),
    /// The runner could not start or a function could not load.
    #[error("loading {reference}: {source}")]
    Load {
        /// The function (`*` for the runner itself).
        reference: String,
        /// Why.
        source: RunError,
    },
    /// Two references share a name.
    #[error(transparent)]
    Duplicate(#[from] DuplicateName),
}

impl ServeOptions {
    /// Starts a runner with these options and loads every reference from
    /// `source` into an [`App`] ready to serve.
    pub async fn load_app(
        &self,
        source: &impl ArtifactSource,
        references: &[Reference],
    ) -> Result<App, LoadAppError> {
        let runner = Runner::new(self.runner_config().map_err(LoadAppError::Options)?).map_err(
            |source| LoadAppError::Load {
                reference: "*".into(),
                source,
            },
        )?;
        let mut functions = Vec::new();
        for reference in references {
            let function =
                runner
                    .load(source, reference)
                    .await
                    .map_err(|source| LoadAppError::Load {
                        reference: reference.to_string(),
                        source,
                    })?;
            functions.push((function_name(reference), function));
        }
        Ok(App::new(
            functions,
            self.env.clone(),
            self.max_body_bytes,
            self.max_instances as usize,
        )?)
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Parses `500ms`, `30s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
        _ => Err(format!("{s:?}: the unit must be ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_env() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
