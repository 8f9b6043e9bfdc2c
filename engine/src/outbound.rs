//! Outbound HTTP: the one capability beyond WASI that a guest can be
//! granted, and only for the origins its operator allows.
//!
//! A guest sends a request through two imports in the [`MODULE`] module
//! (the wire format is in `docs/abi.md`). This module owns everything that
//! decides what a request may do: the origin allow-list, the per-request
//! count, the timeout inside the request's deadline, and the response size
//! cap. The host supplies the HTTP client as a [`Transport`], so the build
//! pipeline links none: at build time every request is refused.
//!
//! ```
//! use thaw_engine::outbound::{OriginPattern, OutboundPolicy};
//!
//! let policy = OutboundPolicy {
//!     allowed: vec!["https://*.example.com".parse().unwrap()],
//!     ..OutboundPolicy::default()
//! };
//! let origin = "https://api.example.com/v1".parse().unwrap();
//! assert!(policy.allows(&thaw_engine::outbound::Origin::of(&origin).unwrap()));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{Caller, Extern, Linker};

/// The import module of the outbound HTTP functions.
pub const MODULE: &str = "thaw_http";
/// `send(request_ptr, request_len, result_ptr) -> outcome`: sends the
/// HTTP/1.1 request in absolute form at `request_ptr`, and writes the
/// result's handle and length (two little-endian `u32`s) at `result_ptr`.
/// The result is the response as HTTP/1.1, or, for any outcome but
/// [`Outcome::Completed`], a UTF-8 message.
pub const SEND: &str = "send";
/// `take(handle, buf_ptr, buf_len) -> len`: copies the result `handle`
/// names into the guest's buffer, which must hold all of it, and forgets
/// it. Returns its length, or `u32::MAX` for an unknown handle or a short
/// buffer.
pub const TAKE: &str = "take";

/// Default [`OutboundLimits::max_requests`].
pub const DEFAULT_MAX_REQUESTS: u32 = 16;
/// Default [`OutboundLimits::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`OutboundLimits::max_response_bytes`]: 8 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Results an instance may leave untaken: the SDK takes each at once, so
/// only a guest that never takes them reaches this, and it traps rather
/// than pile them up in the host's memory.
const MAX_UNTAKEN_RESULTS: usize = 64;

/// How long before its deadline a request's outbound call gives up, so
/// that the guest still has time to answer its own client.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// What a guest's outbound request came to, as [`SEND`] returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Outcome {
    /// The origin answered; the result is its response.
    Completed = 0,
    /// The origin is not allowed for this function.
    Denied = 1,
    /// The request already made as many outbound requests as it may.
    Limited = 2,
    /// No answer within the outbound timeout or the request's deadline.
    TimedOut = 3,
    /// The answer was larger than the response cap.
    TooLarge = 4,
    /// The origin could not be reached, or broke off.
    Failed = 5,
    /// The guest's request could not be parsed.
    Malformed = 6,
    /// Outbound HTTP is not available here (init at build time, `thaw exec`).
    Unavailable = 7,
}

impl Outcome {
    /// Every outcome, in code order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Completed,
        Outcome::Denied,
        Outcome::Limited,
        Outcome::TimedOut,
        Outcome::TooLarge,
        Outcome::Failed,
        Outcome::Malformed,
        Outcome::Unavailable,
    ];

    /// A short name, for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Denied => "denied",
            Outcome::Limited => "limited",
            Outcome::TimedOut => "timed_out",
            Outcome::TooLarge => "too_large",
            Outcome::Failed => "failed",
            Outcome::Malformed => "malformed",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// A URL scheme outbound HTTP speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`
    Http,
    /// `https`
    Https,
}

impl Scheme {
    fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a request goes: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    /// Lowercase; an IPv6 address keeps its brackets.
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http` or `https` URL.
    pub fn of(uri: &http::Uri) -> Result<Self, String> {
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| format!("{uri} is not an absolute URL"))?;
        let scheme = Scheme::parse(scheme)
            .ok_or_else(|| format!("{uri}: only http and https URLs can be fetched"))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{uri} names no host"))?;
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(scheme.default_port()),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// An allowed origin, as an operator writes it: `scheme://host[:port]`,
/// where the host may start with `*.` to allow every subdomain (not the
/// domain itself). The port defaults to the scheme's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.suffix`: any host ending in `.suffix`.
    SubdomainsOf(String),
}

