//! The `name` custom section, which artifacts are compiled without unless a
//! build asks to keep it.
//!
//! wasmtime decodes a module's function names every time it loads an
//! artifact, whether or not anything asks for them. A Go module names
//! every function (`examples/hello`: 4,786), and deserializing hello's
//! artifact took 620 µs with them against 530 µs without (medians of four
//! alternating rounds of 40 loads), nearly a tenth of a function's cold
//! first request. Go reports its own panics with Go's function names
//! either way; only a trap in the Go runtime's or the SDK's wasm code
//! shows `<wasm function N>` instead of a name. The snapshot stored with
//! every build keeps the section, so an index can still be named, and
//! `keep_names` builds artifacts that name functions themselves.

use wasmparser::{Chunk, Parser, Payload};

/// `wasm` without its `name` custom section; `None` when it has none, or
/// when it does not parse (compiling it then says why).
pub(crate) fn without_names(wasm: &[u8]) -> Option<Vec<u8>> {
    let mut parser = Parser::new(0);
    let mut rest = wasm;
    let mut kept = Vec::with_capacity(wasm.len());
    let mut found = false;
    loop {
        let Ok(Chunk::Parsed { consumed, payload }) = parser.parse(rest, true) else {
            return None;
        };
        let (section, keep) = match payload {
            Payload::CustomSection(custom) if custom.name() == "name" => {
                found = true;
                (consumed, false)
            }
            // The function bodies are copied whole, not parsed one by one.
            Payload::CodeSectionStart { size, .. } => {
                parser.skip_section();
                (consumed + size as usize, true)
            }
            Payload::End(_) => break,
            _ => (consumed, true),
        };
        let (bytes, after) = rest.split_at_checked(section)?;
        if keep {
            kept.extend_from_slice(bytes);
        }
        rest = after;
    }
    found.then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, CustomSection, ExportKind, ExportSection, Function, FunctionSection,
        IndirectNameMap, Instruction, Module, NameMap, NameSection, TypeSection,
    };

    fn module(named: bool) -> Vec<u8> {
        let mut module = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut exports = ExportSection::new();
        exports.export("_start", ExportKind::Func, 0);
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut body = Function::new([]);
        body.instruction(&Instruction::Unreachable);
        body.instruction(&Instruction::End);
        code.function(&body);
        module.section(&code);
        module.section(&CustomSection {
            name: "producers".into(),
            data: b"\0".as_slice().into(),
        });
        if named {
            let mut names = NameSection::new();
            let mut functions = NameMap::new();
            functions.append(0, "boom");
            names.functions(&functions);
            names.locals(&IndirectNameMap::new());
            module.section(&names);
        }
        module.finish()
    }

    #[test]
    fn only_the_name_section_is_left_out() {
        let stripped = without_names(&module(true)).unwrap();
        assert_eq!(stripped, module(false));
        wasmparser::Validator::new()
            .validate_all(&stripped)
            .unwrap();
    }

    #[test]
    fn a_module_without_names_or_that_does_not_parse_is_left_alone() {
        assert_eq!(without_names(&module(false)), None);
        let mut truncated = module(true);
        truncated.truncate(truncated.len() / 2);
        assert_eq!(without_names(&truncated), None);
        assert_eq!(without_names(b"not wasm"), None);
    }
}
