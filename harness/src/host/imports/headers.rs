//! Header maps: reading, replacing, adding and removing the headers and trailers of the
//! stream and of HTTP callout responses.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, read, read_str};
use crate::host::abi::{self, Status, map};
use crate::host::state::{VmState, find};

fn headers_mut(st: &mut VmState, map_type: i32) -> Result<&mut abi::Headers, Status> {
    match map_type {
        map::HTTP_CALL_RESPONSE_HEADERS => st
            .call_response
            .as_mut()
            .map(|r| &mut r.headers)
            .ok_or(Status::NotFound),
        map::HTTP_CALL_RESPONSE_TRAILERS => st
            .call_response
            .as_mut()
            .map(|r| &mut r.trailers)
            .ok_or(Status::NotFound),
        _ => {
            let s = st.stream().ok_or(Status::BadArgument)?;
            match map_type {
                map::HTTP_REQUEST_HEADERS => Ok(&mut s.request_headers),
                map::HTTP_REQUEST_TRAILERS => Ok(&mut s.request_trailers),
                map::HTTP_RESPONSE_HEADERS => Ok(&mut s.response_headers),
                map::HTTP_RESPONSE_TRAILERS => Ok(&mut s.response_trailers),
                _ => Err(Status::BadArgument),
            }
        }
    }
}

/// Adds the header map functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, ty: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let bytes = match headers_mut(c.data_mut(), ty) {
                Ok(h) => abi::encode_map(h),
                Err(s) => return Ok(s.into()),
            };
            Ok(code(give(&mut c, &bytes, ret_ptr, ret_size)?))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, ty: i32, ptr: i32, len: i32| -> i32 {
            let r = (|| {
                let pairs =
                    abi::decode_map(&read(&mut c, ptr, len)?).ok_or(Status::ParseFailure)?;
                *headers_mut(c.data_mut(), ty)? = pairs;
                Ok(())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return Ok(s.into()),
            };
            let value = match headers_mut(c.data_mut(), ty) {
                Ok(h) => find(h, &key).map(<[u8]>::to_vec),
                Err(s) => return Ok(s.into()),
            };
            match value {
                None => Ok(Status::NotFound.into()),
                Some(v) => Ok(code(give(&mut c, &v, ret_ptr, ret_size)?)),
            }
        },
    )?;
    for (name, replace) in [
        ("proxy_replace_header_map_value", true),
        ("proxy_add_header_map_value", false),
    ] {
        linker.func_wrap(
            ENV,
            name,
            move |mut c: C<'_>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                let r = (|| {
                    let key = read_str(&mut c, kp, kl)?.to_ascii_lowercase();
                    let value = read(&mut c, vp, vl)?;
                    let h = headers_mut(c.data_mut(), ty)?;
                    if replace {
                        h.retain(|(k, _)| *k != key);
                    }
                    h.push((key, value));
                    Ok(())
                })();
                code(r)
            },
        )?;
    }
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, ty: i32, kp: i32, kl: i32| -> i32 {
            let r = (|| {
                let key = read_str(&mut c, kp, kl)?.to_ascii_lowercase();
                headers_mut(c.data_mut(), ty)?.retain(|(k, _)| *k != key);
                Ok(())
            })();
            code(r)
        },
    )?;
    Ok(())
}
