//! Compiling in a child process, so that a compile can be stopped.
//!
//! Cranelift cannot be interrupted, and a hostile module can make it work
//! for a long time. A [`Worker`] runs each compile in a child process (the
//! same binary, re-run with a hidden subcommand that calls [`run`]) and
//! kills it at a deadline, so a service's CPU and its build slot are back
//! when the deadline passes. The child also keeps Cranelift's memory out of
//! the service's heap.
//!
//! The protocol is private to one binary: the parent writes the module to a
//! private temporary directory; the child writes `<profile>.cwasm` there and
//! prints one line per finished target, `done <profile> <millis> <hash>`,
//! then `cache <hits> <misses>`. The parent holds the child's stdin open;
//! the child exits when it closes, so a parent that dies (even by SIGKILL)
//! leaves no compile running.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thaw_core::TargetProfile;

use crate::{CompileError, CompiledArtifact, Compiler, IncrementalCache};

/// Default [`Worker`] deadline: far above the seconds a real Go module
/// takes per target.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(300);

/// The most of a child's stderr kept for an error message.
const MAX_STDERR: u64 = 16 << 10;

/// How to start a compile child, and how long it may run.
#[derive(Clone, Debug)]
pub struct Worker {
    program: PathBuf,
    args: Vec<OsString>,
    deadline: Duration,
}

impl Worker {
    /// Runs `program args... --module M --out D --target T...` for each
    /// compile; the program must call [`run`] with those values.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>, deadline: Duration) -> Self {
        Self {
            program: program.into(),
            args,
            deadline,
        }
    }

    /// Compiles in a child, killed if it is not done by the deadline.
    pub(crate) fn compile(
        &self,
        wasm: &[u8],
        targets: &[&'static TargetProfile],
        cache: &IncrementalCache,
        on_done: impl Fn(&CompiledArtifact),
    ) -> Result<Vec<CompiledArtifact>, CompileError> {
        let failed = |what: &str, source: std::io::Error| CompileError::Worker {
            reason: format!("{what}: {source}"),
        };
        let dir = tempfile::tempdir().map_err(|e| failed("creating a work directory", e))?;
        let module = dir.path().join("module.wasm");
        std::fs::write(&module, wasm).map_err(|e| failed("writing the module", e))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .arg("--module")
            .arg(&module)
            .arg("--out")
            .arg(dir.path());
        for target in targets {
            command.arg("--target").arg(target.name);
        }
        if let Some(cache_dir) = cache.directory() {
            command.arg("--cache-dir").arg(cache_dir);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(&format!("starting {}", self.program.display()), e))?;
        let started = Instant::now();
        // Dropped when this function returns: the child's signal to stop.
        let _lifeline = child.stdin.take();

        let (lines, received) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = (&mut stderr).take(MAX_STDERR).read_to_string(&mut text);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            text
        });

        let mut artifacts = Vec::new();
        loop {
            let left = self.deadline.saturating_sub(started.elapsed());
            match received.recv_timeout(left) {
                Ok(line) => match parse_line(&line, targets, dir.path(), cache) {
                    Ok(Some(artifact)) => {
                        on_done(&artifact);
                        artifacts.push(artifact);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e);
                    }
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CompileError::TimedOut {
                        deadline: self.deadline,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Stdout closed: the child is exiting.
        let status = child
            .wait()
            .map_err(|e| failed("waiting for the child", e))?;
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            let said = stderr.trim();
            return Err(CompileError::Worker {
                reason: format!("the compile process {status}: {said}"),
            });
        }
        if artifacts.len() != targets.len() {
            return Err(CompileError::Worker {
                reason: format!(
                    "the compile process produced {} of {} targets",
                    artifacts.len(),
                    targets.len()
                ),
            });
        }
        Ok(artifacts)
    }
}

