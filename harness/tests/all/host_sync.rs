//! The built filter following a scripted policy-sync through the wasmtime host: several
//! worker VMs of one Envoy, the clock under the test's control, every answer chosen by the
//! test. Deterministic, no sleeps.

use std::error::Error;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use harness::devkeys::DevIssuer;
use harness::host::{Host, HttpCall, HttpCallResponse, Request, VmOptions};
use portcullis_core::BundleWire;
use portcullis_core::bundle::signed::{BundleDocument, IssuerKeys, SignedBundle};
use portcullis_core::metrics;
use serde_json::{Value, json};

use crate::host_filter::plugin;

type TestResult = Result<(), Box<dyn Error>>;

const CLUSTER: &str = "outbound|8080||policy-sync.portcullis.svc.cluster.local";
const ALLOW: &str = "@id(\"allow-all\") permit (principal, action, resource);";
const DENY: &str = "@id(\"deny-all\") forbid (principal, action, resource);";

fn signing() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// A plugin configuration that follows policy-sync; `inline` is the bundle it starts with.
fn config(issuer: &DevIssuer, inline: Option<&str>, sync: &Value) -> Value {
    let mut s = json!({
        "cluster": CLUSTER,
        "authority": "policy-sync.portcullis.svc:8080",
        "token": "filter-token",
        "signingKeys": [URL_SAFE_NO_PAD.encode(signing().verifying_key().as_bytes())],
    });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), sync.as_object()) {
        s.extend(extra.clone());
    }
    let mut cfg = json!({
        "issuers": [{"issuer": issuer.issuer, "audiences": [issuer.audience], "jwks": issuer.jwks()}],
        "debugHeaders": true,
        "sync": s,
    });
    if let (Some(cfg), Some(policies)) = (cfg.as_object_mut(), inline) {
        cfg.insert("bundle".into(), json!({"version": 1, "policies": policies}));
    }
    cfg
}

fn document(version: u64, policies: &str, issuers: Vec<IssuerKeys>) -> BundleDocument {
    BundleDocument {
        tenant: "default".into(),
        version,
        published_at: 1,
        bundle: BundleWire {
            version,
            policies: policies.into(),
            ..BundleWire::default()
        },
        issuers,
    }
}

fn signed(key: &SigningKey, doc: &BundleDocument) -> Result<Vec<u8>, Box<dyn Error>> {
    Ok(serde_json::to_vec(&SignedBundle::sign(
        key,
        serde_json::to_string(doc)?,
    ))?)
}

fn answer(status: u16, body: Vec<u8>) -> HttpCallResponse {
    HttpCallResponse {
        headers: vec![(":status".into(), status.to_string().into_bytes())],
        body,
        trailers: Vec::new(),
    }
}

/// One Envoy with `workers` VMs on the same configuration.
fn envoy<'p>(
    plugin: &'p harness::host::Plugin,
    cfg: &Value,
    workers: usize,
) -> Result<Host<'p>, Box<dyn Error>> {
    let mut host = Host::new(plugin);
    host.add_upstream(CLUSTER);
    for _ in 0..workers {
        host.start_vm(VmOptions::new(cfg.to_string().into_bytes()))?;
    }
    Ok(host)
}

fn header<'a>(call: &'a HttpCall, name: &str) -> Option<&'a str> {
    call.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// The one poll in flight (failing when there are none or several).
fn poll(host: &Host<'_>) -> Result<HttpCall, Box<dyn Error>> {
    let calls: Vec<HttpCall> = host
        .http_calls()
        .into_iter()
        .filter(|c| header(c, ":path").is_some_and(|p| p.starts_with("/v1/bundles/")))
        .collect();
    match calls.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("expected one poll in flight, got {}", other.len()).into()),
    }
}

fn statuses(host: &mut Host<'_>, workers: usize, token: &str) -> Result<Vec<u16>, Box<dyn Error>> {
    (0..workers)
        .map(|vm| Ok(host.send(vm, Request::get("/api").bearer(token))?.status()))
        .collect()
}

fn metric(host: &Host<'_>, name: &str) -> u64 {
    host.metric(&format!("wasmcustom.{name}"))
        .or_else(|| host.metric(name))
        .map_or(0, |m| m.value)
}

