//! WASI preview1 (`wasi_snapshot_preview1`): the subset Envoy implements for proxy-wasm
//! modules. Standard output and error go to the log; there are no files, environment or
//! arguments; the clock is the test's.

use rand::RngCore as _;
use wasmtime::{Linker, Result};

use super::{C, idx, read, write};
use crate::host::abi::LogLevel;
use crate::host::state::VmState;

const WASI: &str = "wasi_snapshot_preview1";
/// WASI errno: bad file descriptor.
const BADF: i32 = 8;
/// WASI errno: bad address.
const FAULT: i32 = 21;
/// WASI errno: function not supported.
const NOSYS: i32 = 52;

/// `fd_write`: standard output is logged at info, standard error at error (trailing
/// whitespace trimmed); other descriptors are bad.
fn fd_write(mut c: C<'_>, fd: i32, iovs: i32, n: i32, ret: i32) -> i32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return BADF,
    };
    let mut out = Vec::new();
    for i in 0..idx(n) {
        let Ok(iov) = read(&mut c, iovs.wrapping_add((i * 8) as i32), 8) else {
            return FAULT;
        };
        let word = |k: usize| {
            iov.get(k..k + 4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_le_bytes)
        };
        let (Some(p), Some(len)) = (word(0), word(4)) else {
            return FAULT;
        };
        match read(&mut c, p, len) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(_) => return FAULT,
        }
    }
    let written = out.len() as u32;
    let text = String::from_utf8_lossy(&out).trim_end().to_owned();
    if !text.is_empty() {
        c.data().log(level, text);
    }
    if write(&mut c, ret, &written.to_le_bytes()).is_err() {
        FAULT
    } else {
        0
    }
}

/// Adds the WASI functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(WASI, name, |mut c: C<'_>, count: i32, size: i32| -> i32 {
            let r = write(&mut c, count, &0u32.to_le_bytes())
                .and_then(|()| write(&mut c, size, &0u32.to_le_bytes()));
            if r.is_err() { FAULT } else { 0 }
        })?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(WASI, name, |_c: C<'_>, _a: i32, _b: i32| -> i32 { 0 })?;
    }
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, _id: i32, _precision: i64, ret: i32| -> i32 {
            let now = c.data().shared.lock().clock_ns;
            if write(&mut c, ret, &now.to_le_bytes()).is_err() {
                FAULT
            } else {
                0
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: C<'_>, ptr: i32, len: i32| -> i32 {
            let mut buf = vec![0u8; idx(len)];
            rand::rngs::OsRng.fill_bytes(&mut buf);
            if write(&mut c, ptr, &buf).is_err() {
                FAULT
            } else {
                0
            }
        },
    )?;
    linker.func_wrap(WASI, "proc_exit", |_c: C<'_>, code: i32| -> Result<()> {
        Err(wasmtime::Error::msg(format!(
            "the module called proc_exit({code})"
        )))
    })?;
    linker.func_wrap(WASI, "sched_yield", |_c: C<'_>| -> i32 { 0 })?;
    linker.func_wrap(WASI, "fd_close", |_c: C<'_>, _fd: i32| -> i32 { BADF })?;
    linker.func_wrap(
        WASI,
        "fd_fdstat_get",
        |_c: C<'_>, _fd: i32, _p: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_get",
        |_c: C<'_>, _fd: i32, _p: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: i32, _p: i32, _l: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        WASI,
        "fd_read",
        |_c: C<'_>, _fd: i32, _i: i32, _n: i32, _r: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |_c: C<'_>, _fd: i32, _o: i64, _w: i32, _r: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        WASI,
        "poll_oneoff",
        |_c: C<'_>, _a: i32, _b: i32, _n: i32, _r: i32| -> i32 { NOSYS },
    )?;
    Ok(())
}
