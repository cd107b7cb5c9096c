//! Shared queues: registering, resolving, enqueuing to and dequeuing from the queues VMs
//! share.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, give, idx, read, read_str, write};
use crate::host::abi::Status;
use crate::host::state::{Queue, VmState};

/// Adds the shared queue functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, ret: i32| -> i32 {
            let r = (|| {
                let name = read_str(&mut c, np, nl)?;
                let (vm, ctx, vm_id) = (c.data().index, c.data().effective, c.data().vm_id.clone());
                let shared = c.data().shared.clone();
                let id = {
                    let mut sh = shared.lock();
                    if let Some(pos) = sh
                        .queues
                        .iter()
                        .position(|q| q.vm_id == vm_id && q.name == name)
                    {
                        if let Some(q) = sh.queues.get_mut(pos) {
                            q.owner_vm = vm;
                            q.owner_context = ctx;
                        }
                        pos + 1
                    } else {
                        sh.queues.push(Queue {
                            vm_id,
                            name,
                            owner_vm: vm,
                            owner_context: ctx,
                            ..Queue::default()
                        });
                        sh.queues.len()
                    }
                };
                write(&mut c, ret, &(id as u32).to_le_bytes())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> i32 {
            let r = (|| {
                let vm_id = read_str(&mut c, vp, vl)?;
                let name = read_str(&mut c, np, nl)?;
                let pos = c
                    .data()
                    .shared
                    .lock()
                    .queues
                    .iter()
                    .position(|q| q.vm_id == vm_id && q.name == name)
                    .ok_or(Status::NotFound)?;
                write(&mut c, ret, &((pos + 1) as u32).to_le_bytes())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let item = {
                let shared = c.data().shared.clone();
                let mut sh = shared.lock();
                match idx(id).checked_sub(1).and_then(|i| sh.queues.get_mut(i)) {
                    None => return Ok(Status::NotFound.into()),
                    Some(q) => q.items.pop_front(),
                }
            };
            match item {
                None => Ok(Status::Empty.into()),
                Some(v) => Ok(code(give(&mut c, &v, ret_ptr, ret_size)?)),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vl: i32| -> i32 {
            let r = (|| {
                let value = read(&mut c, vp, vl)?;
                let shared = c.data().shared.clone();
                let mut sh = shared.lock();
                let q = idx(id)
                    .checked_sub(1)
                    .and_then(|i| sh.queues.get_mut(i))
                    .ok_or(Status::NotFound)?;
                q.items.push_back(value);
                sh.ready_queues.push(id as u32);
                Ok(())
            })();
            code(r)
        },
    )?;
    Ok(())
}
