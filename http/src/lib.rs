//! What thaw's two HTTP servers, the registry and the edge runner, share:
//! serving HTTP/1.1 within connection limits (a header timeout that also
//! closes idle connections, a connection cap) with a graceful shutdown on
//! Ctrl-C or SIGTERM, reading a request body under a size limit and a
//! deadline, an access log that never records a header or a query string,
//! and the `/metrics` answer. The `clap` feature adds the flags for the
//! connection limits.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let router = axum::Router::new()
//!     .route("/healthz", axum::routing::get(|| async { "ok\n" }))
//!     .layer(thaw_http::access_log());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let limits = thaw_http::ConnectionLimits::default();
//! thaw_http::serve(listener, router, limits, thaw_http::shutdown_signal()).await
//! # }
//! ```

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION,
};
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, TraceLayer};
use tracing::Span;

/// Default [`ConnectionLimits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ConnectionLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default [`ConnectionLimits::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[cfg(feature = "clap")]
mod args;
#[cfg(feature = "clap")]
pub use args::ConnectionArgs;

/// What a server grants each client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client has to send a request's head, counted from when
    /// its connection is idle (just accepted, or done with the previous
    /// request). A half-sent head, and an idle keep-alive connection, are
    /// closed after it.
    pub header_timeout: Duration,
    /// Connections held at once. Beyond it the server stops accepting, and
    /// new connections wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// How long in-flight requests (and open event streams) get to finish
    /// after a shutdown signal before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Serves `router` over HTTP/1.1 on `listener` within `limits` until
/// `shutdown` completes, then lets in-flight requests finish, for at most
/// [`ConnectionLimits::shutdown_grace`]. Handlers can extract the client's
/// address (`ConnectInfo<SocketAddr>`).
///
/// Every server gets the same outer layers: a handler that panics answers
/// 500 instead of dropping the connection (and every other request on it),
/// and credentials (`Authorization`, `Cookie`) are marked sensitive, so no
/// layer's `Debug` output or trace ever shows them.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router
        .layer(CatchPanicLayer::new())
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            PROXY_AUTHORIZATION,
            COOKIE,
        ]));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let Some((stream, remote, held)) = accepted else {
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that hangs up or times out ends its connection;
            // nothing else is affected.
            if let Err(e) = connection.await {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
            drop(held);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "shutting down with requests still open");
    }
    Ok(())
}

/// The next connection, once a connection slot is free. `None` when the
/// accept failed: a client that vanished is skipped; anything else (out of
/// file descriptors) is logged and waited out, so the server never spins.
async fn accept(
    listener: &tokio::net::TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let held = connections
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    match listener.accept().await {
        Ok((stream, remote)) => {
            // Responses go out in one write; never hold them back.
            let _ = stream.set_nodelay(true);
            Some((stream, remote, held))
        }
        Err(e) => {
            use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
            if !matches!(
                e.kind(),
                ConnectionAborted | ConnectionRefused | ConnectionReset
            ) {
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None
        }
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what service managers and
/// orchestrators send).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

/// The `/metrics` answer: `registry` in the OpenMetrics text format.
pub fn metrics_response(registry: &prometheus_client::registry::Registry) -> Response<Body> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String does not fail");
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is, or was declared to be, larger than the limit.
    #[error("the request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The connection failed while the body was read.
    #[error("reading the request body")]
    Read(#[source] axum::Error),
}

/// Reads a whole request body of at most `limit` bytes, all of it within
/// `within`, so a client trickling bytes cannot hold a request open. A
/// body declared larger (`Content-Length`) is refused before any of it is
/// read.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    within: Duration,
) -> Result<Bytes, BodyError> {
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = tokio::time::timeout(within, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(BodyError::TimedOut(within));
    };
    read.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            BodyError::TooLarge { limit }
        } else {
            BodyError::Read(e)
        }
    })
}

/// The body length a request declares (`Content-Length`), if it declares
/// a valid one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads and drops a request body that is being refused (at most `limit`
/// bytes, for at most `within`), so that a client still sending it gets the
/// answer instead of a reset connection.
pub async fn discard_body(body: Body, limit: usize, within: Duration) {
    use http_body_util::BodyExt;
    let mut body = http_body_util::Limited::new(body, limit);
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// The access-log layer [`access_log`] returns.
pub type AccessLog = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<Body>) -> Span,
    (),
    fn(&Response<Body>, Duration, &Span),
    DefaultOnBodyChunk,
    DefaultOnEos,
    (),
>;

/// The access-log layer: one `thaw::access` line per request with method,
/// path without its query, status and duration, in a `request` span that
/// also holds whatever the handler logs. Headers and query strings are
/// never logged, so tokens cannot leak into logs. Server errors get no
/// line of their own: handlers log them with their cause.
pub fn access_log() -> AccessLog {
    TraceLayer::new_for_http()
        .make_span_with(access_span as fn(&Request<Body>) -> Span)
        .on_request(())
        .on_response(access_line as fn(&Response<Body>, Duration, &Span))
        .on_failure(())
}

fn access_span(request: &Request<Body>) -> Span {
    tracing::info_span!(
        target: "thaw::access",
        "request",
        method = %request.method(),
        path = %request.uri().path(),
    )
}

fn access_line(response: &Response<Body>, latency: Duration, _: &Span) {
    tracing::info!(
        target: "thaw::access",
        status = response.status().as_u16(),
        micros = latency.as_micros() as u64,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const AMPLE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_declared_or_not() {
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, "11".parse().unwrap());
        let err = read_body(&declared, Body::from("hello world"), 10, AMPLE)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err}");
        let err = read_body(&HeaderMap::new(), Body::from("hello world"), 10, AMPLE)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err}");
        let ok = read_body(&HeaderMap::new(), Body::from("hello"), 10, AMPLE)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"hello");
    }

    #[tokio::test]
    async fn a_body_that_never_arrives_times_out() {
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let within = Duration::from_millis(100);
        let err = read_body(&HeaderMap::new(), stalled, 10, within)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BodyError::TimedOut(d) if d == within),
            "{err}"
        );
    }

    async fn panics() -> &'static str {
        panic!("a handler bug")
    }

    /// Serves `router` on a loopback port; returns its address.
    async fn start(router: axum::Router, limits: ConnectionLimits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        address
    }

    /// One request on a fresh connection; the whole answer.
    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
        let router = axum::Router::new()
            .route("/panic", axum::routing::get(panics))
            .route("/ok", axum::routing::get(|| async { "ok" }));
        let address = start(router, ConnectionLimits::default()).await;
        assert!(get(address, "/panic").await.starts_with("HTTP/1.1 500"));
        assert!(get(address, "/ok").await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn shutdown_waits_for_open_requests_only_as_long_as_the_grace() {
        use tokio::io::AsyncWriteExt;
        let router = axum::Router::new().route(
            "/forever",
            axum::routing::get(std::future::pending::<&'static str>),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = ConnectionLimits {
            shutdown_grace: Duration::from_millis(300),
            ..ConnectionLimits::default()
        };
        let server = tokio::spawn(serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(ended.is_ok(), "shutdown waited past its grace");
    }

    #[tokio::test]
    async fn idle_and_half_sent_connections_are_closed_and_free_their_slot() {
        let router = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(300),
            max_connections: 1,
            ..ConnectionLimits::default()
        };
        let address = start(router, limits).await;
        // A client that sends half a request line holds the only slot...
        let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /ok HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so the next client waits, until the header timeout closes the
        // slow one and its slot goes to the waiting client.
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(address, "/ok"))
            .await
            .expect("the waiting client was served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the half-sent connection is still open");
    }
}
