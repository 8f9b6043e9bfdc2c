//! Command-line flags shared by `thaw-runner` and `thaw run`/`thaw up`
//! (the `cli` feature), so every tunable has one flag, one default and one
//! env override. They only translate to the library's configuration; the
//! library never parses arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thaw_core::Reference;
use thaw_core::settings::{parse_duration, parse_env_file, parse_key_value};
use thaw_core::signing::PublicKey;
use thaw_engine::outbound::{
    DEFAULT_MAX_REQUESTS, DEFAULT_MAX_RESPONSE_BYTES, OriginPattern, OutboundLimits,
};

use thaw_http::ConnectionArgs;

use crate::catalog::Capacity;
use crate::http::{App, DEFAULT_MAX_BODY, FunctionEnv, LoadAppError, RequestLimits, Serving};
use crate::outbound::OutboundRules;
use crate::{
    Allocator, DEFAULT_KEEP_RESIDENT, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_STDERR, DEFAULT_MAX_STDOUT, RequestAbi, Runner, RunnerConfig, SlotReset, Source,
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
    /// Time a request's whole body has to arrive; slower gets 408. No
    /// instance slot is held meanwhile.
    #[arg(long, env = "THAW_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Connection limits: header timeout and connection cap.
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Largest response a function may write, in bytes; larger gets 502.
    #[arg(long, env = "THAW_MAX_RESPONSE_BYTES", default_value_t = DEFAULT_MAX_STDOUT)]
    pub max_response_bytes: usize,
    /// MiB of each instance slot's memory kept mapped and reset in place
    /// between requests (faster than unmapping; costs resident memory).
    /// With the dirty-page reset, the most written memory reset in place.
    #[arg(long, env = "THAW_KEEP_RESIDENT_MIB", default_value_t = DEFAULT_KEEP_RESIDENT >> 20)]
    pub keep_resident_mib: u64,
    /// How slots return to the snapshot between requests: `dirty-pages`
    /// copies back only what a request wrote (Linux 6.7+, swap off),
    /// `whole-region` the whole kept region, `auto` the first available.
    #[arg(long, env = "THAW_SLOT_RESET", value_enum, default_value_t = SlotReset::Auto)]
    pub slot_reset: SlotReset,
    /// How requests reach SDK functions: `compact` (length-prefixed fields,
    /// for functions whose SDK has them; text for older ones) or `text`
    /// (HTTP/1.1 for every function; kept to measure the difference).
    #[arg(long, env = "THAW_REQUEST_ABI", value_enum, default_value_t = RequestAbi::Compact)]
    pub request_abi: RequestAbi,
    /// How instances get memory: `pooling` (preallocated slots with
    /// copy-on-write images) or `on-demand` (slower; for comparison).
    #[arg(long, env = "THAW_INSTANCE_ALLOCATOR", value_enum, default_value_t = Allocator::Pooling)]
    pub instance_allocator: Allocator,
    /// An environment variable every function sees, `KEY=VALUE`; repeatable.
    #[arg(long = "env", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// A file of `KEY=VALUE` lines every function sees (`#` comments).
    #[arg(long = "env-file", env = "THAW_ENV_FILE")]
    pub env_file: Option<PathBuf>,
    /// A variable only one function sees, `NAME:KEY=VALUE`; repeatable.
    /// This is where runtime secrets go: unlike `--init-env`, nothing here
    /// enters a snapshot.
    #[arg(long = "function-env", value_parser = parse_function_env)]
    pub function_env: Vec<(String, (String, String))>,
    /// A file of `KEY=VALUE` lines only one function sees, `NAME:FILE`;
    /// repeatable.
    #[arg(long = "function-env-file", value_parser = parse_function_env_file)]
    pub function_env_files: Vec<(String, PathBuf)>,
    /// Directory of verified artifacts. Default: `<cache home>/artifacts`.
    #[arg(long, env = "THAW_ARTIFACT_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Hash every cached artifact at every load instead of trusting one
    /// verified before whose file identity is unchanged.
    #[arg(long, env = "THAW_VERIFY_ON_LOAD")]
    pub verify_on_load: bool,
    /// Functions loaded on demand that stay loaded; beyond it, the least
    /// recently used idle one is unloaded.
    #[arg(long, env = "THAW_MAX_LOADED", default_value_t = DEFAULT_MAX_LOADED)]
    pub max_loaded: usize,
    /// An origin every function may send HTTP requests to,
    /// `scheme://host[:port]` (`https://*.example.com` allows its
    /// subdomains); repeatable. Everything else is denied.
    #[arg(
        long = "allow-outbound",
        env = "THAW_ALLOW_OUTBOUND",
        value_delimiter = ','
    )]
    pub allow_outbound: Vec<OriginPattern>,
    /// An origin only one function may send HTTP requests to,
    /// `NAME:ORIGIN`; repeatable.
    #[arg(long = "function-allow-outbound", value_parser = parse_function_origin)]
    pub function_allow_outbound: Vec<(String, OriginPattern)>,
    /// Outbound HTTP requests one request may make (redirects count).
    #[arg(long, env = "THAW_OUTBOUND_MAX_REQUESTS", default_value_t = DEFAULT_MAX_REQUESTS)]
    pub outbound_max_requests: u32,
    /// Time one outbound request may take, e.g. `5s`; never beyond the
    /// request's own deadline.
    #[arg(long, env = "THAW_OUTBOUND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub outbound_timeout: Duration,
    /// Largest outbound response body accepted, in bytes.
    #[arg(long, env = "THAW_OUTBOUND_MAX_RESPONSE_BYTES", default_value_t = DEFAULT_MAX_RESPONSE_BYTES)]
    pub outbound_max_response_bytes: usize,
    /// Instances one function may run at once. Default: on an edge host
    /// (no function named), half of `--max-instances`, so one hot function
    /// leaves the rest to others; else all of them.
    #[arg(long, env = "THAW_FUNCTION_INSTANCES")]
    pub function_instances: Option<usize>,
}

