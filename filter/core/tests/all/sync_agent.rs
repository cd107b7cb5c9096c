//! The sync agent with several VMs of one Envoy: one shared store, one clock, scripted
//! answers from policy-sync. Deterministic: time moves only when a test moves it.

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use portcullis_core::BundleWire;
use portcullis_core::bundle::signed::{BundleDocument, SignedBundle};
use portcullis_core::sync::agent::{Agent, Answer, Call, Event, SyncHost};
use portcullis_core::sync::lease::{MemoryStore, SharedStore};
use portcullis_core::sync::{SyncConfig, SyncFailure, SyncSettings};
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

/// What every VM of the simulated Envoy shares.
#[derive(Default)]
struct Process {
    store: MemoryStore,
    now_ms: Cell<u64>,
    tokens: Cell<u32>,
    /// Calls started: (token, VM, call).
    calls: RefCell<Vec<(u32, usize, Call)>>,
    /// When set, dispatch fails with this reason.
    down: RefCell<Option<String>>,
}

struct Vm {
    process: Rc<Process>,
    index: usize,
}

impl SharedStore for Vm {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.process.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        self.process.store.set(key, value, cas)
    }
}

impl SyncHost for Vm {
    fn now_ms(&self) -> u64 {
        self.process.now_ms.get()
    }
    fn random(&self) -> u64 {
        // The bottom of every jitter range: delays are exactly half their ceiling.
        0
    }
    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        if let Some(why) = self.process.down.borrow().clone() {
            return Err(why);
        }
        let token = self.process.tokens.get() + 1;
        self.process.tokens.set(token);
        self.process
            .calls
            .borrow_mut()
            .push((token, self.index, call.clone()));
        Ok(token)
    }
}

fn secret() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn settings(extra: serde_json::Value) -> Result<SyncSettings, Box<dyn Error>> {
    let mut cfg = json!({
        "cluster": "policy-sync",
        "authority": "policy-sync.local",
        "token": "filter-token",
        "signingKeys": [URL_SAFE_NO_PAD.encode(secret().verifying_key().as_bytes())],
        "wait": "30s",
        "timeout": "5s",
        "maxStaleness": "60s",
        "lease": "10s",
    });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let cfg: SyncConfig = serde_json::from_value(cfg)?;
    Ok(SyncSettings::new(&cfg, &[])?)
}

fn signed_by(key: &SigningKey, doc: &BundleDocument) -> Result<Vec<u8>, Box<dyn Error>> {
    Ok(serde_json::to_vec(&SignedBundle::sign(
        key,
        serde_json::to_string(doc)?,
    ))?)
}

fn doc(tenant: &str, version: u64) -> BundleDocument {
    BundleDocument {
        tenant: tenant.into(),
        version,
        published_at: 1,
        bundle: BundleWire {
            version,
            policies: format!("@id(\"v{version}\") permit (principal, action, resource);"),
            ..BundleWire::default()
        },
        issuers: Vec::new(),
    }
}

/// An Envoy with `n` VMs, each with its agent.
struct Envoy {
    process: Rc<Process>,
    vms: Vec<(Vm, Agent)>,
}

impl Envoy {
    fn new(n: usize, settings: &SyncSettings) -> Result<Self, Box<dyn Error>> {
        let process = Rc::new(Process::default());
        process.now_ms.set(1_000_000);
        let mut vms = Vec::new();
        for index in 0..n {
            let vm = Vm {
                process: process.clone(),
                index,
            };
            let agent = Agent::new(settings.clone(), &vm, |_| None).ok_or("no agent")?;
            vms.push((vm, agent));
        }
        Ok(Self { process, vms })
    }

    /// Every VM ticks (except those in `stopped`); the events by VM.
    fn tick(&mut self, stopped: &[usize]) -> Vec<Vec<Event>> {
        self.vms
            .iter_mut()
            .enumerate()
            .map(|(i, (vm, agent))| {
                if stopped.contains(&i) {
                    Vec::new()
                } else {
                    agent.tick(vm)
                }
            })
            .collect()
    }

    fn advance(&self, ms: u64) {
        self.process.now_ms.set(self.process.now_ms.get() + ms);
    }

    /// The polls started and not answered yet, oldest first.
    fn take_calls(&self) -> Vec<(u32, usize, Call)> {
        std::mem::take(&mut *self.process.calls.borrow_mut())
    }

    /// Answers call `token` on the VM that made it.
    fn answer(
        &mut self,
        call: &(u32, usize, Call),
        status: Option<u16>,
        body: &[u8],
    ) -> Vec<Event> {
        let (token, vm, _) = call;
        match self.vms.get_mut(*vm) {
            Some((vm, agent)) => agent.on_answer(vm, *token, Answer { status, body }),
            None => Vec::new(),
        }
    }

