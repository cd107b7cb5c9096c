//! The host's ABI features, exercised through the ABI probe (a plugin built with the same SDK
//! as the filter) and through hand-written modules that misbehave.

use std::error::Error;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::host::{Host, HostError, HttpCallResponse, MetricKind, Plugin, Request, VmOptions};
use harness::paths;

type TestResult = Result<(), Box<dyn Error>>;

fn probe() -> Result<&'static Plugin, Box<dyn Error>> {
    static PROBE: OnceLock<Result<Plugin, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            paths::probe()
                .map_err(|e| e.to_string())
                .and_then(|p| Plugin::load(&p).map_err(|e| e.to_string()))
        })
        .as_ref()
        .map_err(|e| e.clone().into())
}

fn probing(what: &str) -> Request {
    Request::get("/p").header("x-probe", what)
}

fn body(ex: &harness::host::Exchange) -> String {
    ex.local_reply
        .as_ref()
        .map(|r| r.body_text())
        .unwrap_or_default()
}

#[test]
fn shared_data_cas_across_vms() -> TestResult {
    let mut host = Host::new(probe()?);
    let a = host.start_vm(VmOptions::new(Vec::new()))?;
    let b = host.start_vm(VmOptions::new(Vec::new()))?;
    for i in 1..=10u32 {
        let ex = host.send(if i % 2 == 0 { a } else { b }, probing("shared-incr"))?;
        assert_eq!((ex.status(), body(&ex)), (200, i.to_string()));
    }
    let (value, cas) = host.shared_data(b"counter").ok_or("no shared data")?;
    assert_eq!(value, b"10");
    // A write from outside the VMs (another plugin) changes the CAS; the next increment sees it.
    host.set_shared_data(b"counter", b"100");
    let ex = host.send(a, probing("shared-incr"))?;
    assert_eq!(body(&ex), "101");
    assert_ne!(host.shared_data(b"counter").ok_or("gone")?.1, cas);
    Ok(())
}

#[test]
fn shared_queue_delivers_to_its_owner() -> TestResult {
    let mut host = Host::new(probe()?);
    let a = host.start_vm(VmOptions::new(Vec::new()))?;
    let b = host.start_vm(VmOptions::new(Vec::new()))?;
    // Both VMs register "probe-queue" under the same vm_id; the last registration owns it.
    let ex = host.send(a, Request::get("/from-a").header("x-probe", "enqueue"))?;
    assert_eq!(ex.status(), 200, "enqueue continues to the upstream");
    let logs = host.logs();
    let line = logs
        .iter()
        .find(|l| l.message == "dequeued /from-a")
        .ok_or("not dequeued")?;
    assert_eq!(line.vm, b);
    Ok(())
}

#[test]
fn http_callout_response_and_timeout() -> TestResult {
    let mut host = Host::new(probe()?);
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;

    // Unknown cluster: Envoy refuses the call with BadArgument.
    let ex = host.send(vm, probing("callout"))?;
    assert_eq!((ex.status(), body(&ex)), (502, "BadArgument".to_owned()));

    host.add_upstream("backend");
    let ex = host.send(vm, probing("callout"))?;
    assert!(ex.paused, "the request waits for the callout");
    let calls = host.http_calls();
    let call = calls.first().ok_or("no callout")?;
    assert_eq!(call.upstream, "backend");
    assert!(call.headers.contains(&(":path".into(), "/check".into())));
    assert_eq!(call.body, b"question");
    assert_eq!(call.timeout_ms, 500);
    host.respond_http_call(
        call.token,
        HttpCallResponse {
            headers: vec![(":status".into(), "201".into())],
            body: b"answer".to_vec(),
            trailers: Vec::new(),
        },
    )?;
    let ex = host.resume(vm, ex)?;
    let reply = ex.local_reply.clone().ok_or("no reply")?;
    assert_eq!(
        (reply.status, reply.body_text()),
        (200, "answer".to_owned())
    );
    assert_eq!(reply.header("x-callout-status"), Some("201"));

    // No answer within 500 ms: the callout fails as Envoy reports it (empty response).
    let ex = host.send(vm, probing("callout"))?;
    host.advance(Duration::from_millis(499))?;
    assert_eq!(host.http_calls().len(), 1);
    host.advance(Duration::from_millis(1))?;
    assert!(host.http_calls().is_empty());
    let ex = host.resume(vm, ex)?;
    assert_eq!((ex.status(), body(&ex)), (504, "callout failed".to_owned()));
    Ok(())
}