/// An `--allow-outbound` value that is not an origin.
#[derive(Debug, thiserror::Error)]
#[error(
    "{text:?} is not an origin like https://api.example.com[:port] or https://*.example.com: {reason}"
)]
pub struct InvalidOrigin {
    text: String,
    reason: &'static str,
}

impl FromStr for OriginPattern {
    type Err = InvalidOrigin;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidOrigin {
            text: text.to_string(),
            reason,
        };
        let (scheme, rest) = text.split_once("://").ok_or(invalid("no scheme"))?;
        let scheme = Scheme::parse(scheme).ok_or(invalid("the scheme must be http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(invalid("an origin has no path, query or user"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // A bare IPv6 address has colons of its own.
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse()
                    .map_err(|_| invalid("the port is not a number"))?,
            ),
            _ => (rest, scheme.default_port()),
        };
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostPattern::SubdomainsOf(suffix.to_string())
            }
            Some(_) => return Err(invalid("a wildcard needs a domain after `*.`")),
            None if host.is_empty() => return Err(invalid("no host")),
            None if host.contains('*') => {
                return Err(invalid("a wildcard may only be a leading `*.`"));
            }
            None => HostPattern::Exact(host),
        };
        Ok(Self { scheme, host, port })
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::SubdomainsOf(suffix) => format!("*.{suffix}"),
        };
        let origin = Origin {
            scheme: self.scheme,
            host,
            port: self.port,
        };
        origin.fmt(f)
    }
}

impl OriginPattern {
    /// Whether `origin` is one this pattern allows.
    pub fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && match &self.host {
                HostPattern::Exact(host) => *host == origin.host,
                HostPattern::SubdomainsOf(suffix) => origin
                    .host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            }
    }
}

/// What one request's outbound calls may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Outbound requests one request may make, redirects included.
    pub max_requests: u32,
    /// Time one outbound request may take, from sending to the last byte
    /// of the answer; never beyond the request's own deadline.
    pub timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            max_requests: DEFAULT_MAX_REQUESTS,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// Where a function may send requests, and within what. The default
/// allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// The origins allowed; empty denies everything.
    pub allowed: Vec<OriginPattern>,
    /// The limits.
    pub limits: OutboundLimits,
}

impl OutboundPolicy {
    /// Whether a request to `origin` is allowed.
    pub fn allows(&self, origin: &Origin) -> bool {
        self.allowed.iter().any(|pattern| pattern.matches(origin))
    }
}

/// Why a [`Transport`] brought no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No complete answer within the time given.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The body grew past the cap given.
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The origin could not be reached, or broke off.
    #[error("{0}")]
    Failed(String),
}

/// The HTTP client the host sends allowed requests with.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` (an absolute URL, no hop-by-hop headers) and reads
    /// the whole answer, within `timeout` and with a body of at most
    /// `max_body` bytes. Redirects are the guest's to follow: each hop is
    /// a request of its own, checked against the policy.
    fn send(
        &self,
        request: http::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, TransportError>> + Send>>;
}

/// How many of one instance's outbound requests came to each [`Outcome`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundTally([u32; Outcome::ALL.len()]);

impl OutboundTally {
    /// Requests that came to `outcome`.
    pub fn count(&self, outcome: Outcome) -> u32 {
        self.0[outcome as usize]
    }

    /// Every request, whatever its outcome.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    fn add(&mut self, outcome: Outcome) {
        self.0[outcome as usize] += 1;
    }
}

/// One instance's outbound HTTP: what it may reach, what it has sent, and
/// the results its guest has not taken yet.
pub struct OutboundSession {
    grant: Option<(Arc<dyn Transport>, Arc<OutboundPolicy>)>,
    deadline: Option<Instant>,
    sent: u32,
    results: HashMap<u32, Vec<u8>>,
    next_handle: u32,
    tally: OutboundTally,
}

impl OutboundSession {
    /// A session that refuses every request: build-time init, whose
    /// snapshot must not depend on the network, and programs run locally
    /// (`thaw exec`).
    pub fn unavailable() -> Self {
        Self {
            grant: None,
            deadline: None,
            sent: 0,
            results: HashMap::new(),
            next_handle: 0,
            tally: OutboundTally::default(),
        }
    }

