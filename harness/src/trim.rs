//! The filter's module without the per-request callbacks it leaves to the SDK's defaults.
//!
//! `cargo xtask wasm` trims the built filter this way, and the measurements trim the ABI probe
//! the same way so that their no-op baseline pays for the same calls as the filter.

#[path = "../../filter/wasm/src/callbacks.rs"]
mod callbacks;

/// The callbacks the filter leaves to the SDK's defaults, each with the trait method that would
/// implement it; the list is kept beside the glue (`filter/wasm/src/callbacks.rs`).
pub use callbacks::UNUSED_CALLBACKS;

/// The names of [`UNUSED_CALLBACKS`].
pub fn unused_callback_names() -> impl Iterator<Item = &'static str> {
    UNUSED_CALLBACKS.iter().map(|(export, _)| *export)
}

/// `bytes` without [`UNUSED_CALLBACKS`] among its exports (idempotent).
pub fn without_unused_callbacks(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let names: Vec<&str> = unused_callback_names().collect();
    without_exports(bytes, &names)
}

/// The module with the named exports removed; every other section is copied as it is.
pub fn without_exports(bytes: &[u8], names: &[&str]) -> Result<Vec<u8>, String> {
    use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
    use wasmparser::{ExternalKind, Parser, Payload};
    let mut module = Module::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| e.to_string())?;
        if let Payload::ExportSection(reader) = payload {
            let mut exports = ExportSection::new();
            for export in reader {
                let export = export.map_err(|e| e.to_string())?;
                if names.contains(&export.name) {
                    continue;
                }
                let kind = match export.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                    ExternalKind::Table => ExportKind::Table,
                    ExternalKind::Memory => ExportKind::Memory,
                    ExternalKind::Global => ExportKind::Global,
                    ExternalKind::Tag => ExportKind::Tag,
                };
                exports.export(export.name, kind, export.index);
            }
            module.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            let data = bytes
                .get(range)
                .ok_or("a section runs past the end of the module")?;
            module.section(&RawSection { id, data });
        }
    }
    Ok(module.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            if let Ok(wasmparser::Payload::ExportSection(r)) = payload {
                names.extend(
                    r.into_iter()
                        .filter_map(|e| e.ok())
                        .map(|e| e.name.to_owned()),
                );
            }
        }
        names
    }

    #[test]
    fn drops_only_the_named_exports() -> Result<(), String> {
        use wasm_encoder::{
            CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, Module,
            TypeSection,
        };
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        funcs.function(0);
        m.section(&funcs);
        let mut ex = ExportSection::new();
        ex.export("proxy_on_request_headers", ExportKind::Func, 0);
        ex.export("proxy_on_log", ExportKind::Func, 1);
        m.section(&ex);
        let mut code = CodeSection::new();
        for _ in 0..2 {
            let mut f = Function::new([]);
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        m.section(&code);
        let bytes = m.finish();
        let trimmed = without_unused_callbacks(&bytes)?;
        assert_eq!(exports(&trimmed), ["proxy_on_request_headers"]);
        wasmparser::Validator::new()
            .validate_all(&trimmed)
            .map_err(|e| e.to_string())?;
        assert_eq!(without_unused_callbacks(&trimmed)?, trimmed);
        assert!(without_exports(b"\0asm\x01\0\0\0\x07\x05", &[]).is_err());
        Ok(())
    }
}
