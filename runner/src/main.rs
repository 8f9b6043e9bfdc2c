//! `thaw-runner`: the minimal edge binary. Serves stored, precompiled
//! functions over HTTP, one fresh sandboxed instance per request.

use anyhow::{Context, Result};
use clap::Parser;
use thaw_core::Reference;
use thaw_runner::options::{ServeOptions, SourceOptions};
use thaw_runner::serve;

#[derive(Parser)]
#[command(
    name = "thaw-runner",
    version,
    about = "Serve precompiled thaw functions"
)]
struct Args {
    /// Functions to load at start: `name:tag` or manifest digests. One
    /// function is served at `/`; several by path prefix `/<name>/` or
    /// `Host: <name>.…`. With none, every function the registry or store
    /// resolves is served, each loaded on its first request.
    functions: Vec<Reference>,
    #[command(flatten)]
    source: SourceOptions,
    #[command(flatten)]
    serve: ServeOptions,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Escape codes only for a terminal, so log files stay parseable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = args.serve.runner_config()?;
    let source = args
        .source
        .open(&config.cache_dir)
        .context("opening the function source")?;
    let on_demand = args.functions.is_empty();
    let app = args
        .serve
        .load_app(source, &args.functions, on_demand)
        .await?;
    let listener = tokio::net::TcpListener::bind(args.serve.listen)
        .await
        .with_context(|| format!("listening on {}", args.serve.listen))?;
    let names = app.names();
    tracing::info!(address = %listener.local_addr()?, functions = ?names, on_demand, "serving");
    serve(listener, app, args.serve.connections.limits()).await?;
    Ok(())
}