    fn documents(events: &[Vec<Event>]) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for (i, evs) in events.iter().enumerate() {
            for e in evs {
                if let Event::Document(d) = e {
                    out.push((i, d.version));
                }
            }
        }
        out
    }
}

fn one_call(envoy: &Envoy) -> Result<(u32, usize, Call), Box<dyn Error>> {
    let mut calls = envoy.take_calls();
    if calls.len() != 1 {
        return Err(format!("expected one call, got {calls:?}").into());
    }
    calls.pop().ok_or_else(|| "no call".into())
}

#[test]
fn one_poller_per_envoy_and_every_worker_gets_the_document() -> TestResult {
    let mut envoy = Envoy::new(4, &settings(json!({}))?)?;
    let events = envoy.tick(&[]);
    let holders: Vec<usize> = (0..4)
        .filter(|i| events[*i].contains(&Event::LeaseTaken { took_over: false }))
        .collect();
    assert_eq!(holders.len(), 1, "{events:?}");
    let call = one_call(&envoy)?;
    assert_eq!(call.1, holders[0]);
    assert_eq!(call.2.method, "GET");
    assert_eq!(call.2.path, "/v1/bundles/default?after=0&wait=30");
    assert_eq!(call.2.authority, "policy-sync.local");
    assert_eq!(
        call.2.headers,
        [("authorization", "Bearer filter-token".to_owned())]
    );
    // No other VM polls while the first poll is parked, tick after tick.
    for _ in 0..50 {
        envoy.advance(100);
        assert!(Envoy::documents(&envoy.tick(&[])).is_empty());
        assert!(envoy.take_calls().is_empty());
    }
    let answered = envoy.answer(&call, Some(200), &signed_by(&secret(), &doc("default", 3))?);
    assert!(
        answered.contains(&Event::Accepted {
            tenant: "default".into(),
            version: 3
        }),
        "{answered:?}"
    );
    // Every VM (the holder too) is offered version 3 once, at its next tick.
    let events = envoy.tick(&[]);
    assert_eq!(Envoy::documents(&events), [(0, 3), (1, 3), (2, 3), (3, 3)]);
    // The holder keeps the bundle its check compiled, for its own snapshot, once.
    let compiled: Vec<bool> = envoy
        .vms
        .iter_mut()
        .map(|(_, a)| a.take_compiled("default", 3).is_some())
        .collect();
    let expected: Vec<bool> = (0..4).map(|i| i == holders[0]).collect();
    assert_eq!(compiled, expected);
    let (_, holder) = envoy.vms.get_mut(holders[0]).ok_or("vm")?;
    assert!(holder.take_compiled("default", 3).is_none());
    assert!(Envoy::documents(&envoy.tick(&[])).is_empty());
    // The holder polls again at once, after the version it stored.
    let next = one_call(&envoy)?;
    assert_eq!(next.2.path, "/v1/bundles/default?after=3&wait=30");
    let unchanged = envoy.answer(&next, Some(304), b"");
    assert!(unchanged.contains(&Event::Unchanged {
        tenant: "default".into()
    }));
    Ok(())
}

#[test]
fn a_stopped_holder_is_replaced_within_the_lease() -> TestResult {
    let mut envoy = Envoy::new(3, &settings(json!({}))?)?;
    let events = envoy.tick(&[]);
    let holder = (0..3)
        .find(|i| {
            events[*i]
                .iter()
                .any(|e| matches!(e, Event::LeaseTaken { .. }))
        })
        .ok_or("no holder")?;
    let _parked = one_call(&envoy)?;
    // The holder stops ticking (its VM is wedged); the others wait out the lease.
    let mut taken = None;
    for step in 1..=120 {
        envoy.advance(100);
        let events = envoy.tick(&[holder]);
        if let Some(i) =
            (0..3).find(|i| events[*i].contains(&Event::LeaseTaken { took_over: true }))
        {
            taken = Some((i, step * 100));
            break;
        }
    }
    let (new, after_ms) = taken.ok_or("nobody took over")?;
    assert_ne!(new, holder);
    assert!(
        (10_000..=10_100).contains(&after_ms),
        "took over after {after_ms} ms"
    );
    let call = one_call(&envoy)?;
    assert_eq!(call.1, new);
    // The old holder comes back: it learns it lost the lease and does not poll.
    let events = envoy.tick(&[]);
    assert!(events[holder].contains(&Event::LeaseLost));
    assert!(envoy.take_calls().is_empty());
    // A holder that stops cleanly hands over at the next tick.
    let (vm, agent) = envoy.vms.get_mut(new).ok_or("vm")?;
    agent.stop(vm);
    let events = envoy.tick(&[new]);
    assert!(
        events
            .iter()
            .any(|e| e.contains(&Event::LeaseTaken { took_over: false }))
    );
    Ok(())
}