/// One line of the child's report: an artifact, or cache statistics.
fn parse_line(
    line: &str,
    targets: &[&'static TargetProfile],
    dir: &Path,
    cache: &IncrementalCache,
) -> Result<Option<CompiledArtifact>, CompileError> {
    let bad = || CompileError::Worker {
        reason: format!("unexpected report from the compile process: {line:?}"),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["done", profile, millis, hash] => {
            let target = *targets
                .iter()
                .find(|t| t.name == *profile)
                .ok_or_else(bad)?;
            let bytes =
                std::fs::read(artifact_path(dir, target)).map_err(|e| CompileError::Worker {
                    reason: format!("reading the artifact for {profile}: {e}"),
                })?;
            Ok(Some(CompiledArtifact {
                target,
                bytes,
                compatibility_hash: hash.parse().map_err(|_| bad())?,
                elapsed: Duration::from_millis(millis.parse().map_err(|_| bad())?),
            }))
        }
        ["cache", hits, misses] => {
            cache.count(
                hits.parse().map_err(|_| bad())?,
                misses.parse().map_err(|_| bad())?,
            );
            Ok(None)
        }
        _ => Err(bad()),
    }
}

fn artifact_path(dir: &Path, target: &TargetProfile) -> PathBuf {
    dir.join(format!("{}.cwasm", target.name))
}

/// The child's side: compiles `module` for `targets` into `out`, reporting
/// on stdout as the parent expects. Called by the hidden subcommand a
/// [`Worker`] runs.
pub fn run(
    module: &Path,
    out: &Path,
    targets: &[String],
    cache_dir: Option<&Path>,
) -> Result<(), CompileError> {
    let io = |what: String| {
        move |e: std::io::Error| CompileError::Worker {
            reason: format!("{what}: {e}"),
        }
    };
    // The parent never writes: end of input means it is gone.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        std::process::exit(70);
    });
    let targets = targets
        .iter()
        .map(|name| {
            TargetProfile::by_name(name).map_err(|e| CompileError::Worker {
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let compiler = match cache_dir {
        Some(dir) => Compiler::with_cache(
            IncrementalCache::in_directory(dir)
                .map_err(io(format!("opening the cache {}", dir.display())))?,
        ),
        None => Compiler::new(),
    };
    let wasm = std::fs::read(module).map_err(io(format!("reading {}", module.display())))?;
    let written = std::sync::Mutex::new(Ok(()));
    compiler.compile_here(&wasm, &targets, |artifact| {
        let path = artifact_path(out, artifact.target);
        let result = std::fs::write(&path, &artifact.bytes)
            .map_err(io(format!("writing {}", path.display())));
        match result {
            Ok(()) => println!(
                "done {} {} {}",
                artifact.target.name,
                artifact.elapsed.as_millis(),
                artifact.compatibility_hash
            ),
            Err(e) => *written.lock().unwrap() = Err(e),
        }
    })?;
    written.into_inner().unwrap()?;
    let (hits, misses) = compiler.cache().stats();
    println!("cache {hits} {misses}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that runs a shell script in place of the compile child
    /// (the protocol's arguments land in `$@`, unused).
    fn script(text: &str, deadline: Duration) -> Worker {
        Worker::new("sh", vec!["-c".into(), text.into(), "sh".into()], deadline)
    }

    fn compile(worker: &Worker) -> Result<Vec<CompiledArtifact>, CompileError> {
        let target = TargetProfile::by_name("x86_64-unknown-linux-gnu").unwrap();
        let cache = IncrementalCache::in_memory(1 << 20);
        worker.compile(b"\0asm\x01\0\0\0", &[target], &cache, |_| {})
    }

    #[test]
    fn a_child_past_its_deadline_is_killed() {
        let started = Instant::now();
        let err = compile(&script("sleep 30", Duration::from_millis(200))).unwrap_err();
        assert!(matches!(err, CompileError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_failing_or_confused_child_is_reported_with_what_it_said() {
        let err = compile(&script("echo boom >&2; exit 3", DEFAULT_COMPILE_TIMEOUT)).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let err = compile(&script("echo nonsense", DEFAULT_COMPILE_TIMEOUT)).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
        let err = compile(&script("true", DEFAULT_COMPILE_TIMEOUT)).unwrap_err();
        assert!(err.to_string().contains("0 of 1"), "{err}");
    }
}
