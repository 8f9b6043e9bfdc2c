//! Where thaw meets wasmtime's runtime: the engine profile every artifact
//! is compiled and loaded with, the WASI sandbox guests see, and one
//! guest instance's store, limits and failures.
//!
//! - [`profile`]: every engine setting that must match between the engine
//!   that compiles an artifact and the one that loads it, and the epoch
//!   ticker deadlines are counted in.
//! - [`sandbox`]: the WASI context guests get, at build and at run time.
//! - [`guest`]: a guest's store: memory cap, deadline, and how a call
//!   failed.
//! - [`outbound`]: outbound HTTP, the one capability beyond WASI, granted
//!   per origin; the host brings the HTTP client.
//!
//! This crate links wasmtime's runtime but never its compiler, so the
//! runner can depend on it; the snapshotter and the compiler add theirs.
//!
//! ```
//! let engine = wasmtime::Engine::new(&thaw_engine::profile::engine_config()).unwrap();
//! thaw_engine::profile::EpochTicker::start(&engine);
//! let linker = thaw_engine::guest::linker(&engine).unwrap();
//! # drop(linker);
//! ```

#![warn(missing_docs)]

pub mod guest;
pub mod outbound;
pub mod profile;
pub mod sandbox;