#[test]
fn every_refusal_keeps_the_last_good_document() -> TestResult {
    let mut envoy = Envoy::new(
        2,
        &settings(json!({"retry": {"initial": "100ms", "max": "400ms"}}))?,
    )?;
    envoy.tick(&[]);
    let call = one_call(&envoy)?;
    envoy.answer(&call, Some(200), &signed_by(&secret(), &doc("default", 5))?);
    assert_eq!(Envoy::documents(&envoy.tick(&[])), [(0, 5), (1, 5)]);
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let good = signed_by(&secret(), &doc("default", 6))?;
    let mut corrupt = good.clone();
    if let Some(b) = corrupt.iter_mut().rev().nth(40) {
        *b ^= 1;
    }
    let cases: Vec<(&str, Option<u16>, Vec<u8>)> = vec![
        ("status", Some(503), b"postgres is down".to_vec()),
        ("status", Some(500), Vec::new()),
        ("unreachable", None, Vec::new()),
        (
            "malformed",
            Some(200),
            good.get(..good.len() / 2).unwrap_or_default().to_vec(),
        ),
        ("bad_signature", Some(200), corrupt),
        (
            "unknown_key",
            Some(200),
            signed_by(&stranger, &doc("default", 6))?,
        ),
        (
            "not_newer",
            Some(200),
            signed_by(&secret(), &doc("default", 5))?,
        ),
        (
            "not_newer",
            Some(200),
            signed_by(&secret(), &doc("default", 4))?,
        ),
        (
            "wrong_tenant",
            Some(200),
            signed_by(&secret(), &doc("acme", 6))?,
        ),
        (
            "too_large",
            Some(200),
            vec![b' '; portcullis_core::sync::accept::MAX_DOCUMENT_BYTES + 1],
        ),
    ];
    let mut firsts = 0;
    for (i, (cause, status, body)) in cases.iter().enumerate() {
        // Wait out the backoff of the previous failure (at most 400 ms).
        let mut call = None;
        for _ in 0..5 {
            envoy.advance(100);
            let events = envoy.tick(&[]);
            assert!(Envoy::documents(&events).is_empty(), "case {i}: {events:?}");
            if let Some(c) = envoy.take_calls().pop() {
                call = Some(c);
                break;
            }
        }
        let call = call.ok_or(format!("case {i}: no retry within 500 ms"))?;
        let events = envoy.answer(&call, *status, body);
        let failed = events.iter().find_map(|e| match e {
            Event::Failed { failure, first, .. } => Some((failure.cause(), *first)),
            _ => None,
        });
        let (got, first) = failed.ok_or(format!("case {i} ({cause}): {events:?}"))?;
        assert_eq!(got, *cause, "case {i}");
        firsts += usize::from(first);
        assert!(Envoy::documents(&envoy.tick(&[])).is_empty(), "case {i}");
    }
    assert_eq!(firsts, 1, "one log line for the whole episode");
    // policy-sync returns: the newest version is picked up and the episode ends.
    envoy.advance(500);
    envoy.tick(&[]);
    let call = one_call(&envoy)?;
    assert_eq!(call.2.path, "/v1/bundles/default?after=5&wait=30");
    let events = envoy.answer(&call, Some(200), &good);
    assert!(
        events.contains(&Event::Recovered {
            tenant: "default".into(),
            failures: 10
        }),
        "{events:?}"
    );
    assert_eq!(Envoy::documents(&envoy.tick(&[])), [(0, 6), (1, 6)]);
    Ok(())
}

/// Envoy answers a call that ran past its timeout with a 504 of its own: that is a timeout;
/// a 504 from policy-sync before the deadline is a status.
#[test]
fn a_504_past_the_deadline_is_a_timeout() -> TestResult {
    let mut envoy = Envoy::new(
        1,
        &settings(json!({"retry": {"initial": "1s", "max": "1s"}}))?,
    )?;
    envoy.tick(&[]);
    let call = one_call(&envoy)?;
    envoy.advance(1_000);
    let failure = |events: &[Event]| {
        events.iter().find_map(|e| match e {
            Event::Failed { failure, .. } => Some(failure.clone()),
            _ => None,
        })
    };
    let early = envoy.answer(&call, Some(504), b"");
    assert_eq!(failure(&early), Some(SyncFailure::Status(504)), "{early:?}");
    envoy.advance(2_000);
    envoy.tick(&[]);
    let call = one_call(&envoy)?;
    envoy.advance(35_000);
    let late = envoy.answer(&call, Some(504), b"");
    assert_eq!(failure(&late), Some(SyncFailure::Timeout), "{late:?}");
    Ok(())
}

