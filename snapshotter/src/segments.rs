//! The post-pass that makes Wizer's snapshots of Go modules loadable.
//!
//! Go's linker can emit exactly 100,000 data segments, wasmtime's limit.
//! Wizer turns every original segment into an empty passive one (their
//! contents now live in the snapshot's memory image) and appends its own
//! segments, so the snapshot exceeds the limit and wasmtime refuses it.
//! Empty passive segments are dead weight unless code names them by index
//! (`memory.init`, `data.drop`), so this pass drops them when no code does.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasmparser::{DataKind, Operator, Parser, Payload};

/// A module the post-pass cannot parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed module: {0}")]
pub struct MalformedModule(String);

impl From<wasmparser::BinaryReaderError> for MalformedModule {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        Self(e.to_string())
    }
}

/// The result of [`strip_empty_passive_segments`].
#[derive(Debug)]
pub struct Stripped {
    /// The rewritten module (or the input, if nothing was removed).
    pub wasm: Vec<u8>,
    /// How many segments were removed.
    pub removed: usize,
}

/// Removes empty passive data segments from `wasm` and fixes the DataCount
/// section. Returns the module unchanged when its code refers to data
/// segments by index, since renumbering would then change its meaning.
pub fn strip_empty_passive_segments(wasm: &[u8]) -> Result<Stripped, MalformedModule> {
    let mut empty_passive = 0usize;
    let mut code_uses_segment_indices = false;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data?;
                    if matches!(data.kind, DataKind::Passive) && data.data.is_empty() {
                        empty_passive += 1;
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                while !ops.eof() {
                    if matches!(
                        ops.read()?,
                        Operator::MemoryInit { .. } | Operator::DataDrop { .. }
                    ) {
                        code_uses_segment_indices = true;
                    }
                }
            }
            _ => {}
        }
    }
    if empty_passive == 0 || code_uses_segment_indices {
        return Ok(Stripped {
            wasm: wasm.to_vec(),
            removed: 0,
        });
    }

    let mut out = Vec::with_capacity(wasm.len());
    let mut reencoder = RoundtripReencoder;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        match &payload {
            Payload::Version { range, .. } => out.extend_from_slice(&wasm[range.clone()]),
            Payload::DataCountSection { count, .. } => {
                push_section(
                    &mut out,
                    &wasm_encoder::DataCountSection {
                        count: count.checked_sub(empty_passive as u32).ok_or_else(|| {
                            MalformedModule("DataCount is smaller than the data section".into())
                        })?,
                    },
                );
            }
            Payload::DataSection(reader) => {
                let mut section = wasm_encoder::DataSection::new();
                for data in reader.clone() {
                    let data = data?;
                    if matches!(data.kind, DataKind::Passive) && data.data.is_empty() {
                        continue;
                    }
                    reencoder
                        .parse_data(&mut section, data)
                        .map_err(|e| MalformedModule(e.to_string()))?;
                }
                push_section(&mut out, &section);
            }
            // Code entries are covered by the code section's own range.
            Payload::CodeSectionEntry(_) | Payload::End(_) => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    push_section(
                        &mut out,
                        &wasm_encoder::RawSection {
                            id,
                            data: &wasm[range],
                        },
                    );
                }
            }
        }
    }
    Ok(Stripped {
        wasm: out,
        removed: empty_passive,
    })
}

fn push_section(out: &mut Vec<u8>, section: &impl wasm_encoder::Section) {
    section.append_to(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, ConstExpr, DataCountSection, DataSection, Function, FunctionSection,
        Instruction, MemorySection, MemoryType, Module, TypeSection,
    };

    fn module(segments: usize, use_memory_init: bool) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        m.section(&funcs);
        let mut mem = MemorySection::new();
        mem.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&mem);
        m.section(&DataCountSection {
            count: segments as u32 + 1,
        });
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        if use_memory_init {
            f.instruction(&Instruction::I32Const(0));
            f.instruction(&Instruction::I32Const(0));
            f.instruction(&Instruction::I32Const(0));
            f.instruction(&Instruction::MemoryInit {
                mem: 0,
                data_index: 0,
            });
        }
        f.instruction(&Instruction::End);
        code.function(&f);
        m.section(&code);
        let mut data = DataSection::new();
        for _ in 0..segments {
            data.passive([]);
        }
        data.active(0, &ConstExpr::i32_const(16), *b"kept");
        m.section(&data);
        m.finish()
    }

    fn data_count(wasm: &[u8]) -> (u32, usize) {
        let mut declared = 0;
        let mut actual = 0;
        for p in Parser::new(0).parse_all(wasm) {
            match p.unwrap() {
                Payload::DataCountSection { count, .. } => declared = count,
                Payload::DataSection(r) => actual = r.count() as usize,
                _ => {}
            }
        }
        (declared, actual)
    }

    #[test]
    fn drops_empty_passive_segments_and_keeps_the_rest_valid() {
        let wasm = module(1000, false);
        let out = strip_empty_passive_segments(&wasm).unwrap();
        assert_eq!(out.removed, 1000);
        wasmparser::Validator::new()
            .validate_all(&out.wasm)
            .unwrap();
        assert_eq!(data_count(&out.wasm), (1, 1));
    }

    #[test]
    fn leaves_modules_that_index_segments_alone() {
        let wasm = module(10, true);
        let out = strip_empty_passive_segments(&wasm).unwrap();
        assert_eq!(out.removed, 0);
        assert_eq!(out.wasm, wasm);
    }

    #[test]
    fn reports_malformed_input() {
        assert!(strip_empty_passive_segments(b"\0asm\x01\0\0\0\x0b\xff").is_err());
    }
}
