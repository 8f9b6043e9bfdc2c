//! Helpers shared by the CLI's integration tests.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `thaw` binary with `THAW_HOME=home` and no `THAW_STORE`.
pub fn thaw(home: &Path, args: &[&str]) -> Output {
    thaw_with_env(home, args, &[])
}

/// Like [`thaw`], with extra environment variables. Fails the test if the
/// process runs for more than three minutes.
pub fn thaw_with_env(home: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_thaw"));
    command
        .args(args)
        .env("THAW_HOME", home)
        .env_remove("THAW_STORE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    // Drain both pipes while waiting, so a chatty child never blocks.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("thaw {args:?} ran for more than three minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
