//! W3C Trace Context for requests: the runner joins the caller's trace, or
//! starts one, and hands the guest a `traceparent` naming the runner's own
//! span as the parent, so a function's outbound calls and logs line up
//! with the host's.

use axum::http::{HeaderMap, HeaderValue};

/// The `traceparent` header.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// One request's place in a trace.
pub(crate) struct TraceContext {
    /// 32 lowercase hex digits.
    pub(crate) trace_id: String,
    /// This hop's span, 16 lowercase hex digits.
    pub(crate) span_id: String,
    flags: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system has a random source");
    hex::encode(buf)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// The caller's trace with a new span for this hop, or a new trace
    /// when the request carries no valid `traceparent`.
    pub(crate) fn for_request(headers: &HeaderMap) -> Self {
        let span_id = random_hex(8);
        let parsed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|text| {
                let mut parts = text.trim().split('-');
                let (version, trace, parent, flags) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                let valid = version.len() == 2
                    && version != "ff"
                    && version.bytes().all(|b| b.is_ascii_hexdigit())
                    && is_hex(trace, 32)
                    && is_hex(parent, 16)
                    && flags.len() == 2
                    && flags.bytes().all(|b| b.is_ascii_hexdigit());
                valid.then(|| (trace.to_string(), flags.to_string()))
            });
        let (trace_id, flags) = parsed.unwrap_or_else(|| (random_hex(16), "00".into()));
        Self {
            trace_id,
            span_id,
            flags,
        }
    }

    /// The `traceparent` the guest sees: this trace, this hop as parent.
    pub(crate) fn header(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "00-{}-{}-{}",
            self.trace_id, self.span_id, self.flags
        ))
        .expect("hex is header-safe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_a_valid_trace_and_starts_one_otherwise() {
        let mut headers = HeaderMap::new();
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT, caller.parse().unwrap());
        let joined = TraceContext::for_request(&headers);
        assert_eq!(joined.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let header = joined.header();
        let header = header.to_str().unwrap();
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(header.ends_with("-01") && !header.contains("00f067aa0ba902b7"));

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            headers.insert(TRACEPARENT, bad.parse().unwrap());
            let fresh = TraceContext::for_request(&headers);
            assert_ne!(fresh.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(is_hex(&fresh.trace_id, 32));
        }
    }
}
