//! The guest ABI: the names and wire formats shared by the Go SDK
//! (`sdk/go`), the snapshotter and the runner. See `docs/abi.md`.

/// The SDK's request entry point: `[] -> []`. It reads one HTTP/1.1 request
/// from stdin and writes one HTTP/1.1 response to stdout.
pub const HANDLE_EXPORT: &str = "thaw_handle";

/// The SDK's pre-snapshot hook: `[] -> []`. Runs the user's warm-up
/// functions, then `runtime.GC()`. Called once, after `_initialize`.
pub const PRE_SNAPSHOT_EXPORT: &str = "thaw_pre_snapshot";

/// A WASI reactor's initializer (Go runtime init plus every package `init()`).
pub const REACTOR_INIT_EXPORT: &str = "_initialize";

/// A WASI command's entry point.
pub const COMMAND_EXPORT: &str = "_start";

/// WASI preview 1, the import module of every capability but outbound
/// HTTP (`thaw_engine::outbound::MODULE`).
pub const WASI_P1_MODULE: &str = "wasi_snapshot_preview1";

/// A response as a guest wrote it, parsed but not yet trusted as HTTP:
/// header names and values are as the guest sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestResponse {
    /// The status code.
    pub status: u16,
    /// Header names and raw values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: bytes::Bytes,
}

impl GuestResponse {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Why a guest's response could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedResponse(String);

/// Parses the HTTP/1.1 response an SDK function writes to stdout, sent in
/// answer to a `method` request. A response to HEAD, and a 1xx, 204 or 304,
/// declares a Content-Length but carries no body; any other response must
/// carry at least the bytes it declares, and bytes beyond them are dropped.
pub fn parse_http1_response(
    raw: &bytes::Bytes,
    method: &str,
) -> Result<GuestResponse, MalformedResponse> {
    let malformed = |reason: String| MalformedResponse(reason);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(raw).map_err(|e| malformed(e.to_string()))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err(malformed("incomplete response head".into())),
    };
    let status = parsed
        .code
        .ok_or_else(|| malformed("no status code".into()))?;
    let bodiless = method == "HEAD" || status < 200 || status == 204 || status == 304;
    let mut body = raw.slice(head_len..);
    let mut pairs = Vec::new();
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let length: usize = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| malformed("bad Content-Length".into()))?;
            if length > body.len() && !bodiless {
                return Err(malformed(format!(
                    "Content-Length {length} but only {} body bytes",
                    body.len()
                )));
            }
            body.truncate(length);
        }
        pairs.push((h.name.to_string(), h.value.to_vec()));
    }
    Ok(GuestResponse {
        status,
        headers: pairs,
        body,
    })
}

/// Parses a CGI response (RFC 3875): header lines, a blank line, the body.
/// `Status:` sets the status; `Location:` alone means a redirect.
pub fn parse_cgi_response(raw: &bytes::Bytes) -> Result<GuestResponse, MalformedResponse> {
    let malformed = |reason: String| MalformedResponse(reason);
    let (head_end, separator) = match (
        raw.windows(4).position(|w| w == b"\r\n\r\n"),
        raw.windows(2).position(|w| w == b"\n\n"),
    ) {
        (Some(crlf), Some(lf)) if lf < crlf => (lf, 2),
        (Some(crlf), _) => (crlf, 4),
        (None, Some(lf)) => (lf, 2),
        (None, None) => return Err(malformed("no blank line after the CGI headers".into())),
    };
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| malformed("CGI headers are not UTF-8".into()))?;
    let mut status = None;
    let mut has_location = false;
    let mut pairs = Vec::new();
    for line in head
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
    {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("bad CGI header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok());
            status = Some(code.ok_or_else(|| malformed(format!("bad Status {value:?}")))?);
            continue;
        }
        has_location |= name.eq_ignore_ascii_case("location");
        pairs.push((name.to_string(), value.as_bytes().to_vec()));
    }
    Ok(GuestResponse {
        status: status.unwrap_or(if has_location { 302 } else { 200 }),
        headers: pairs,
        body: raw.slice(head_end + separator..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn parses_sdk_responses_and_rejects_truncated_ones() {
        let ok = parse_http1_response(
            &Bytes::from_static(
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nokEXTRA",
            ),
            "GET",
        )
        .unwrap();
        assert_eq!(ok.status, 201);
        assert_eq!(ok.header("x-a"), Some("1"));
        assert_eq!(&ok.body[..], b"ok");
        let short = Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort");
        assert!(parse_http1_response(&short, "GET").is_err());
        assert!(parse_http1_response(&Bytes::from_static(b"garbage"), "GET").is_err());
        // Regression: a HEAD response declares the GET body's length.
        let head = parse_http1_response(
            &Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n"),
            "HEAD",
        )
        .unwrap();
        assert_eq!(head.status, 200);
    }

    #[test]
    fn parses_cgi_responses() {
        let r = parse_cgi_response(&Bytes::from_static(
            b"Status: 404 Not Found\nContent-Type: text/plain\n\nnope",
        ))
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(&r.body[..], b"nope");
        let r = parse_cgi_response(&Bytes::from_static(b"Location: /x\r\n\r\n")).unwrap();
        assert_eq!(r.status, 302);
        assert!(parse_cgi_response(&Bytes::from_static(b"no blank line")).is_err());
    }
}
