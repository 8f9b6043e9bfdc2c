//! Classifies a submitted module before any of its code runs.

use std::collections::HashSet;

use thaw_core::ModuleKind;
use thaw_core::abi::{COMMAND_EXPORT, HANDLE_EXPORT, PRE_SNAPSHOT_EXPORT, REACTOR_INIT_EXPORT};
use wasmparser::{Encoding, ExternalKind, Parser, Payload, TypeRef, Validator};

use crate::SnapshotError;

/// What [`inspect`] learned about a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Reactor (snapshotted) or command.
    pub kind: ModuleKind,
    /// The export a runner calls per request.
    pub entry: String,
    /// Whether the SDK's pre-snapshot hook is exported.
    pub has_pre_snapshot_hook: bool,
}

/// Validates `wasm` against thaw's feature set and decides how it runs.
///
/// `provided_imports` is the set of functions (module, name) the host
/// defines; any other import is refused here, with its name, rather
/// than at instantiation on an edge host.
pub fn inspect(
    wasm: &[u8],
    provided_imports: &HashSet<(String, String)>,
) -> Result<ModuleInfo, SnapshotError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(SnapshotError::NotWasm {
            reason: match wasm.get(..4) {
                Some(magic) => format!("it starts with {magic:02x?}, not the Wasm magic `\\0asm`"),
                None => format!("it is only {} bytes long", wasm.len()),
            },
        });
    }

    let mut imports = Vec::new();
    let mut exports = HashSet::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(SnapshotError::Invalid)?;
        match payload {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => return Err(SnapshotError::Component),
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(SnapshotError::Invalid)?;
                    imports.push((
                        import.module.to_string(),
                        import.name.to_string(),
                        import.ty,
                    ));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(SnapshotError::Invalid)?;
                    if export.kind == ExternalKind::Func {
                        exports.insert(export.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    // Checked before validation: a GOOS=js module is valid Wasm, and "wrong
    // GOOS" is the useful thing to say about it.
    if imports
        .iter()
        .any(|(module, _, _)| module == "gojs" || module == "go")
    {
        return Err(SnapshotError::NotWasip1 {
            reason: "it imports the `gojs` module: it was built with GOOS=js; rebuild with \
                     GOOS=wasip1 GOARCH=wasm"
                .into(),
        });
    }
    for (module, name, ty) in &imports {
        let provided = matches!(ty, TypeRef::Func(_))
            && provided_imports.contains(&(module.clone(), name.clone()));
        if !provided {
            return Err(SnapshotError::UnsupportedImport {
                module: module.clone(),
                name: name.clone(),
            });
        }
    }

    Validator::new_with_features(thaw_engine::profile::wasm_features())
        .validate_all(wasm)
        .map_err(SnapshotError::Invalid)?;

    let reactor = exports.contains(REACTOR_INIT_EXPORT);
    let command = exports.contains(COMMAND_EXPORT);
    match (reactor, command) {
        (true, _) => {
            if !exports.contains(HANDLE_EXPORT) {
                return Err(SnapshotError::MissingEntryPoint);
            }
            Ok(ModuleInfo {
                kind: ModuleKind::Reactor,
                entry: HANDLE_EXPORT.into(),
                has_pre_snapshot_hook: exports.contains(PRE_SNAPSHOT_EXPORT),
            })
        }
        (false, true) => Ok(ModuleInfo {
            kind: ModuleKind::Command,
            entry: COMMAND_EXPORT.into(),
            has_pre_snapshot_hook: false,
        }),
        (false, false) => Err(SnapshotError::NotWasip1 {
            reason: format!(
                "it exports neither `{REACTOR_INIT_EXPORT}` (a reactor: build with \
                 -buildmode=c-shared) nor `{COMMAND_EXPORT}` (a command)"
            ),
        }),
    }
}