#[test]
fn timeouts_backoff_and_staleness() -> TestResult {
    let mut envoy = Envoy::new(
        2,
        &settings(json!({"retry": {"initial": "1s", "max": "4s"}}))?,
    )?;
    envoy.tick(&[]);
    let call = one_call(&envoy)?;
    // The host answers nothing past wait + timeout: a timeout.
    envoy.advance(35_000);
    let events = envoy.answer(&call, None, b"");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Failed {
            failure: SyncFailure::Timeout,
            first: true,
            ..
        }
    )));
    // Backoff doubles to its cap while policy-sync is down (ceilings 1, 2, 4, 4 s; the jitter
    // at its bottom here: half of each).
    *envoy.process.down.borrow_mut() = Some("no healthy upstream".into());
    let mut gaps = Vec::new();
    let mut last = envoy.process.now_ms.get();
    while gaps.len() < 4 {
        envoy.advance(100);
        let events = envoy.tick(&[]);
        if events
            .iter()
            .flatten()
            .any(|e| matches!(e, Event::Failed { .. }))
        {
            let now = envoy.process.now_ms.get();
            gaps.push(now - last);
            last = now;
        }
    }
    assert_eq!(gaps, [500, 1_000, 2_000, 2_000]);
    // 35 s + 5.5 s since start: not yet stale (60 s); then past it, on every VM.
    let stale = |envoy: &Envoy| -> Vec<bool> {
        envoy
            .vms
            .iter()
            .map(|(vm, agent)| agent.refuse_stale(vm))
            .collect()
    };
    assert_eq!(stale(&envoy), [false, false]);
    envoy.advance(19_000);
    assert_eq!(stale(&envoy), [false, false]);
    envoy.advance(1_000);
    assert_eq!(stale(&envoy), [true, true]);
    // policy-sync is back: the next answer ends staleness everywhere.
    *envoy.process.down.borrow_mut() = None;
    envoy.advance(4_000);
    envoy.tick(&[]);
    let call = one_call(&envoy)?;
    envoy.answer(&call, Some(304), b"");
    assert_eq!(stale(&envoy), [false, false]);
    // keepServing never refuses, though it still knows it is stale.
    let keep = Envoy::new(1, &settings(json!({"whenStale": "keepServing"}))?)?;
    keep.advance(61_000);
    let (vm, agent) = keep.vms.first().ok_or("vm")?;
    assert!(agent.any_stale(vm) && !agent.refuse_stale(vm));
    Ok(())
}

#[test]
fn key_refreshes_are_coalesced_across_workers() -> TestResult {
    let mut envoy = Envoy::new(3, &settings(json!({"keyRefreshInterval": "10s"}))?)?;
    envoy.tick(&[]);
    envoy.take_calls();
    let iss = "https://issuer.example/a b";
    let asked: Vec<Option<Event>> = {
        let Envoy { vms, .. } = &mut envoy;
        vms.iter_mut()
            .map(|(vm, agent)| agent.refresh_keys(vm, iss))
            .collect()
    };
    assert_eq!(asked.iter().flatten().count(), 1, "{asked:?}");
    let call = one_call(&envoy)?;
    assert_eq!(call.2.method, "POST");
    assert_eq!(
        call.2.path,
        "/v1/keys/refresh?iss=https%3A%2F%2Fissuer.example%2Fa%20b"
    );
    assert!(envoy.answer(&call, Some(200), b"{}").is_empty());
    envoy.advance(9_000);
    let again = envoy
        .vms
        .iter_mut()
        .filter_map(|(vm, agent)| agent.refresh_keys(vm, iss))
        .count();
    assert_eq!(again, 0, "rate-limited within the interval");
    envoy.advance(1_001);
    let again = envoy
        .vms
        .iter_mut()
        .filter_map(|(vm, agent)| agent.refresh_keys(vm, iss))
        .count();
    assert_eq!(again, 1);
    Ok(())
}