/// Default `--max-loaded`.
pub const DEFAULT_MAX_LOADED: usize = 256;

impl ServeOptions {
    /// The runner configuration these options describe.
    pub fn runner_config(&self) -> Result<RunnerConfig, LoadAppError> {
        let cache_dir = match &self.cache_dir {
            Some(dir) => dir.clone(),
            None => thaw_core::paths::artifact_cache().ok_or(LoadAppError::NoCacheDir)?,
        };
        Ok(RunnerConfig {
            cache_dir,
            max_instances: self.max_instances,
            max_memory: self.max_memory_mib << 20,
            request_timeout: self.request_timeout,
            max_stdout: self.max_response_bytes,
            max_stderr: DEFAULT_MAX_STDERR,
            keep_resident: self.keep_resident_mib << 20,
            slot_reset: self.slot_reset,
            allocator: self.instance_allocator,
            verify_on_load: self.verify_on_load,
            request_abi: self.request_abi,
        })
    }

    /// Starts a runner with these options and loads every reference from
    /// `source` into an [`App`] ready to serve, following their tags; with
    /// `on_demand`, every other name `source` resolves is served too.
    pub async fn load_app(
        &self,
        source: Source,
        references: &[Reference],
        on_demand: bool,
    ) -> Result<App, LoadAppError> {
        let runner = Runner::new(self.runner_config()?).map_err(|source| LoadAppError::Load {
            reference: "*".into(),
            source,
        })?;
        let limits = RequestLimits {
            max_body: self.max_body_bytes,
            body_timeout: self.body_timeout,
        };
        let serving = Serving {
            on_demand,
            capacity: Capacity {
                max_loaded: self.max_loaded.max(1),
                // An edge host shares its slots among functions it does
                // not know in advance; a runner of named functions does not.
                function_instances: self
                    .function_instances
                    .unwrap_or(if on_demand {
                        self.max_instances as usize / 2
                    } else {
                        self.max_instances as usize
                    })
                    .max(1),
            },
        };
        let env = self.function_env()?;
        let app = App::load(Arc::new(runner), source, references, env, limits, serving).await?;
        Ok(app.allow_outbound(&self.outbound_rules())?)
    }

