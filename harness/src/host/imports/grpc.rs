//! gRPC callouts: unary calls and streams, recorded for the test to answer, and
//! `proxy_get_status` for their outcome.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, read, read_str, write};
use crate::host::abi::{self, Status};
use crate::host::state::{GrpcCall, VmState};

/// Where a gRPC call or stream goes, as read from the guest.
struct GrpcTarget {
    cluster: String,
    service: String,
    method: String,
    metadata: abi::Headers,
}

impl GrpcTarget {
    /// Reads (cluster, service, method, initial metadata) from four pointer/length pairs.
    fn read(c: &mut C<'_>, p: [i32; 8]) -> Result<Self, Status> {
        let [sp, sl, np, nl, mp, ml, ip, il] = p;
        Ok(Self {
            cluster: read_str(c, sp, sl)?,
            service: read_str(c, np, nl)?,
            method: read_str(c, mp, ml)?,
            metadata: abi::decode_map(&read(c, ip, il)?).ok_or(Status::ParseFailure)?,
        })
    }

    /// Records the call and returns its token.
    fn open(
        self,
        c: &C<'_>,
        messages: Vec<Vec<u8>>,
        streaming: bool,
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        let (vm, context_id) = (c.data().index, c.data().effective);
        let mut sh = c.data().shared.lock();
        // Envoy: an unknown gRPC cluster is a ParseFailure (an HTTP one a BadArgument).
        if !sh.upstreams.contains(&self.cluster) {
            return Err(Status::ParseFailure);
        }
        sh.next_token = sh.next_token.wrapping_add(1).max(1);
        let token = sh.next_token;
        sh.grpc_calls.push(GrpcCall {
            token,
            vm,
            context_id,
            cluster: self.cluster,
            service: self.service,
            method: self.method,
            metadata: self.metadata,
            messages,
            streaming,
            timeout_ms,
        });
        Ok(token)
    }
}

/// Adds the gRPC functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_grpc_call",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         gp: i32,
         gl: i32,
         timeout: i32,
         ret: i32|
         -> i32 {
            let r = read(&mut c, gp, gl).and_then(|message| {
                let target = GrpcTarget::read(&mut c, [sp, sl, np, nl, mp, ml, ip, il])?;
                let token = target.open(&c, vec![message], false, timeout as u32)?;
                write(&mut c, ret, &token.to_le_bytes())
            });
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_stream",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         ret: i32|
         -> i32 {
            let r = GrpcTarget::read(&mut c, [sp, sl, np, nl, mp, ml, ip, il]).and_then(|target| {
                let token = target.open(&c, Vec::new(), true, 0)?;
                write(&mut c, ret, &token.to_le_bytes())
            });
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_send",
        |mut c: C<'_>, token: i32, mp: i32, ml: i32, _end: i32| -> i32 {
            let r = (|| {
                let message = read(&mut c, mp, ml)?;
                let shared = c.data().shared.clone();
                let mut sh = shared.lock();
                let call = sh
                    .grpc_calls
                    .iter_mut()
                    .find(|g| g.token == token as u32 && g.streaming)
                    .ok_or(Status::NotFound)?;
                call.messages.push(message);
                Ok(())
            })();
            code(r)
        },
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap(ENV, name, |c: C<'_>, token: i32| -> i32 {
            let mut sh = c.data().shared.lock();
            let before = sh.grpc_calls.len();
            sh.grpc_calls.retain(|g| g.token != token as u32);
            if sh.grpc_calls.len() == before {
                Status::NotFound.into()
            } else {
                0
            }
        })?;
    }
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut c: C<'_>, ret_code: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let (status, message) = c.data().status.clone();
            if let Err(s) = write(&mut c, ret_code, &status.to_le_bytes()) {
                return Ok(s.into());
            }
            Ok(code(give(&mut c, message.as_bytes(), ret_ptr, ret_size)?))
        },
    )?;
    Ok(())
}