#[test]
fn one_poll_per_envoy_and_a_commit_reaches_every_worker() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = envoy(plugin()?, &config(&issuer, Some(ALLOW), &json!({})), 4)?;
    let token = issuer.token("bob", &[]);
    assert_eq!(statuses(&mut host, 4, &token)?, [200; 4]);
    host.advance(Duration::from_millis(60))?;
    let call = poll(&host)?;
    assert_eq!(call.upstream, CLUSTER);
    assert_eq!(header(&call, ":method"), Some("GET"));
    // The inline bundle's version counts as the one in force.
    assert_eq!(
        header(&call, ":path"),
        Some("/v1/bundles/default?after=1&wait=30")
    );
    assert_eq!(
        header(&call, ":authority"),
        Some("policy-sync.portcullis.svc:8080")
    );
    assert_eq!(header(&call, "authorization"), Some("Bearer filter-token"));
    assert_eq!(call.timeout_ms, 35_000);
    // Parked: ticks go by and nobody else polls.
    host.advance(Duration::from_secs(2))?;
    assert_eq!(poll(&host)?.token, call.token);
    host.respond_http_call(
        call.token,
        answer(200, signed(&signing(), &document(2, DENY, vec![]))?),
    )?;
    // Within one tick every worker decides under version 2.
    host.advance(Duration::from_millis(60))?;
    for vm in 0..4 {
        let ex = host.send(vm, Request::get("/api").bearer(&token))?;
        assert_eq!(ex.status(), 403, "worker {vm}");
        let reply = ex.local_reply.as_ref().ok_or("no reply")?;
        assert_eq!(reply.header("x-portcullis-policies"), Some("deny-all"));
    }
    assert_eq!(metric(&host, &metrics::sync_bundle_version("default")), 2);
    // Counters reach Envoy at each worker's next flush (once a second).
    host.advance(Duration::from_secs(1))?;
    assert_eq!(metric(&host, metrics::SYNC_DOCUMENTS_APPLIED), 4);
    assert_eq!(metric(&host, metrics::SYNC_SUCCESSES), 1);
    // The holder is back at it, after version 2.
    let next = poll(&host)?;
    assert_eq!(
        header(&next, ":path"),
        Some("/v1/bundles/default?after=2&wait=30")
    );
    Ok(())
}

#[test]
fn without_a_bundle_it_answers_503_until_the_first_document() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut host = envoy(plugin()?, &config(&issuer, None, &json!({})), 2)?;
    let token = issuer.token("bob", &[]);
    let ex = host.send(0, Request::get("/api").bearer(&token))?;
    assert_eq!(ex.status(), 503);
    let reply = ex.local_reply.as_ref().ok_or("no reply")?;
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(ex.upstream_request.is_none());
    host.advance(Duration::from_millis(60))?;
    let call = poll(&host)?;
    assert_eq!(
        header(&call, ":path"),
        Some("/v1/bundles/default?after=0&wait=30")
    );
    host.respond_http_call(
        call.token,
        answer(200, signed(&signing(), &document(7, ALLOW, vec![]))?),
    )?;
    host.advance(Duration::from_millis(60))?;
    assert_eq!(statuses(&mut host, 2, &token)?, [200, 200]);
    assert!(host.logged("the filter now decides"));
    Ok(())
}

