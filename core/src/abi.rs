//! The guest ABI: the names and wire formats shared by the Go SDK
//! (`sdk/go`), the snapshotter and the runner. See `docs/abi.md`.

/// The SDK's request entry point: `[] -> []`. It reads one HTTP/1.1 request
/// from stdin and writes one HTTP/1.1 response to stdout.
pub const HANDLE_EXPORT: &str = "thaw_handle";

/// The SDK's compact request entry point: `[] -> []`. It reads one request
/// frame ([`encode_request_frame`]) from stdin and writes one response
/// frame ([`parse_compact_response`]) to stdout. SDKs that have it also
/// keep [`HANDLE_EXPORT`], so older hosts still serve their functions.
pub const COMPACT_HANDLE_EXPORT: &str = "thaw_handle_compact";

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
    let bodiless = carries_no_body(method, status);
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

/// The parts of a request that [`encode_request_frame`] hands a guest.
#[derive(Clone, Copy, Debug)]
pub struct FrameRequest<'a> {
    /// The method, for example `GET`.
    pub method: &'a str,
    /// The request target: the path and query left after routing.
    pub target: &'a str,
    /// The client's address, `ip:port` (empty when unknown).
    pub remote_addr: &'a str,
    /// The guest's whole environment.
    pub env: &'a [(String, String)],
    /// The body, whole.
    pub body: &'a [u8],
}

/// Writes the request frame of the compact entry point
/// ([`COMPACT_HANDLE_EXPORT`]). Every integer is little-endian and every
/// string is a `u32` length then its bytes:
///
/// ```text
/// u32 head length, then the head:
///     u64 body length, u32 environment count, u32 header count,
///     method, target, client address,
///     environment count × "KEY=VALUE",
///     header count × (name, value)
/// then the body
/// ```
///
/// Header names are written in Go's canonical form
/// ([`canonical_header_name`]), and a `Content-Length` of the body's
/// length follows `headers`, which must hold none of their own.
pub fn encode_request_frame(request: FrameRequest<'_>, headers: &[(&str, &[u8])]) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let content_length = request.body.len().to_string();
    let mut out = Vec::with_capacity(512 + request.body.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(request.body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(request.env.len() as u32).to_le_bytes());
    out.extend_from_slice(&(headers.len() as u32 + 1).to_le_bytes());
    put_str(&mut out, request.method.as_bytes());
    put_str(&mut out, request.target.as_bytes());
    put_str(&mut out, request.remote_addr.as_bytes());
    for (key, value) in request.env {
        out.extend_from_slice(&((key.len() + 1 + value.len()) as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
    for &(name, value) in headers {
        put_str(&mut out, canonical_header_name(name).as_bytes());
        put_str(&mut out, value);
    }
    put_str(&mut out, b"Content-Length");
    put_str(&mut out, content_length.as_bytes());
    let head_len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&head_len.to_le_bytes());
    out.extend_from_slice(request.body);
    out
}

/// `name` as Go's `textproto.CanonicalMIMEHeaderKey` writes it
/// (`content-type` → `Content-Type`), so that the SDK need not rewrite it.
/// A name with a byte that is not a token character is left as it is, as
/// Go does.
pub fn canonical_header_name(name: &str) -> std::borrow::Cow<'_, str> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(token) {
        return name.into();
    }
    let mut upper = true;
    let canonical: String = name
        .chars()
        .map(|c| {
            let c = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            c
        })
        .collect();
    if canonical == name {
        name.into()
    } else {
        canonical.into()
    }
}

/// Parses the response frame the compact entry point writes to stdout, in
/// answer to a `method` request:
///
/// ```text
/// u32 head length, then the head:
///     u32 status, u32 header count, header count × (name, value)
/// then the body
/// ```
///
/// A response that declares a `Content-Length` must carry exactly that many
/// body bytes, unless it answers HEAD or is a 1xx, 204 or 304.
pub fn parse_compact_response(
    raw: &bytes::Bytes,
    method: &str,
) -> Result<GuestResponse, MalformedResponse> {
    let mut output = FrameFields(raw);
    let head_len = output.u32("the head length")? as usize;
    let head = output.take(head_len, "the head")?;
    let body = raw.slice(4 + head_len..);
    let mut head = FrameFields(head);
    let status = u16::try_from(head.u32("the status")?)
        .map_err(|_| malformed_frame("the status is out of range"))?;
    let count = head.u32("the header count")? as usize;
    if count > head.0.len() / 8 {
        return Err(malformed_frame(
            "the header count exceeds what the head holds",
        ));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = head.string("a header name")?;
        let name =
            std::str::from_utf8(name).map_err(|_| malformed_frame("a header name is not UTF-8"))?;
        headers.push((name.to_string(), head.string("a header value")?.to_vec()));
    }
    if !head.0.is_empty() {
        return Err(malformed_frame("bytes follow the last header"));
    }
    let response = GuestResponse {
        status,
        headers,
        body,
    };
    let bodiless = carries_no_body(method, status);
    if let Some(length) = response.header("content-length")
        && !bodiless
        && length.trim().parse::<usize>().ok() != Some(response.body.len())
    {
        return Err(MalformedResponse(format!(
            "Content-Length {length} but {} body bytes",
            response.body.len()
        )));
    }
    Ok(response)
}

/// Whether a response with `status`, to a `method` request, declares a
/// `Content-Length` without carrying that body: an answer to HEAD, a 1xx,
/// 204 or 304.
fn carries_no_body(method: &str, status: u16) -> bool {
    method == "HEAD" || status < 200 || status == 204 || status == 304
}

fn malformed_frame(reason: &str) -> MalformedResponse {
    MalformedResponse(format!("response frame: {reason}"))
}

/// Reads a frame field by field.
struct FrameFields<'a>(&'a [u8]);

