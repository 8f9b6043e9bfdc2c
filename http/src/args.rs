//! The connection-limit flags both servers take.

use std::time::Duration;

use thaw_core::settings::parse_duration;

use crate::{ConnectionLimits, DEFAULT_MAX_CONNECTIONS};

/// `--header-timeout` and `--max-connections`.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectionArgs {
    /// Time a client has to send a request's head once its connection is
    /// idle; half-sent heads and idle keep-alive connections are closed
    /// after it, e.g. `10s`.
    #[arg(long, env = "THAW_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Client connections held at once; more wait in the listen backlog.
    #[arg(long, env = "THAW_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "THAW_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ConnectionArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: self.header_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
        }
    }
}