#[test]
fn refused_answers_keep_the_bundle_in_force_and_log_once() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let sync = json!({"retry": {"initial": "100ms", "max": "200ms"}});
    let mut host = envoy(plugin()?, &config(&issuer, Some(ALLOW), &sync), 2)?;
    let token = issuer.token("bob", &[]);
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let deny = document(2, DENY, vec![]);
    let good = signed(&signing(), &deny)?;
    let mut corrupt = good.clone();
    if let Some(b) = corrupt.iter_mut().rev().nth(30) {
        *b ^= 0x01;
    }
    let mut wrong_tenant = deny.clone();
    wrong_tenant.tenant = "acme".into();
    let answers = [
        ("status", answer(503, b"database unavailable".to_vec())),
        (
            "malformed",
            answer(200, good.get(..good.len() / 3).unwrap_or_default().to_vec()),
        ),
        ("bad_signature", answer(200, corrupt)),
        ("unknown_key", answer(200, signed(&stranger, &deny)?)),
        (
            "not_newer",
            answer(200, signed(&signing(), &document(1, DENY, vec![]))?),
        ),
        (
            "wrong_tenant",
            answer(200, signed(&signing(), &wrong_tenant)?),
        ),
        (
            "policies",
            answer(200, signed(&signing(), &document(2, "forbid (", vec![]))?),
        ),
    ];
    for (cause, response) in answers {
        host.advance(Duration::from_millis(250))?;
        let call = poll(&host)?;
        host.respond_http_call(call.token, response)?;
        // A tick, and the counters' flush.
        host.advance(Duration::from_millis(1_050))?;
        assert_eq!(statuses(&mut host, 2, &token)?, [200, 200], "after {cause}");
        assert_eq!(metric(&host, &metrics::sync_failures(cause)), 1, "{cause}");
    }
    // The connection fails outright, then the call times out: still the same bundle.
    host.advance(Duration::from_millis(250))?;
    let call = poll(&host)?;
    host.advance(Duration::from_secs(36))?;
    assert!(host.http_calls().iter().all(|c| c.token != call.token));
    host.advance(Duration::from_millis(1_000))?;
    assert_eq!(metric(&host, &metrics::sync_failures("timeout")), 1);
    let failing = host
        .logs()
        .iter()
        .filter(|l| {
            l.message
                .contains("following policy-sync for default failed")
        })
        .count();
    assert_eq!(failing, 1, "one line for the whole episode");
    // policy-sync is well again: version 2 is taken, the episode ends.
    host.advance(Duration::from_millis(250))?;
    let call = poll(&host)?;
    host.respond_http_call(call.token, answer(200, good))?;
    host.advance(Duration::from_millis(60))?;
    assert_eq!(statuses(&mut host, 2, &token)?, [403, 403]);
    assert!(host.logged("answers again after 8 failed attempt(s)"));
    Ok(())
}

#[test]
fn a_stale_bundle_fails_closed_and_a_stopped_poller_is_replaced() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let sync = json!({"wait": "10s", "timeout": "1s", "maxStaleness": "20s",
                      "retry": {"initial": "1s", "max": "1s"}});
    let mut host = envoy(plugin()?, &config(&issuer, Some(ALLOW), &sync), 3)?;
    let token = issuer.token("bob", &[]);
    host.advance(Duration::from_millis(60))?;
    let first = poll(&host)?;
    // The poller's worker stops (its lease is handed over): another takes over at once and
    // the stopped worker's call goes nowhere.
    host.stop_vm(first.vm)?;
    host.advance(Duration::from_millis(60))?;
    let second = poll(&host).or_else(|_| {
        host.http_calls()
            .into_iter()
            .find(|c| c.vm != first.vm)
            .ok_or("no new poller")
    })?;
    assert_ne!(second.vm, first.vm);
    let live: Vec<usize> = (0..3).filter(|v| *v != first.vm).collect();
    // policy-sync answers nothing for longer than maxStaleness: requests get 503.
    host.advance(Duration::from_secs(19))?;
    for vm in &live {
        assert_eq!(
            host.send(*vm, Request::get("/api").bearer(&token))?
                .status(),
            200
        );
    }
    host.advance(Duration::from_secs(2))?;
    for vm in &live {
        let ex = host.send(*vm, Request::get("/api").bearer(&token))?;
        assert_eq!(ex.status(), 503, "worker {vm}");
    }
    host.advance(Duration::from_millis(1_000))?;
    assert!(metric(&host, metrics::SYNC_REFUSED_REQUESTS) >= 2);
    // An answer (nothing newer) ends it.
    let call = host
        .http_calls()
        .into_iter()
        .find(|c| c.vm != first.vm)
        .ok_or("no poll")?;
    host.respond_http_call(call.token, answer(304, Vec::new()))?;
    host.advance(Duration::from_millis(60))?;
    for vm in &live {
        assert_eq!(
            host.send(*vm, Request::get("/api").bearer(&token))?
                .status(),
            200
        );
    }
    Ok(())
}

