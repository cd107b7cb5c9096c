//! The host functions: proxy-wasm ABI 0.2.1 (`env`) and the WASI preview1 subset Envoy
//! provides (`wasi_snapshot_preview1`).
//!
//! One module per ABI area, each adding its functions to the linker; the guest memory helpers
//! they share are here.

mod buffers;
mod contexts;
mod flow;
mod foreign;
mod grpc;
mod headers;
mod http_calls;
mod logging;
mod metrics;
mod properties;
mod queues;
mod shared_data;
mod timers;
mod wasi;

use wasmtime::{Caller, Linker, Result};

use super::abi::Status;
use super::state::VmState;

type C<'a> = Caller<'a, VmState>;

/// The proxy-wasm ABI's import module.
const ENV: &str = "env";

/// Guest pointer or length (wasm32 `usize`), as an index.
fn idx(v: i32) -> usize {
    // Reinterpret the i32 as the guest's u32.
    v as u32 as usize
}

/// Copies `len` bytes at `ptr` out of guest memory.
fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = c
        .get_export("memory")
        .and_then(wasmtime::Extern::into_memory)
        .ok_or(Status::InvalidMemoryAccess)?;
    let start = idx(ptr);
    let end = start
        .checked_add(idx(len))
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.data(&*c)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Reads UTF-8 text from guest memory; anything else is a `BadArgument`.
fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(c, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Copies `bytes` into guest memory at `ptr`.
fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = c
        .get_export("memory")
        .and_then(wasmtime::Extern::into_memory)
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.write(&mut *c, idx(ptr), bytes)
        .map_err(|_| Status::InvalidMemoryAccess)
}

/// Copies `data` into guest memory allocated by the guest (`proxy_on_memory_allocate`) and
/// writes its address and size to the two return slots. Traps in the allocator propagate.
fn give(c: &mut C<'_>, data: &[u8], ret_ptr: i32, ret_size: i32) -> Result<Result<(), Status>> {
    let Some(alloc) = c
        .get_export("proxy_on_memory_allocate")
        .and_then(wasmtime::Extern::into_func)
    else {
        return Ok(Err(Status::InternalFailure));
    };
    let Ok(alloc) = alloc.typed::<i32, i32>(&*c) else {
        return Ok(Err(Status::InternalFailure));
    };
    let len = i32::try_from(data.len()).map_err(|_| wasmtime::Error::msg("buffer over 2 GiB"))?;
    let ptr = alloc.call(&mut *c, len)?;
    if ptr == 0 && len > 0 {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    Ok(write(c, ptr, data)
        .and_then(|()| write(c, ret_ptr, &ptr.to_le_bytes()))
        .and_then(|()| write(c, ret_size, &len.to_le_bytes())))
}

/// The status code a host function returns for `r` (`Ok` is 0).
fn code(r: Result<(), Status>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(s) => s.into(),
    }
}

/// Adds every host function the filter may import.
pub(crate) fn add_to_linker(linker: &mut Linker<VmState>) -> Result<()> {
    logging::add(linker)?;
    timers::add(linker)?;
    buffers::add(linker)?;
    headers::add(linker)?;
    properties::add(linker)?;
    shared_data::add(linker)?;
    queues::add(linker)?;
    flow::add(linker)?;
    http_calls::add(linker)?;
    grpc::add(linker)?;
    contexts::add(linker)?;
    foreign::add(linker)?;
    metrics::add(linker)?;
    wasi::add(linker)
}
