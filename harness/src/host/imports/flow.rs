//! HTTP flow control and local replies: `proxy_continue_stream`, `proxy_close_stream` and
//! `proxy_send_local_response`.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, read, read_str};
use crate::host::abi::{self, Status};
use crate::host::state::{LocalReply, VmState};

/// Adds the stream flow and local reply functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut c: C<'_>, ty: i32| -> i32 {
            let r = (|| {
                let s = c.data_mut().stream().ok_or(Status::BadArgument)?;
                match ty {
                    0 => s.continued_request = true,
                    1 => s.continued_response = true,
                    _ => return Err(Status::BadArgument),
                }
                Ok(())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(ENV, "proxy_close_stream", |mut c: C<'_>, _ty: i32| -> i32 {
        code(
            c.data_mut()
                .stream()
                .map(|s| s.closed = true)
                .ok_or(Status::BadArgument),
        )
    })?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> i32 {
            let r = (|| {
                let details = read_str(&mut c, dp, dl)?;
                let body = read(&mut c, bp, bl)?;
                let headers =
                    abi::decode_map(&read(&mut c, hp, hl)?).ok_or(Status::ParseFailure)?;
                let s = c.data_mut().stream().ok_or(Status::BadArgument)?;
                s.local_reply = Some(LocalReply {
                    status: status as u32,
                    details,
                    headers,
                    body,
                    grpc_status: grpc,
                });
                Ok(())
            })();
            code(r)
        },
    )?;
    Ok(())
}