#[test]
fn an_unknown_key_asks_for_a_refresh_and_the_rotated_key_is_accepted() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let rotated = DevIssuer::generate()?;
    let mut host = envoy(plugin()?, &config(&issuer, Some(ALLOW), &json!({})), 2)?;
    host.advance(Duration::from_millis(60))?;
    let parked = poll(&host)?;
    let new_token = rotated.token("bob", &[]);
    // A token signed by a key the filter does not know yet: 401, and one refresh asked (two
    // workers saw it).
    for vm in 0..2 {
        let ex = host.send(vm, Request::get("/api").bearer(&new_token))?;
        assert_eq!(ex.status(), 401);
    }
    host.advance(Duration::from_millis(60))?;
    let refreshes: Vec<HttpCall> = host
        .http_calls()
        .into_iter()
        .filter(|c| header(c, ":method") == Some("POST"))
        .collect();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    let refresh = refreshes.first().ok_or("no refresh")?;
    let iss = issuer.issuer.replace(':', "%3A").replace('/', "%2F");
    assert_eq!(
        header(refresh, ":path"),
        Some(format!("/v1/keys/refresh?iss={iss}").as_str())
    );
    host.respond_http_call(refresh.token, answer(200, b"{}".to_vec()))?;
    // policy-sync fetched the new key and published it: the long-poll brings it.
    let keys = IssuerKeys {
        issuer: rotated.issuer.clone(),
        audiences: vec![rotated.audience.clone()],
        jwks: serde_json::from_value(rotated.jwks())?,
        settings: portcullis_core::config::IssuerSettings::default(),
    };
    host.respond_http_call(
        parked.token,
        answer(200, signed(&signing(), &document(2, ALLOW, vec![keys]))?),
    )?;
    host.advance(Duration::from_millis(60))?;
    assert_eq!(statuses(&mut host, 2, &new_token)?, [200, 200]);
    assert_eq!(
        statuses(&mut host, 2, &issuer.token("bob", &[]))?,
        [401, 401]
    );
    Ok(())
}

/// The decision-log batches in flight: each call's token and entries.
type Posts = Vec<(u32, Vec<Value>)>;

fn decision_posts(host: &Host<'_>) -> Result<Posts, Box<dyn Error>> {
    let mut out = Vec::new();
    for c in host.http_calls() {
        if header(&c, ":path") == Some("/v1/decisions") {
            let body: Value = serde_json::from_slice(&c.body)?;
            let entries = body
                .get("decisions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            out.push((c.token, entries));
        }
    }
    Ok(out)
}

#[test]
fn decision_logs_ship_denials_and_the_sampled_allows() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let token = issuer.token("bob", &[]);
    // Default: denials only.
    let deny_some = "@id(\"no-admin\") forbid (principal, action, resource) when { context.path like \"/admin*\" };\n@id(\"allow-all\") permit (principal, action, resource);";
    let mut host = envoy(plugin()?, &config(&issuer, Some(deny_some), &json!({})), 2)?;
    for vm in 0..2 {
        assert_eq!(
            host.send(vm, Request::get("/api").bearer(&token))?.status(),
            200
        );
        let denied = Request::get("/admin/x?y=1")
            .bearer(&token)
            .header("x-request-id", "r-7")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
        assert_eq!(host.send(vm, denied)?.status(), 403);
    }
    assert_eq!(host.send(0, Request::get("/api"))?.status(), 401);
    host.advance(Duration::from_millis(1_100))?;
    let posts = decision_posts(&host)?;
    assert_eq!(posts.len(), 1, "one batch from the poller");
    let (post, entries) = posts.first().ok_or("no post")?;
    let mut decisions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["decision"].as_str())
        .collect();
    decisions.sort_unstable();
    assert_eq!(decisions, ["deny", "deny", "unauthenticated"]);
    let deny = entries
        .iter()
        .find(|e| e["decision"] == "deny")
        .ok_or("no deny")?;
    assert_eq!(deny["resource"], "Path::\"/admin/x\"");
    assert_eq!(deny["action"], "Action::\"GET\"");
    assert_eq!(deny["policies"], json!(["no-admin"]));
    assert_eq!(
        deny["details"],
        json!({"status": 403, "requestId": "r-7", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"})
    );
    assert_eq!(deny["version"], 1);
    host.respond_http_call(*post, answer(200, b"{\"written\":3}".to_vec()))?;
    host.advance(Duration::from_millis(1_100))?;
    assert_eq!(metric(&host, metrics::DECISION_LOG_SHIPPED), 3);
    // sampleAllows 1: every allowed request too.
    let all = json!({"decisionLog": {"sampleAllows": 1}});
    let mut host = envoy(plugin()?, &config(&issuer, Some(ALLOW), &all), 1)?;
    for _ in 0..3 {
        assert_eq!(
            host.send(0, Request::get("/api").bearer(&token))?.status(),
            200
        );
    }
    host.advance(Duration::from_millis(1_100))?;
    let posts = decision_posts(&host)?;
    let allows = posts
        .iter()
        .flat_map(|(_, e)| e)
        .filter(|e| e["decision"] == "allow")
        .count();
    assert_eq!(allows, 3);
    Ok(())
}
