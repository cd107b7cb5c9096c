//! Logging: `proxy_log` and `proxy_get_log_level`.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, read, write};
use crate::host::abi::{LogLevel, Status};
use crate::host::state::VmState;

/// Adds the logging functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let r = (|| {
                let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
                let msg = String::from_utf8_lossy(&read(&mut c, ptr, len)?).into_owned();
                c.data().log(level, msg);
                Ok(())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> i32 {
            let level = c.data().log_level as u32;
            code(write(&mut c, ret, &level.to_le_bytes()))
        },
    )?;
    Ok(())
}
