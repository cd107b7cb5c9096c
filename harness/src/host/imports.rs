//! The host functions: proxy-wasm ABI 0.2.1 (`env`) and the WASI preview1 subset Envoy
//! provides (`wasi_snapshot_preview1`).

use rand::RngCore as _;
use wasmtime::{Caller, Linker, Result};

use super::abi::{self, LogLevel, MetricKind, Status, buffer, map};
use super::state::{GrpcCall, HttpCall, LocalReply, Metric, Queue, VmState, find};

type C<'a> = Caller<'a, VmState>;

/// Guest pointer or length (wasm32 `usize`), as an index.
fn idx(v: i32) -> usize {
    // Reinterpret the i32 as the guest's u32.
    v as u32 as usize
}

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

fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(c, ptr, len)?).map_err(|_| Status::BadArgument)
}

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

fn code(r: Result<(), Status>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(s) => s.into(),
    }
}

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

#[expect(
    clippy::too_many_lines,
    reason = "one registration per ABI function, kept together"
)]
pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    const ENV: &str = "env";

    l.func_wrap(
        ENV,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let r = (|| {
                let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
                let msg = String::from_utf8_lossy(&read(&mut c, ptr, len)?).into_owned();
                c.data().log(level, msg);
                Ok(())
            })();
            code(r)
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> i32 {
            let level = c.data().log_level as u32;
            code(write(&mut c, ret, &level.to_le_bytes()))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> i32 {
            let now = c.data().shared.lock().clock_ns;
            code(write(&mut c, ret, &now.to_le_bytes()))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> i32 {
            let st = c.data_mut();
            let now = st.shared.lock().clock_ns;
            st.tick_period_ms = period as u32;
            st.next_tick_ns = (period != 0).then(|| now + u64::from(period as u32) * 1_000_000);
            0
        },
    )?;
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
        l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(ENV, "proxy_close_stream", |mut c: C<'_>, _ty: i32| -> i32 {
        code(
            c.data_mut()
                .stream()
                .map(|s| s.closed = true)
                .ok_or(Status::BadArgument),
        )
    })?;
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(
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
        l.func_wrap(ENV, name, |c: C<'_>, token: i32| -> i32 {
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
    l.func_wrap(
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
    l.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> i32 {
            let st = c.data_mut();
            if st.contexts.contains(&(id as u32)) {
                st.effective = id as u32;
                0
            } else {
                Status::BadArgument.into()
            }
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut c: C<'_>,
         np: i32,
         nl: i32,
         ap: i32,
         al: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let (name, args) = match (read_str(&mut c, np, nl), read(&mut c, ap, al)) {
                (Ok(n), Ok(a)) => (n, a),
                (Err(s), _) | (_, Err(s)) => return Ok(s.into()),
            };
            let f = c.data().shared.lock().foreign.get(&name).cloned();
            // Envoy answers NotFound for a function it does not provide.
            let Some(f) = f else {
                return Ok(Status::NotFound.into());
            };
            match f(&args) {
                Ok(out) => Ok(code(give(&mut c, &out, ret_ptr, ret_size)?)),
                Err(status) => Ok(status),
            }
        },
    )?;
    l.func_wrap(ENV, "proxy_done", |mut c: C<'_>| -> i32 {
        c.data_mut().done_called += 1;
        0
    })?;
    l.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
            let r = (|| {
                let kind = MetricKind::from_raw(kind).ok_or(Status::BadArgument)?;
                let name = read_str(&mut c, np, nl)?;
                let id = {
                    let mut sh = c.data().shared.lock();
                    match sh.metrics.iter().position(|m| m.name == name) {
                        Some(pos) => pos + 1,
                        None => {
                            sh.metrics.push(Metric {
                                name,
                                kind,
                                value: 0,
                                samples: Vec::new(),
                            });
                            sh.metrics.len()
                        }
                    }
                };
                write(&mut c, ret, &(id as u32).to_le_bytes())
            })();
            code(r)
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> i32 {
            let r = (|| {
                let value = {
                    let sh = c.data().shared.lock();
                    let m = idx(id)
                        .checked_sub(1)
                        .and_then(|i| sh.metrics.get(i))
                        .ok_or(Status::NotFound)?;
                    if m.kind == MetricKind::Histogram {
                        return Err(Status::BadArgument);
                    }
                    m.value
                };
                write(&mut c, ret, &value.to_le_bytes())
            })();
            code(r)
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> i32 {
            let mut sh = c.data().shared.lock();
            let Some(m) = idx(id).checked_sub(1).and_then(|i| sh.metrics.get_mut(i)) else {
                return Status::NotFound.into();
            };
            let value = value as u64;
            match m.kind {
                MetricKind::Counter => m.value = m.value.wrapping_add(value),
                MetricKind::Gauge => m.value = value,
                MetricKind::Histogram => m.samples.push(value),
            }
            0
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| -> i32 {
            let mut sh = c.data().shared.lock();
            let Some(m) = idx(id).checked_sub(1).and_then(|i| sh.metrics.get_mut(i)) else {
                return Status::NotFound.into();
            };
            match m.kind {
                MetricKind::Counter if offset > 0 => m.value = m.value.wrapping_add(offset as u64),
                MetricKind::Gauge => m.value = m.value.wrapping_add_signed(offset),
                _ => return Status::BadArgument.into(),
            }
            0
        },
    )?;

    add_wasi(l)
}

/// The WASI preview1 functions Envoy implements for proxy-wasm modules.
fn add_wasi(l: &mut Linker<VmState>) -> Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    const BADF: i32 = 8;
    const FAULT: i32 = 21;
    const NOSYS: i32 = 52;

    l.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> i32 {
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
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(WASI, name, |mut c: C<'_>, count: i32, size: i32| -> i32 {
            let r = write(&mut c, count, &0u32.to_le_bytes())
                .and_then(|()| write(&mut c, size, &0u32.to_le_bytes()));
            if r.is_err() { FAULT } else { 0 }
        })?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(WASI, name, |_c: C<'_>, _a: i32, _b: i32| -> i32 { 0 })?;
    }
    l.func_wrap(
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
    l.func_wrap(
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
    l.func_wrap(WASI, "proc_exit", |_c: C<'_>, code: i32| -> Result<()> {
        Err(wasmtime::Error::msg(format!(
            "the module called proc_exit({code})"
        )))
    })?;
    l.func_wrap(WASI, "sched_yield", |_c: C<'_>| -> i32 { 0 })?;
    l.func_wrap(WASI, "fd_close", |_c: C<'_>, _fd: i32| -> i32 { BADF })?;
    l.func_wrap(
        WASI,
        "fd_fdstat_get",
        |_c: C<'_>, _fd: i32, _p: i32| -> i32 { BADF },
    )?;
    l.func_wrap(
        WASI,
        "fd_prestat_get",
        |_c: C<'_>, _fd: i32, _p: i32| -> i32 { BADF },
    )?;
    l.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: i32, _p: i32, _l: i32| -> i32 { BADF },
    )?;
    l.func_wrap(
        WASI,
        "fd_read",
        |_c: C<'_>, _fd: i32, _i: i32, _n: i32, _r: i32| -> i32 { BADF },
    )?;
    l.func_wrap(
        WASI,
        "fd_seek",
        |_c: C<'_>, _fd: i32, _o: i64, _w: i32, _r: i32| -> i32 { BADF },
    )?;
    l.func_wrap(
        WASI,
        "poll_oneoff",
        |_c: C<'_>, _a: i32, _b: i32, _n: i32, _r: i32| -> i32 { NOSYS },
    )?;
    Ok(())
}
