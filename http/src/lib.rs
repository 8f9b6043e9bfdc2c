//! What thaw's two HTTP servers, the registry and the edge runner, share:
//! serving with a graceful shutdown on Ctrl-C or SIGTERM, reading a
//! request body under a size limit, an access log that never records a
//! header or a query string, and the `/metrics` answer.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let router = axum::Router::new()
//!     .route("/healthz", axum::routing::get(|| async { "ok\n" }))
//!     .layer(thaw_http::access_log());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! thaw_http::serve(listener, router, thaw_http::shutdown_signal()).await
//! # }
//! ```

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION,
};
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use bytes::Bytes;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, TraceLayer};
use tracing::Span;

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish. Handlers can extract the client's address
/// (`ConnectInfo<SocketAddr>`).
///
/// Every server gets the same outer layers: a handler that panics answers
/// 500 instead of dropping the connection (and every other request on it),
/// and credentials (`Authorization`, `Cookie`) are marked sensitive, so no
/// layer's `Debug` output or trace ever shows them.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router
        .layer(CatchPanicLayer::new())
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            PROXY_AUTHORIZATION,
            COOKIE,
        ]));
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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
    /// The connection failed while the body was read.
    #[error("reading the request body")]
    Read(#[source] axum::Error),
}

/// Reads a whole request body of at most `limit` bytes. A body declared
/// larger (`Content-Length`) is refused before any of it is read.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            BodyError::TooLarge { limit }
        } else {
            BodyError::Read(e)
        }
    })
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

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_declared_or_not() {
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, "11".parse().unwrap());
        let err = read_body(&declared, Body::from("hello world"), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err}");
        let err = read_body(&HeaderMap::new(), Body::from("hello world"), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err}");
        let ok = read_body(&HeaderMap::new(), Body::from("hello"), 10)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"hello");
    }

    async fn panics() -> &'static str {
        panic!("a handler bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let router = axum::Router::new()
            .route("/panic", axum::routing::get(panics))
            .route("/ok", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, std::future::pending()));
        for (path, status) in [("/panic", "500"), ("/ok", "200")] {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{answer}"
            );
        }
    }
}
