//! Helpers shared by the CLI's integration tests.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `thaw` binary with `THAW_HOME=home` and no `THAW_STORE`.
pub fn thaw(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(args)
        .env("THAW_HOME", home)
        .env_remove("THAW_STORE")
        .output()
        .unwrap()
}