    /// The outbound HTTP these options allow.
    pub fn outbound_rules(&self) -> OutboundRules {
        let mut rules = OutboundRules {
            shared: self.allow_outbound.clone(),
            limits: OutboundLimits {
                max_requests: self.outbound_max_requests,
                timeout: self.outbound_timeout,
                max_response_bytes: self.outbound_max_response_bytes,
            },
            ..OutboundRules::default()
        };
        for (name, origin) in &self.function_allow_outbound {
            rules
                .by_function
                .entry(name.clone())
                .or_default()
                .push(origin.clone());
        }
        rules
    }

    /// The environment these options give functions, files read.
    pub fn function_env(&self) -> Result<FunctionEnv, LoadAppError> {
        // Files first, then flags: a flag overrides a file's value.
        let mut env = FunctionEnv::default();
        if let Some(file) = &self.env_file {
            env.shared.extend(read_env_file(file)?);
        }
        env.shared.extend(self.env.iter().cloned());
        for (name, file) in &self.function_env_files {
            let pairs = read_env_file(file)?;
            env.by_function
                .entry(name.clone())
                .or_default()
                .extend(pairs);
        }
        for (name, pair) in &self.function_env {
            env.by_function
                .entry(name.clone())
                .or_default()
                .push(pair.clone());
        }
        Ok(env)
    }
}

fn read_env_file(path: &std::path::Path) -> Result<Vec<(String, String)>, LoadAppError> {
    let invalid = |reason: String| LoadAppError::EnvFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    parse_env_file(&text).map_err(invalid)
}

/// Parses `NAME:KEY=VALUE`.
fn parse_function_env(text: &str) -> Result<(String, (String, String)), String> {
    let (name, pair) = function_and(text, "NAME:KEY=VALUE")?;
    Ok((name, parse_key_value(pair)?))
}

/// Parses `NAME:ORIGIN`.
fn parse_function_origin(text: &str) -> Result<(String, OriginPattern), String> {
    let (name, origin) = function_and(text, "NAME:ORIGIN")?;
    Ok((name, origin.parse().map_err(|e| format!("{e}"))?))
}

/// Parses `NAME:FILE`.
fn parse_function_env_file(text: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = function_and(text, "NAME:FILE")?;
    Ok((name, PathBuf::from(file)))
}

fn function_and<'a>(text: &'a str, shape: &str) -> Result<(String, &'a str), String> {
    match text.split_once(':') {
        Some((name, rest)) if !name.is_empty() && !rest.is_empty() => Ok((name.to_string(), rest)),
        _ => Err(format!("{text:?} is not {shape}")),
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
    /// Bearer token for the registry (registries require one for reads
    /// unless they run with `--public-reads`); a `pull:*` scope suffices.
    #[arg(long, env = "THAW_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,
    /// Refuse a tag whose signed release was made longer ago than this
    /// (`30d`, `12h`): bounds how long a registry frozen by an attacker can
    /// keep serving an old release. Default: no limit.
    #[arg(long, env = "THAW_MAX_RELEASE_AGE", value_parser = thaw_core::settings::parse_duration)]
    pub max_release_age: Option<std::time::Duration>,
}

impl SourceOptions {
    /// Opens the store or registry. `cache_dir` is the artifact cache; a
    /// registry's verified manifests are kept beside it.
    pub fn open(&self, cache_dir: &std::path::Path) -> Result<Source, LoadAppError> {
        match &self.registry {
            None => Ok(Source::store(self.store.as_deref())?),
            Some(url) => Ok(Source::registry(
                url,
                self.trust_keys.clone(),
                self.registry_token.clone(),
                cache_dir,
                self.max_release_age,
            )?),
        }
    }
}