    /// A session that sends what `policy` allows through `transport`, each
    /// request ending before `deadline`.
    pub fn new(
        transport: Arc<dyn Transport>,
        policy: Arc<OutboundPolicy>,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            grant: Some((transport, policy)),
            deadline,
            ..Self::unavailable()
        }
    }

    /// What the instance's requests came to so far.
    pub fn tally(&self) -> OutboundTally {
        self.tally
    }

    async fn send(&mut self, raw: &[u8]) -> (Outcome, Vec<u8>) {
        let (outcome, result) = self.try_send(raw).await;
        self.tally.add(outcome);
        match &result {
            // Once per outcome and instance: a guest retrying in a loop
            // must not flood the host's log.
            Err(message) if self.tally.count(outcome) == 1 => {
                tracing::info!(outcome = outcome.label(), %message, "outbound request")
            }
            _ => tracing::debug!(outcome = outcome.label(), "outbound request"),
        }
        (outcome, result.unwrap_or_else(String::into_bytes))
    }

    async fn try_send(&mut self, raw: &[u8]) -> (Outcome, Result<Vec<u8>, String>) {
        let Some((transport, policy)) = &self.grant else {
            let message = "outbound HTTP is not available here: init runs at build time, \
                           offline, so make requests in handlers (and `thaw exec` has none)";
            return (Outcome::Unavailable, Err(message.into()));
        };
        let request = match parse_request(raw) {
            Ok(request) => request,
            Err(reason) => return (Outcome::Malformed, Err(reason)),
        };
        let origin = match Origin::of(request.uri()) {
            Ok(origin) => origin,
            Err(reason) => return (Outcome::Denied, Err(reason)),
        };
        if !policy.allows(&origin) {
            let message = format!(
                "outbound HTTP to {origin} is not allowed for this function \
                 (the host allows an origin with --allow-outbound {origin})"
            );
            return (Outcome::Denied, Err(message));
        }
        let limits = policy.limits;
        if self.sent >= limits.max_requests {
            let message = format!(
                "outbound HTTP to {origin} refused: this request already made {} outbound \
                 requests, its limit",
                limits.max_requests
            );
            return (Outcome::Limited, Err(message));
        }
        self.sent += 1;
        let timeout = match self.deadline {
            Some(deadline) => limits.timeout.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(DEADLINE_MARGIN),
            ),
            None => limits.timeout,
        };
        let head_only = request.method() == http::Method::HEAD;
        let started = Instant::now();
        let answer = transport
            .send(request, timeout, limits.max_response_bytes)
            .await;
        let elapsed = started.elapsed();
        match answer {
            Ok(response) => {
                tracing::debug!(%origin, status = response.status().as_u16(), ?elapsed, "outbound response");
                (Outcome::Completed, Ok(write_response(response, head_only)))
            }
            Err(e) => {
                let outcome = match e {
                    TransportError::TimedOut(_) => Outcome::TimedOut,
                    TransportError::TooLarge(_) => Outcome::TooLarge,
                    TransportError::Failed(_) => Outcome::Failed,
                };
                (outcome, Err(format!("outbound HTTP to {origin}: {e}")))
            }
        }
    }

    fn keep(&mut self, result: Vec<u8>) -> u32 {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        self.results.insert(handle, result);
        handle
    }
}

/// Headers that describe one hop, not the message, and `Host`, which the
/// URL decides.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// Parses the request a guest wrote: an absolute-form HTTP/1.1 request
/// (Go's `Request.WriteProxy`) whose body, if any, has a Content-Length.
fn parse_request(raw: &[u8]) -> Result<http::Request<Bytes>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the request head is incomplete".into()),
        Err(e) => return Err(format!("the request is not HTTP/1.1: {e}")),
    };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err("the request has no method or URL".into());
    };
    let mut request = http::Request::builder().method(method).uri(target);
    let mut length = 0;
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(
                "a request body must have a Content-Length, not a Transfer-Encoding".into(),
            );
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("the request has a bad Content-Length")?;
        }
        if !NOT_FORWARDED.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            request = request.header(name, header.value);
        }
    }
    let body = raw[head_len..]
        .get(..length)
        .ok_or("the request body is shorter than its Content-Length")?;
    request
        .body(Bytes::copy_from_slice(body))
        .map_err(|e| format!("the request is not valid HTTP: {e}"))
}

