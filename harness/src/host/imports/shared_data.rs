//! Shared data: `proxy_get_shared_data` and `proxy_set_shared_data`, a key-value store all
//! VMs of the host share, with compare-and-swap.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, read, write};
use crate::host::abi::Status;
use crate::host::state::VmState;

/// Adds the shared data functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: C<'_>,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_size: i32,
         ret_cas: i32|
         -> Result<i32> {
            let key = match read(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s.into()),
            };
            let found = c.data().shared.lock().shared_data.get(&key).cloned();
            let Some((value, cas)) = found else {
                return Ok(Status::NotFound.into());
            };
            if let Err(s) = give(&mut c, &value, ret_ptr, ret_size)? {
                return Ok(s.into());
            }
            Ok(code(write(&mut c, ret_cas, &cas.to_le_bytes())))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            let r = (|| {
                let key = read(&mut c, kp, kl)?;
                let value = read(&mut c, vp, vl)?;
                let shared = c.data().shared.clone();
                let mut sh = shared.lock();
                let next_cas = sh.next_token.wrapping_add(1).max(1);
                sh.next_token = next_cas;
                match sh.shared_data.get_mut(&key) {
                    Some(entry) => {
                        if cas != 0 && entry.1 != cas as u32 {
                            return Err(Status::CasMismatch);
                        }
                        *entry = (value, next_cas);
                    }
                    None => {
                        sh.shared_data.insert(key, (value, next_cas));
                    }
                }
                Ok(())
            })();
            code(r)
        },
    )?;
    Ok(())
}