#[test]
fn grpc_calls_succeed_and_fail() -> TestResult {
    let mut host = Host::new(probe()?);
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;
    let ex = host.send(vm, probing("grpc"))?;
    assert_eq!(
        (ex.status(), body(&ex)),
        (502, "ParseFailure".to_owned()),
        "unknown cluster"
    );

    host.add_upstream("backend");
    let ex = host.send(vm, probing("grpc"))?;
    assert!(ex.paused);
    let calls = host.grpc_calls();
    let call = calls.first().ok_or("no gRPC call")?;
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("probe.Checker", "Check")
    );
    assert_eq!(call.messages, vec![b"grpc-question".to_vec()]);
    assert!(call.metadata.contains(&("x-md".into(), "v".into())));
    host.respond_grpc(call.token, Ok(b"grpc-answer".to_vec()))?;
    let ex = host.resume(vm, ex)?;
    assert_eq!((ex.status(), body(&ex)), (200, "grpc-answer".to_owned()));
    assert!(
        host.grpc_calls().is_empty(),
        "a unary call ends with its response"
    );

    let ex = host.send(vm, probing("grpc"))?;
    let token = host
        .grpc_calls()
        .first()
        .map(|c| c.token)
        .ok_or("no call")?;
    host.respond_grpc(token, Err((14, "backend unavailable".into())))?;
    let ex = host.resume(vm, ex)?;
    assert_eq!(
        (ex.status(), body(&ex)),
        (503, "grpc 14: backend unavailable".to_owned())
    );
    Ok(())
}

#[test]
fn ticks_follow_the_host_clock() -> TestResult {
    let mut host = Host::new(probe()?);
    host.start_vm(VmOptions::new(b"tick_ms=100".to_vec()))?;
    host.advance(Duration::from_millis(99))?;
    assert_eq!(host.metric("probe.ticks").map(|m| m.value), Some(0));
    host.advance(Duration::from_millis(901))?;
    assert_eq!(host.metric("probe.ticks").map(|m| m.value), Some(10));
    Ok(())
}

#[test]
fn metrics_are_process_wide() -> TestResult {
    let mut host = Host::new(probe()?);
    let a = host.start_vm(VmOptions::new(Vec::new()))?;
    let b = host.start_vm(VmOptions::new(Vec::new()))?;
    assert_eq!(body(&host.send(a, probing("metric"))?), "1");
    assert_eq!(body(&host.send(b, probing("metric"))?), "2");
    let requests = host.metric("probe.requests").ok_or("no counter")?;
    assert_eq!((requests.kind, requests.value), (MetricKind::Counter, 2));
    assert_eq!(host.metric("probe.gauge").map(|m| m.value), Some(7));
    assert_eq!(
        host.metric("probe.latency").map(|m| m.samples),
        Some(vec![42, 42])
    );
    Ok(())
}

#[test]
fn foreign_functions_absent_and_present() -> TestResult {
    let mut host = Host::new(probe()?);
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;
    let ex = host.send(vm, probing("foreign"))?;
    assert_eq!(
        ex.status(),
        501,
        "an absent function answers NotFound, as in Envoy"
    );
    host.add_foreign_function("echo", |args| Ok(args.iter().rev().copied().collect()));
    assert_eq!(body(&host.send(vm, probing("foreign"))?), "gnip");
    Ok(())
}

#[test]
fn properties_headers_and_bodies() -> TestResult {
    let mut host = Host::new(probe()?);
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;
    assert_eq!(
        body(&host.send(vm, probing("property"))?),
        "path=/p;plugin=portcullis"
    );

    let ex = host.send(
        vm,
        probing("headers")
            .header("x-replace", "old")
            .header("x-remove", "bye")
            .body(b"shout"),
    )?;
    assert_eq!(ex.upstream_header("x-added"), Some("yes"));
    assert_eq!(ex.upstream_header("x-replace"), Some("new"));
    assert_eq!(ex.upstream_header("x-remove"), None);
    assert_eq!(
        ex.upstream_request.as_ref().map(|r| r.body.clone()),
        Some(b"SHOUT".to_vec())
    );
    let response = ex.response.ok_or("no response")?;
    assert!(
        response
            .headers
            .contains(&("x-probe-saw".into(), "200".into()))
    );
    Ok(())
}