/// `response` as HTTP/1.1, framed by a Content-Length of its own (except
/// for HEAD, whose Content-Length is the origin's).
fn write_response(response: http::Response<Bytes>, head_only: bool) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let mut out = Vec::with_capacity(body.len() + 512);
    let status = parts.status;
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        let framing = *name == http::header::CONTENT_LENGTH && !head_only;
        if framing || *name == http::header::TRANSFER_ENCODING || *name == http::header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !head_only {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// Defines [`SEND`] and [`TAKE`] in `linker`, reading each store's session
/// through `session`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    session: fn(&mut T) -> &mut OutboundSession,
) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        MODULE,
        SEND,
        move |mut caller: Caller<'_, T>, (request, request_len, result): (u32, u32, u32)| {
            Box::new(async move {
                let memory = guest_memory(&mut caller)?;
                let raw = memory
                    .data(&caller)
                    .get(request as usize..)
                    .and_then(|rest| rest.get(..request_len as usize))
                    .ok_or_else(|| wasmtime::format_err!("{MODULE}.{SEND}: request out of bounds"))?
                    .to_vec();
                let state = session(caller.data_mut());
                if state.results.len() >= MAX_UNTAKEN_RESULTS {
                    wasmtime::bail!(
                        "{MODULE}.{SEND}: {MAX_UNTAKEN_RESULTS} results were never taken"
                    );
                }
                let (outcome, bytes) = state.send(&raw).await;
                let len = u32::try_from(bytes.len())?;
                let handle = state.keep(bytes);
                let mut out = [0; 8];
                out[..4].copy_from_slice(&handle.to_le_bytes());
                out[4..].copy_from_slice(&len.to_le_bytes());
                memory.write(&mut caller, result as usize, &out)?;
                Ok(outcome as u32)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        TAKE,
        move |mut caller: Caller<'_, T>, handle: u32, buf: u32, buf_len: u32| {
            let memory = guest_memory(&mut caller)?;
            let state = session(caller.data_mut());
            let fits = state
                .results
                .get(&handle)
                .is_some_and(|r| r.len() <= buf_len as usize);
            if !fits {
                return Ok(u32::MAX);
            }
            let result = state.results.remove(&handle).unwrap_or_default();
            memory.write(&mut caller, buf as usize, &result)?;
            Ok(result.len() as u32)
        },
    )?;
    Ok(())
}

