//! Buffers: `proxy_get_buffer_bytes` and `proxy_set_buffer_bytes` over the configurations,
//! the request and response bodies, and the bodies of callout responses and gRPC messages.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, idx, read};
use crate::host::abi::{Status, buffer};
use crate::host::state::VmState;

fn buffer_bytes(st: &mut VmState, buffer_type: i32) -> Result<&mut Vec<u8>, Status> {
    match buffer_type {
        buffer::VM_CONFIGURATION => Ok(&mut st.vm_config),
        buffer::PLUGIN_CONFIGURATION => Ok(&mut st.plugin_config),
        buffer::HTTP_CALL_RESPONSE_BODY => st
            .call_response
            .as_mut()
            .map(|r| &mut r.body)
            .ok_or(Status::NotFound),
        buffer::GRPC_RECEIVE_BUFFER => st.grpc_message.as_mut().ok_or(Status::NotFound),
        buffer::HTTP_REQUEST_BODY => st
            .stream()
            .map(|s| &mut s.request_body)
            .ok_or(Status::NotFound),
        buffer::HTTP_RESPONSE_BODY => st
            .stream()
            .map(|s| &mut s.response_body)
            .ok_or(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

/// Adds the buffer functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let bytes = match buffer_bytes(c.data_mut(), ty) {
                Ok(b) => {
                    let start = idx(start).min(b.len());
                    let end = start.saturating_add(idx(max)).min(b.len());
                    b.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
                }
                Err(s) => return Ok(s.into()),
            };
            Ok(code(give(&mut c, &bytes, ret_ptr, ret_size)?))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            let r = (|| {
                let data = read(&mut c, ptr, len)?;
                let b = buffer_bytes(c.data_mut(), ty)?;
                let (start, size) = (idx(start), idx(size));
                if start == 0 && size >= b.len() {
                    *b = data;
                } else if start >= b.len() {
                    b.extend_from_slice(&data);
                } else {
                    let end = start.saturating_add(size).min(b.len());
                    b.splice(start..end, data);
                }
                Ok(())
            })();
            code(r)
        },
    )?;
    Ok(())
}