fn entry(n: u64) -> portcullis_core::sync::decision_log::LogEntry {
    let outcome = portcullis_core::Outcome {
        verdict: portcullis_core::Verdict::Forbidden,
        principal: Some("User::\"bob\"".into()),
        policies: vec!["deny-all".into()],
        errors: Vec::new(),
        bundle_version: 3,
        policy_set: String::new(),
        dry_run: None,
        shadow: None,
        remove_headers: Vec::new(),
        set_headers: Vec::new(),
    };
    portcullis_core::sync::decision_log::LogEntry::new(
        &outcome,
        ("Action::\"GET\"", &format!("Path::\"/api/{n}\"")),
        Some("req-1"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        1_000_000,
        403,
    )
}

#[test]
fn decision_logs_reach_one_batch_from_the_holder() -> TestResult {
    use portcullis_core::sync::decision_log::LogEvent;
    let mut envoy = Envoy::new(
        3,
        &settings(json!({"decisionLog": {"queue": 4, "batch": 3}}))?,
    )?;
    envoy.tick(&[]);
    envoy.take_calls();
    for (i, (_, agent)) in envoy.vms.iter_mut().enumerate() {
        for n in 0..3 {
            assert!(agent.record(entry(u64::try_from(i * 10 + n)?)));
        }
    }
    // A full buffer drops, and says so.
    let (_, first) = envoy.vms.first_mut().ok_or("vm")?;
    assert!(first.record(entry(98)));
    assert!(!first.record(entry(99)));
    envoy.advance(1_000);
    let events = envoy.tick(&[]);
    assert!(
        events
            .iter()
            .flatten()
            .any(|e| *e == Event::DecisionLog(LogEvent::Dropped(1))),
        "{events:?}"
    );
    let calls = envoy.take_calls();
    let posts: Vec<_> = calls
        .iter()
        .filter(|c| c.2.path == "/v1/decisions")
        .collect();
    assert_eq!(posts.len(), 1, "{calls:?}");
    let body: serde_json::Value =
        serde_json::from_slice(posts[0].2.body.as_deref().unwrap_or_default())?;
    let batch = body["decisions"].as_array().ok_or("no decisions")?;
    assert_eq!(batch.len(), 3, "the batch limit");
    assert_eq!(batch[0]["decision"], "deny");
    assert_eq!(batch[0]["resource"], "Path::\"/api/0\"");
    assert_eq!(
        batch[0]["details"],
        json!({"status": 403, "requestId": "req-1", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"})
    );
    let post = (*posts[0]).clone();
    // policy-sync is down for this batch: it is sent again, whole, the next second.
    let events = envoy.answer(&post, Some(503), b"");
    assert!(
        matches!(
            events.as_slice(),
            [Event::DecisionLog(LogEvent::Retrying { entries: 3, .. })]
        ),
        "{events:?}"
    );
    let mut shipped = 0;
    for _ in 0..8 {
        envoy.advance(1_000);
        envoy.tick(&[]);
        for call in envoy
            .take_calls()
            .into_iter()
            .filter(|c| c.2.path == "/v1/decisions")
        {
            for e in envoy.answer(&call, Some(200), b"{}") {
                if let Event::DecisionLog(LogEvent::Shipped(n)) = e {
                    shipped += n;
                }
            }
        }
    }
    assert_eq!(shipped, 10, "3 + 3 + 4 recorded, all shipped once");
    Ok(())
}

#[test]
fn a_stopping_vm_hands_its_decision_log_over() -> TestResult {
    let mut envoy = Envoy::new(
        2,
        &settings(json!({"decisionLog": {"queue": 8, "batch": 8}}))?,
    )?;
    let events = envoy.tick(&[]);
    envoy.take_calls();
    let holder = events
        .iter()
        .position(|e| e.iter().any(|e| matches!(e, Event::LeaseTaken { .. })))
        .ok_or("no holder")?;
    let follower = 1 - holder;
    // Recorded and stopped before any tick moved it into shared data.
    let (vm, agent) = envoy.vms.get_mut(follower).ok_or("vm")?;
    assert!(agent.record(entry(7)));
    agent.stop(vm);
    envoy.advance(1_000);
    envoy.tick(&[follower]);
    let calls = envoy.take_calls();
    let post = calls
        .iter()
        .find(|c| c.2.path == "/v1/decisions")
        .ok_or("nothing shipped")?;
    let body: serde_json::Value =
        serde_json::from_slice(post.2.body.as_deref().unwrap_or_default())?;
    let resources: Vec<&serde_json::Value> = body["decisions"]
        .as_array()
        .ok_or("no decisions")?
        .iter()
        .map(|d| &d["resource"])
        .collect();
    assert_eq!(resources, [&json!("Path::\"/api/7\"")]);
    Ok(())
}
