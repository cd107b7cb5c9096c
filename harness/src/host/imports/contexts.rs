//! Contexts: `proxy_set_effective_context` (acting for another context, as in a callout's
//! callback) and `proxy_done` (a context that deferred its completion finishing).

use wasmtime::{Linker, Result};

use super::{C, ENV};
use crate::host::abi::Status;
use crate::host::state::VmState;

/// Adds the context functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> i32 {
            let st = c.data_mut();
            if st.contexts.contains(&(id as u32)) {
                st.effective = id as u32;
                0
            } else {
                Status::BadArgument.into()
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_done", |mut c: C<'_>| -> i32 {
        c.data_mut().done_called += 1;
        0
    })?;
    Ok(())
}