#[test]
fn trap_is_reported_and_fails_the_vm() -> TestResult {
    let mut host = Host::new(probe()?);
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;
    let err = host.send(vm, probing("trap")).err().ok_or("no trap")?;
    assert!(
        matches!(
            err,
            HostError::Trap {
                call: "proxy_on_request_headers",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        host.logged("probe asked to trap"),
        "the SDK logs the panic before trapping"
    );
    let err = host
        .send(vm, Request::get("/after"))
        .err()
        .ok_or("VM still used")?;
    assert!(matches!(err, HostError::VmFailed(_)), "{err}");
    Ok(())
}

#[test]
fn runaway_call_is_interrupted() -> TestResult {
    let mut host = Host::new(probe()?);
    host.set_call_timeout(Duration::from_millis(200));
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;
    let started = Instant::now();
    let err = host
        .send(vm, probing("loop"))
        .err()
        .ok_or("loop returned")?;
    assert!(err.to_string().contains("interrupted"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn refused_configuration() -> TestResult {
    let mut host = Host::new(probe()?);
    let err = host
        .start_vm(VmOptions::new(b"refuse".to_vec()))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(err, HostError::ConfigureRefused), "{err}");
    // The load configurations the benchmarks use, and lists the probe cannot read.
    for good in ["noop", "calls=1:pairs,1:time", "\"calls=3:header\""] {
        host.start_vm(VmOptions::new(good.into()))?;
    }
    for bad in ["calls=", "calls=1:pairs,", "calls=x:time", "calls=1:body"] {
        let err = host.start_vm(VmOptions::new(bad.into())).err();
        assert!(matches!(err, Some(HostError::ConfigureRefused)), "{bad}");
    }
    Ok(())
}

/// The smallest module the host accepts, with `body` as `proxy_on_request_headers`.
fn module(extra_imports: &str, on_request_headers: &str) -> String {
    format!(
        r#"(module
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (import "env" "proxy_send_local_response"
            (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          {extra_imports}
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            {on_request_headers})
        )"#
    )
}

#[test]
fn bad_pointers_get_invalid_memory_access() -> TestResult {
    // proxy_log with a pointer past the end of memory; the status it returns becomes the
    // local reply's status (500 + status).
    let wat = module(
        "",
        "(drop (call $reply
            (i32.add (i32.const 500) (call $log (i32.const 2) (i32.const 0x7fff0000) (i32.const 16)))
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const -1)))
         (i32.const 1)",
    );
    let plugin = Plugin::from_bytes(wat.as_bytes())?;
    let mut host = Host::new(&plugin);
    let vm = host.start_vm(VmOptions::new(Vec::new()))?;
    let ex = host.send(vm, Request::get("/"))?;
    assert_eq!(ex.status(), 506, "InvalidMemoryAccess is 6");
    Ok(())
}

#[test]
fn modules_that_cannot_run_are_refused_clearly() -> TestResult {
    let no_abi = "(module (memory (export \"memory\") 1))";
    let err = Host::new(&Plugin::from_bytes(no_abi.as_bytes())?)
        .start_vm(VmOptions::new(Vec::new()))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(err, HostError::Abi(_)), "{err}");

    let unknown_import = module(
        r#"(import "env" "proxy_teleport" (func (param i32) (result i32)))"#,
        "(i32.const 0)",
    );
    let err = Plugin::from_bytes(unknown_import.as_bytes())
        .err()
        .ok_or("linked")?;
    assert!(err.to_string().contains("proxy_teleport"), "{err}");

    let err = Plugin::from_bytes(b"\0asm garbage")
        .err()
        .ok_or("compiled")?;
    assert!(matches!(err, HostError::Compile(_)), "{err}");
    Ok(())
}
