//! The Go SDK (`thaw.dev/thaw`) that ships inside this thaw binary, and the
//! function directories `thaw new` creates.
//!
//! A package whose module neither requires nor replaces `thaw.dev/thaw`
//! builds against this copy: the build writes it next to the output and runs
//! Go in workspace mode (`GOWORK`), with a `go.work` that uses the package's
//! module and the SDK. The user's directory is never written to. A module
//! that pins the SDK itself (a `require` with a `replace`, as this
//! repository's examples do) builds with its own copy.

use std::path::Path;

/// The SDK's files, as this binary was built with them: everything in
/// `sdk/go` that a build needs (no tests, no README).
pub const SDK_FILES: &[(&str, &str)] = &[
    ("go.mod", include_str!("../../sdk/go/go.mod")),
    ("abi_wasip1.go", include_str!("../../sdk/go/abi_wasip1.go")),
    ("doc.go", include_str!("../../sdk/go/doc.go")),
    (
        "environ_other.go",
        include_str!("../../sdk/go/environ_other.go"),
    ),
    (
        "environ_wasip1.go",
        include_str!("../../sdk/go/environ_wasip1.go"),
    ),
    ("frame.go", include_str!("../../sdk/go/frame.go")),
    ("main.go", include_str!("../../sdk/go/main.go")),
    ("outbound.go", include_str!("../../sdk/go/outbound.go")),
    (
        "outbound_wasip1.go",
        include_str!("../../sdk/go/outbound_wasip1.go"),
    ),
    (
        "main_native.go",
        include_str!("../../sdk/go/main_native.go"),
    ),
    (
        "main_wasip1.go",
        include_str!("../../sdk/go/main_wasip1.go"),
    ),
    (
        "program_wasip1.go",
        include_str!("../../sdk/go/program_wasip1.go"),
    ),
    (
        "reseed_unknown_wasip1.go",
        include_str!("../../sdk/go/reseed_unknown_wasip1.go"),
    ),
    (
        "reseed_wasip1.go",
        include_str!("../../sdk/go/reseed_wasip1.go"),
    ),
    ("serve.go", include_str!("../../sdk/go/serve.go")),
    ("thaw.go", include_str!("../../sdk/go/thaw.go")),
];

/// Writes the SDK's files into `dir`, which must exist.
pub fn write_sdk(dir: &Path) -> std::io::Result<()> {
    for (name, text) in SDK_FILES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// The files of a new function whose module path is `module`.
pub fn new_function_files(module: &str) -> [(&'static str, String); 3] {
    [
        ("go.mod", format!("module {module}\n\ngo 1.24\n")),
        (
            "main.go",
            r#"// A thaw edge function. Build and serve it on this machine with
//
//	thaw up .
//
// init() runs once, at build time, and is snapshotted; the handler runs
// once per request, in a fresh instance.
package main

import (
	"fmt"
	"net/http"

	"thaw.dev/thaw"
)

func init() {
	thaw.HandleFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.URL.Path)
	})
}

func main() { thaw.Main() }
"#
            .to_string(),
        ),
        (".gitignore", "*.wasm\n".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to `sdk/go` must be embedded too, or functions built
    /// from anywhere would miss it.
    #[test]
    fn every_sdk_source_file_is_embedded() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/go");
        let mut on_disk: Vec<String> = std::fs::read_dir(&sdk)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| {
                name == "go.mod" || (name.ends_with(".go") && !name.ends_with("_test.go"))
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SDK_FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}
