//! Shared helpers for thaw's end-to-end tests: building the repo's Go code
//! with the real toolchain, and speaking HTTP/1.1 to a loaded function.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thaw_gobuild::{BuildMode, Go};

pub mod garage;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Go toolchain, found (or installed) once per test binary.
pub fn go() -> &'static Go {
    static GO: OnceLock<Go> = OnceLock::new();
    GO.get_or_init(|| Go::find().expect("a Go toolchain (the test command installs one)"))
}

/// Builds a Go package of this repo (path relative to the root) for wasip1.
pub fn build_go(relative: &str, mode: BuildMode) -> Vec<u8> {
    go().build(&repo_root().join(relative), mode)
        .unwrap_or_else(|e| panic!("building {relative}: {e}"))
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// Parses what an SDK function wrote to stdout.
    pub fn parse(raw: &[u8]) -> Response {
        let parsed = thaw_core::abi::parse_http1_response(&raw.to_vec().into(), "GET")
            .unwrap_or_else(|e| panic!("bad response {e}: {:?}", String::from_utf8_lossy(raw)));
        Response {
            status: parsed.status,
            headers: parsed
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_ascii_lowercase(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                })
                .collect(),
            body: parsed.body.to_vec(),
        }
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 request with an optional body.
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if !body.is_empty() {
        raw.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// The function exports of a module.
pub fn exports(wasm: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::ExportSection(reader) = payload.unwrap() {
            for export in reader {
                names.push(export.unwrap().name.to_string());
            }
        }
    }
    names
}

/// The ELF `e_machine` of an artifact: 62 is x86-64, 183 is AArch64.
pub fn elf_machine(artifact: &[u8]) -> u16 {
    assert_eq!(&artifact[..4], b"\x7fELF", "not an ELF file");
    u16::from_le_bytes([artifact[18], artifact[19]])
}