impl<'a> FrameFields<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], MalformedResponse> {
        if len > self.0.len() {
            return Err(malformed_frame(&format!("{what} runs past its end")));
        }
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(field)
    }

    fn u32(&mut self, what: &str) -> Result<u32, MalformedResponse> {
        let field = self.take(4, what)?;
        Ok(u32::from_le_bytes(field.try_into().expect("four bytes")))
    }

    /// A `u32` length, then that many bytes.
    fn string(&mut self, what: &str) -> Result<&'a [u8], MalformedResponse> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
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

    /// A response frame as the SDK writes it.
    fn response_frame(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut head = Vec::new();
        head.extend_from_slice(&status.to_le_bytes());
        head.extend_from_slice(&(headers.len() as u32).to_le_bytes());
        for (name, value) in headers {
            for field in [name, value] {
                head.extend_from_slice(&(field.len() as u32).to_le_bytes());
                head.extend_from_slice(field.as_bytes());
            }
        }
        let mut frame = (head.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&head);
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn request_frames_carry_every_field_in_order() {
        let env = [("A".to_string(), "1".to_string())];
        let request = FrameRequest {
            method: "POST",
            target: "/x?y=1",
            remote_addr: "192.0.2.1:9",
            env: &env,
            body: b"hello",
        };
        let headers = [("content-type", &b"text/plain"[..]), ("x-a", b"")];
        let frame = encode_request_frame(request, &headers);
        let mut fields = FrameFields(&frame);
        let head_len = fields.u32("head length").unwrap() as usize;
        assert_eq!(&frame[4 + head_len..], b"hello");
        let mut head = FrameFields(&frame[4..4 + head_len]);
        let body_len = head.take(8, "body length").unwrap();
        assert_eq!(u64::from_le_bytes(body_len.try_into().unwrap()), 5);
        assert_eq!(head.u32("env").unwrap(), 1);
        assert_eq!(head.u32("headers").unwrap(), 3);
        let mut strings = Vec::new();
        while !head.0.is_empty() {
            strings.push(String::from_utf8(head.string("field").unwrap().to_vec()).unwrap());
        }
        let expected = [
            "POST",
            "/x?y=1",
            "192.0.2.1:9",
            "A=1",
            "Content-Type",
            "text/plain",
            "X-A",
            "",
            "Content-Length",
            "5",
        ];
        assert_eq!(strings, expected);
    }

    #[test]
    fn header_names_take_gos_canonical_form() {
        for (name, canonical) in [
            ("content-type", "Content-Type"),
            ("x-forwarded-for", "X-Forwarded-For"),
            ("etag", "Etag"),
            ("WWW-AUTHENTICATE", "Www-Authenticate"),
            ("x--a", "X--A"),
            ("has space", "has space"),
            ("", ""),
        ] {
            assert_eq!(canonical_header_name(name), canonical, "{name}");
        }
    }

    #[test]
    fn parses_response_frames_and_refuses_damaged_ones() {
        let raw = Bytes::from(response_frame(
            201,
            &[
                ("Content-Length", "2"),
                ("Set-Cookie", "a"),
                ("Set-Cookie", "b"),
            ],
            b"ok",
        ));
        let ok = parse_compact_response(&raw, "GET").unwrap();
        assert_eq!((ok.status, &ok.body[..]), (201, &b"ok"[..]));
        assert_eq!(ok.headers.len(), 3);
        assert_eq!(ok.headers[2], ("Set-Cookie".to_string(), b"b".to_vec()));
        // Every cut inside the head, and a body shorter than declared.
        for cut in 0..raw.len() - 1 {
            assert!(
                parse_compact_response(&raw.slice(..cut), "GET").is_err(),
                "cut at {cut}"
            );
        }
        // A HEAD answer declares the GET body's length and carries none.
        let head = response_frame(200, &[("Content-Length", "16")], b"");
        assert!(parse_compact_response(&Bytes::from(head.clone()), "HEAD").is_ok());
        assert!(parse_compact_response(&Bytes::from(head), "GET").is_err());
        let huge_count = {
            let mut frame = response_frame(200, &[], b"");
            frame[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            frame
        };
        for bad in [
            huge_count,
            response_frame(70_000, &[], b""),
            [response_frame(200, &[], b"")[..4].to_vec(), vec![1]].concat(),
        ] {
            assert!(parse_compact_response(&Bytes::from(bad), "GET").is_err());
        }
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
