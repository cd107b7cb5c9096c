//! Foreign functions: `proxy_call_foreign_function`, calling what the test registered.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, read, read_str};
use crate::host::abi::Status;
use crate::host::state::VmState;

/// Adds the foreign function call.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut c: C<'_>,
         np: i32,
         nl: i32,
         ap: i32,
         al: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let (name, args) = match (read_str(&mut c, np, nl), read(&mut c, ap, al)) {
                (Ok(n), Ok(a)) => (n, a),
                (Err(s), _) | (_, Err(s)) => return Ok(s.into()),
            };
            let f = c.data().shared.lock().foreign.get(&name).cloned();
            // Envoy answers NotFound for a function it does not provide.
            let Some(f) = f else {
                return Ok(Status::NotFound.into());
            };
            match f(&args) {
                Ok(out) => Ok(code(give(&mut c, &out, ret_ptr, ret_size)?)),
                Err(status) => Ok(status),
            }
        },
    )?;
    Ok(())
}
