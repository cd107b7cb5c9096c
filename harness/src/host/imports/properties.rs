//! Properties: `proxy_get_property` and `proxy_set_property`, with the values Envoy derives
//! from the request headers.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, read};
use crate::host::abi::Status;
use crate::host::state::{VmState, find};

/// Envoy's encoding of a property value: strings as bytes, integers as 8-byte little endian.
fn property(st: &mut VmState, path: &str) -> Option<Vec<u8>> {
    let plugin = |v: &str| Some(v.as_bytes().to_vec());
    match path {
        "plugin_vm_id" => return plugin(&st.vm_id),
        "plugin_root_id" | "plugin_name" => {
            if let Some(v) = st.plugin_properties.get(path) {
                return Some(v.clone());
            }
        }
        _ => {}
    }
    if let Some(s) = st.stream() {
        if let Some(v) = s.properties.get(path) {
            return Some(v.clone());
        }
        let h = |name: &str| find(&s.request_headers, name).map(<[u8]>::to_vec);
        let derived = match path {
            "request.path" => h(":path"),
            "request.url_path" => find(&s.request_headers, ":path")
                .map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()),
            "request.host" => h(":authority"),
            "request.method" => h(":method"),
            "request.scheme" => h(":scheme"),
            "request.id" => h("x-request-id"),
            "request.useragent" => h("user-agent"),
            "request.referer" => h("referer"),
            _ => None,
        };
        if derived.is_some() {
            return derived;
        }
    }
    st.plugin_properties.get(path).cloned()
}

/// Adds the property functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let path = match read(&mut c, pp, pl) {
                Ok(p) => String::from_utf8_lossy(&p)
                    .trim_end_matches('\0')
                    .replace('\0', "."),
                Err(s) => return Ok(s.into()),
            };
            match property(c.data_mut(), &path) {
                None => Ok(Status::NotFound.into()),
                Some(v) => Ok(code(give(&mut c, &v, ret_ptr, ret_size)?)),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
            let r = (|| {
                let path = String::from_utf8_lossy(&read(&mut c, pp, pl)?)
                    .trim_end_matches('\0')
                    .replace('\0', ".");
                let value = read(&mut c, vp, vl)?;
                let st = c.data_mut();
                match st.stream() {
                    Some(s) => {
                        s.properties.insert(path, value);
                    }
                    None => {
                        st.plugin_properties.insert(path, value);
                    }
                }
                Ok(())
            })();
            code(r)
        },
    )?;
    Ok(())
}
