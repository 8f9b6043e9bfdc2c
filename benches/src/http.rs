//! Just enough HTTP/1.1 to time first responses and compare bodies, with
//! nothing between the clock and the socket; responses are parsed by the
//! guest ABI's own parsers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use thaw_core::abi::{parse_cgi_response, parse_http1_response};

/// `GET path` with `Connection: close`; the whole raw response.
pub fn get(address: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request(path).as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response)
}

/// The request every system is sent.
pub fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
}

/// The status and body of a raw HTTP/1.1 response to a GET.
pub fn parse_http(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let response = parse_http1_response(&Bytes::copy_from_slice(raw), "GET")
        .context("parsing the HTTP response")?;
    Ok((response.status, response.body.to_vec()))
}

/// The status and body of a CGI response (`Status:` defaults to 200).
pub fn parse_cgi(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let response =
        parse_cgi_response(&Bytes::copy_from_slice(raw)).context("parsing the CGI response")?;
    Ok((response.status, response.body.to_vec()))
}

/// Fails unless `actual` is a 200 with the same body as `expected`.
pub fn check_same(system: &str, expected: &[u8], actual: (u16, Vec<u8>)) -> Result<()> {
    if actual.0 != 200 {
        bail!(
            "{system} answered {}: {}",
            actual.0,
            String::from_utf8_lossy(&actual.1)
        );
    }
    if actual.1 != expected {
        bail!(
            "{system} answered other bytes: {:?} instead of {:?}",
            String::from_utf8_lossy(&actual.1),
            String::from_utf8_lossy(expected)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_cgi() {
        let (status, body) = parse_http(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\nnope").unwrap();
        assert_eq!((status, &body[..]), (404, &b"nope"[..]));
        let (status, body) = parse_cgi(b"Content-Type: text/plain\n\nhi\n").unwrap();
        assert_eq!((status, &body[..]), (200, &b"hi\n"[..]));
        let (status, _) = parse_cgi(b"Status: 500 Oops\r\n\r\n").unwrap();
        assert_eq!(status, 500);
        assert!(parse_http(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(check_same("x", b"a", (200, b"b".to_vec())).is_err());
        assert!(check_same("x", b"a", (200, b"a".to_vec())).is_ok());
    }
}