fn guest_memory<T>(caller: &mut Caller<'_, T>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::format_err!(
            "{MODULE}: the module exports no memory"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::of(&url.parse().unwrap()).unwrap()
    }

    #[test]
    fn origin_patterns_allow_exactly_their_origins() {
        let exact: OriginPattern = "https://API.example.com".parse().unwrap();
        assert!(exact.matches(&origin("https://api.example.com/v1?x=1")));
        assert!(exact.matches(&origin("https://api.example.com:443/")));
        assert!(!exact.matches(&origin("http://api.example.com/")));
        assert!(!exact.matches(&origin("https://api.example.com:8443/")));
        assert!(!exact.matches(&origin("https://api.example.com.evil.net/")));
        assert!(!exact.matches(&origin("https://evilapi.example.com/")));

        let wild: OriginPattern = "https://*.example.com".parse().unwrap();
        assert!(wild.matches(&origin("https://a.b.example.com/")));
        assert!(!wild.matches(&origin("https://example.com/")));
        assert!(!wild.matches(&origin("https://badexample.com/")));

        let port: OriginPattern = "http://127.0.0.1:8081/".parse().unwrap();
        assert!(port.matches(&origin("http://127.0.0.1:8081/x")));
        assert!(!port.matches(&origin("http://127.0.0.1:8082/x")));
        assert_eq!(port.to_string(), "http://127.0.0.1:8081");
        assert_eq!(wild.to_string(), "https://*.example.com");

        let v6: OriginPattern = "http://[::1]:9000".parse().unwrap();
        assert!(v6.matches(&origin("http://[::1]:9000/")));

        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://",
            "https://example.com/path",
            "https://user@example.com",
            "https://a.*.com",
            "https://*.",
            "http://example.com:port",
        ] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_guest_request_is_parsed_without_hop_headers_and_answers_are_reframed() {
        let raw = b"POST http://127.0.0.1:9/items HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\
                    Connection: close\r\nX-Key: 1\r\nContent-Length: 4\r\n\r\nbodyEXTRA";
        let request = parse_request(raw).unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri(), "http://127.0.0.1:9/items");
        assert_eq!(request.headers().len(), 1, "{:?}", request.headers());
        assert_eq!(&request.body()[..], b"body");
        assert!(
            parse_request(b"GET http://x/ HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort").is_err()
        );
        assert!(
            parse_request(b"POST http://x/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_err()
        );
        assert!(parse_request(b"nonsense\r\n\r\n").is_err());

        let response = http::Response::builder()
            .status(201)
            .header("transfer-encoding", "chunked")
            .header("content-length", "99")
            .header("x-origin", "yes")
            .body(Bytes::from_static(b"made"))
            .unwrap();
        let text = String::from_utf8(write_response(response, false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 201 Created\r\nx-origin: yes\r\ncontent-length: 4\r\n\r\nmade"
        );
    }

    struct Echo;

    impl Transport for Echo {
        fn send(
            &self,
            request: http::Request<Bytes>,
            timeout: Duration,
            _max_body: usize,
        ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, TransportError>> + Send>>
        {
            let path = request.uri().path().to_string();
            Box::pin(async move {
                match path.as_str() {
                    "/slow" => Err(TransportError::TimedOut(timeout)),
                    _ => Ok(http::Response::new(Bytes::from(path))),
                }
            })
        }
    }

    #[tokio::test]
    async fn a_session_denies_limits_and_tallies() {
        let policy = OutboundPolicy {
            allowed: vec!["http://allowed.test".parse().unwrap()],
            limits: OutboundLimits {
                max_requests: 2,
                ..OutboundLimits::default()
            },
        };
        let mut session = OutboundSession::new(Arc::new(Echo), Arc::new(policy), None);
        let get = |url: &str| format!("GET {url} HTTP/1.1\r\n\r\n").into_bytes();

        let (outcome, message) = session.send(&get("http://denied.test:81/")).await;
        assert_eq!(outcome, Outcome::Denied);
        let message = String::from_utf8(message).unwrap();
        assert!(message.contains("http://denied.test:81"), "{message}");

        let (outcome, answer) = session.send(&get("http://allowed.test/hi")).await;
        assert_eq!(outcome, Outcome::Completed);
        assert!(answer.ends_with(b"\r\n\r\n/hi"));
        let (outcome, _) = session.send(&get("http://allowed.test/slow")).await;
        assert_eq!(outcome, Outcome::TimedOut);
        let (outcome, _) = session.send(&get("http://allowed.test/third")).await;
        assert_eq!(outcome, Outcome::Limited);

        let tally = session.tally();
        assert_eq!(tally.total(), 4);
        for outcome in [
            Outcome::Denied,
            Outcome::Completed,
            Outcome::TimedOut,
            Outcome::Limited,
        ] {
            assert_eq!(tally.count(outcome), 1, "{outcome:?}");
        }

        let (outcome, _) = OutboundSession::unavailable()
            .send(&get("http://allowed.test/"))
            .await;
        assert_eq!(outcome, Outcome::Unavailable);
    }

    /// A guest calling `send` as a hostile module would: out of bounds,
    /// and without ever taking its results.
    const HOSTILE_GUEST: &str = r#"(module
      (import "thaw_http" "send" (func $send (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "out_of_bounds")
        (drop (call $send (i32.const 65530) (i32.const 100) (i32.const 0))))
      (func (export "never_take")
        (loop $again
          (drop (call $send (i32.const 0) (i32.const 0) (i32.const 16)))
          (br $again))))"#;

    #[tokio::test]
    async fn a_hostile_guest_traps_instead_of_reaching_host_memory() {
        let engine = wasmtime::Engine::new(&crate::profile::engine_config()).unwrap();
        let module = wasmtime::Module::new(&engine, HOSTILE_GUEST).unwrap();
        let linker = crate::guest::linker(&engine).unwrap();
        for (export, reason) in [
            ("out_of_bounds", "request out of bounds"),
            ("never_take", "64 results were never taken"),
        ] {
            let wasi = crate::sandbox::wasi_builder::<&str, &str>(&[]).build_p1();
            let mut store =
                crate::guest::store(&engine, wasi, OutboundSession::unavailable(), 1 << 20);
            let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
            let run = instance
                .get_typed_func::<(), ()>(&mut store, export)
                .unwrap();
            let error = run.call_async(&mut store, ()).await.unwrap_err();
            assert!(format!("{error:#}").contains(reason), "{export}: {error:#}");
        }
    }
}
