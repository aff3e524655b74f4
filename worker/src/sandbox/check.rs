//! Cheap checks on a module's bytes before compiling it, so hostile modules get a precise
//! outcome (and never reach the compiler when they cannot run anyway).

use ova_jobs::{Outcome, Resource};
use wasmtime::wasmparser::{Parser, Payload};

/// Checks size, magic, "component, not a module", and table sizes against `max_table_elements`.
/// Malformed sections are left for the compiler's validator to describe.
pub fn precheck(
    bytes: &[u8],
    max_module_bytes: usize,
    max_table_elements: usize,
) -> Result<(), Outcome> {
    let invalid = |reason: String| Err(Outcome::InvalidModule { reason });
    if bytes.len() > max_module_bytes {
        return invalid(format!(
            "module is {} bytes; this peer accepts at most {max_module_bytes}",
            bytes.len()
        ));
    }
    if !bytes.starts_with(b"\0asm") {
        return invalid("not a WebAssembly binary (no \\0asm magic)".into());
    }
    if Parser::is_component(bytes) {
        return invalid(
            "this is a WebAssembly component; Ova runs WASI preview-1 core modules \
             (build for wasm32-wasip1)"
                .into(),
        );
    }
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        if let Payload::TableSection(reader) = payload {
            for table in reader.into_iter().flatten() {
                if table.ty.initial > max_table_elements as u64 {
                    return Err(Outcome::OutOfMemory {
                        resource: Resource::Table,
                        requested: table.ty.initial,
                        limit: max_table_elements as u64,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Describes a compilation error as an invalid-module reason (the whole error chain, short).
pub fn compile_error_reason(e: &wasmtime::Error) -> String {
    let mut s = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
    if s.len() > 500 {
        let mut cut = 500;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
