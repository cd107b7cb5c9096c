//! HTTP callouts: `proxy_http_call`, recorded for the test to answer.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, read, read_str, write};
use crate::host::abi::{self, Status};
use crate::host::state::{HttpCall, VmState, find};

/// Adds the HTTP callout function.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         ret: i32|
         -> i32 {
            let r = (|| {
                let upstream = read_str(&mut c, up, ul)?;
                let headers =
                    abi::decode_map(&read(&mut c, hp, hl)?).ok_or(Status::ParseFailure)?;
                let body = read(&mut c, bp, bl)?;
                let trailers =
                    abi::decode_map(&read(&mut c, tp, tl)?).ok_or(Status::ParseFailure)?;
                // Envoy refuses callouts to unknown clusters and without the three pseudo-headers.
                if [":method", ":path", ":authority"]
                    .iter()
                    .any(|h| find(&headers, h).is_none())
                {
                    return Err(Status::BadArgument);
                }
                let (vm, context_id) = (c.data().index, c.data().effective);
                let shared = c.data().shared.clone();
                let token = {
                    let mut sh = shared.lock();
                    if !sh.upstreams.contains(&upstream) {
                        return Err(Status::BadArgument);
                    }
                    sh.next_token = sh.next_token.wrapping_add(1).max(1);
                    let token = sh.next_token;
                    let deadline_ns = sh.clock_ns + u64::from(timeout as u32) * 1_000_000;
                    sh.http_calls.push(HttpCall {
                        token,
                        vm,
                        context_id,
                        upstream,
                        headers,
                        body,
                        trailers,
                        timeout_ms: timeout as u32,
                        deadline_ns,
                    });
                    token
                };
                write(&mut c, ret, &token.to_le_bytes())
            })();
            code(r)
        },
    )?;
    Ok(())
}
