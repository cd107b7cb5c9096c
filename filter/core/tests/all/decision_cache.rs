//! The decision cache: a repeated request gets the decision a fresh evaluation would give, and
//! nothing a decision depends on (token, request fields, client address, time, bundle) can be
//! missed by its key.

use std::error::Error;

use harness::devkeys::{DevIssuer, now};
use portcullis_core::{BundleWire, StaticRequest, Verdict};
use serde_json::json;

use crate::authorization::engine_with;

type TestResult = Result<(), Box<dyn Error>>;

/// A small deterministic generator, so a failure names a reproducible sequence.
struct Lcg(u64);

impl Lcg {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let n = u64::try_from(items.len()).ok()?;
        items.get(usize::try_from((self.0 >> 33) % n).ok()?)
    }
}

#[test]
fn cached_decisions_match_fresh_ones() -> TestResult {
    let issuer = DevIssuer::generate()?;
    // Room for every distinct request, and a cache so small that it keeps evicting.
    let cached = engine_with(&issuer, json!({"decisionCache": {"perToken": 256}}))?;
    let evicting = engine_with(
        &issuer,
        json!({"decisionCache": {"perToken": 4, "anonymous": 4}}),
    )?;
    let fresh = engine_with(
        &issuer,
        json!({"decisionCache": {"perToken": 0, "anonymous": 0}}),
    )?;
    let tokens = [
        None,
        Some(issuer.token("bob", &[])),
        Some(issuer.token("alice", &["admins"])),
        Some(issuer.token("carol", &["guests"])),
    ];
    let methods = ["GET", "POST", "DELETE"];
    let paths = [
        "/api/x",
        "/users/bob/orders",
        "/users/alice/orders",
        "/staff/rota",
        "/preview?token=open",
        "/preview?token=closed",
    ];
    let maintenance = [None, Some("on"), Some("off")];
    let sources = ["10.1.2.3:4000", "203.0.113.9:4000"];
    let hosts = ["api.example.com", "other.example.com"];
    let mut rng = Lcg(7);
    let t = now();
    let mut allowed = 0;
    for i in 0..2000 {
        let (Some(token), Some(method), Some(path), Some(m), Some(source), Some(host)) = (
            rng.pick(&tokens),
            rng.pick(&methods),
            rng.pick(&paths),
            rng.pick(&maintenance),
            rng.pick(&sources),
            rng.pick(&hosts),
        ) else {
            return Err("empty choice".into());
        };
        let mut req = StaticRequest::new(method, path)
            .with_header(":authority", host)
            .with_source(source);
        if let Some(token) = token {
            req = req.with_bearer(token);
        }
        if let Some(m) = m {
            req = req.with_header("x-maintenance", m);
        }
        let (a, b, c) = (
            cached.check(&req, t),
            fresh.check(&req, t),
            evicting.check(&req, t),
        );
        assert_eq!(a, b, "request {i}: {method} {path} {m:?} {source} {host}");
        assert_eq!(
            c, b,
            "request {i} (evicting): {method} {path} {m:?} {source} {host}"
        );
        if a.verdict == Verdict::Allow {
            allowed += 1;
        }
    }
    let stats = cached.decision_stats();
    // 4 × 3 × 6 × 3 × 2 × 2 = 864 distinct requests at most; those without a token on a
    // path that needs one are refused before any decision (and not counted).
    assert!(stats.misses <= 864, "{stats:?}");
    assert!(stats.hits > stats.misses, "{stats:?}");
    assert!(evicting.decision_stats().hits < stats.hits);
    assert_eq!(fresh.decision_stats().hits, 0);
    assert!(
        allowed > 100 && allowed < 1900,
        "both decisions occur: {allowed}"
    );
    Ok(())
}

#[test]
fn time_dependent_policies_are_decided_per_second() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let t = now();
    let closes = t + 5;
    let timed = engine_with(
        &issuer,
        json!({"bundle": {"version": 1, "policies": format!(
            "permit (principal, action, resource) when {{ context.time < {closes} }};"
        )}}),
    )?;
    let req = StaticRequest::new("GET", "/api/x").with_bearer(&issuer.token("bob", &[]));
    assert_eq!(timed.check(&req, closes - 1).verdict, Verdict::Allow);
    assert_eq!(timed.check(&req, closes - 1).verdict, Verdict::Allow);
    assert_eq!(timed.decision_stats().hits, 1, "the same second is reused");
    assert_eq!(
        timed.check(&req, closes).verdict,
        Verdict::Forbidden,
        "a later second is decided again"
    );
    // Policies that cannot read the time reuse a decision across seconds.
    let timeless = engine_with(
        &issuer,
        json!({"bundle": {"version": 1, "policies": "permit (principal, action, resource);"}}),
    )?;
    assert_eq!(timeless.check(&req, t).verdict, Verdict::Allow);
    assert_eq!(timeless.check(&req, t + 30).verdict, Verdict::Allow);
    let stats = timeless.decision_stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    Ok(())
}

#[test]
fn a_replaced_bundle_is_never_answered_from_older_decisions() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine_with(
        &issuer,
        json!({
            "bundle": {"version": 1, "policies": "permit (principal, action, resource);"},
            "routes": [{"path": "/open", "auth": "public"}],
        }),
    )?;
    let bob = StaticRequest::new("DELETE", "/api/x").with_bearer(&issuer.token("bob", &[]));
    let anonymous = StaticRequest::new("GET", "/open");
    for req in [&bob, &anonymous] {
        assert_eq!(e.check(req, now()).verdict, Verdict::Allow);
        assert_eq!(e.check(req, now()).verdict, Verdict::Allow);
    }
    assert_eq!(e.decision_stats().hits, 2);
    let deny: BundleWire = serde_json::from_value(json!({"version": 2, "policies": ""}))?;
    e.replace_bundle("default", &deny)?;
    for req in [&bob, &anonymous] {
        let out = e.check(req, now());
        assert_eq!(out.verdict, Verdict::Forbidden, "{out:?}");
        assert_eq!(out.bundle_version, 2);
    }
    Ok(())
}

#[test]
fn decisions_belong_to_their_token() -> TestResult {
    // (That they end with the token is checked in `engine::repeat_tokens_hit_the_cache_until_they_expire`.)
    let issuer = DevIssuer::generate()?;
    let e = engine_with(&issuer, json!({}))?;
    let t = now();
    let bob = StaticRequest::new("GET", "/api/x").with_bearer(&issuer.token("bob", &[]));
    assert_eq!(e.check(&bob, t).verdict, Verdict::Allow);
    assert_eq!(e.check(&bob, t).verdict, Verdict::Allow);
    assert_eq!(e.decision_stats().hits, 1);
    // Another token of the same subject never reaches the first token's decisions.
    let other = StaticRequest::new("GET", "/api/x").with_bearer(&issuer.token("bob", &["x"]));
    assert_eq!(e.check(&other, t).verdict, Verdict::Allow);
    assert_eq!(e.decision_stats().hits, 1);
    Ok(())
}

#[test]
fn the_token_source_is_part_of_the_decision() -> TestResult {
    // The same token from another source is a different request: whether the token is
    // removed before the upstream depends on where it came from.
    let issuer = DevIssuer::generate()?;
    let e = engine_with(
        &issuer,
        json!({
            "tokenSources": [{"header": "authorization", "prefix": "Bearer "}, {"header": "x-token"}],
            "bundle": {"version": 1, "policies": "permit (principal, action, resource);"},
        }),
    )?;
    let cfg_token = issuer.token("bob", &[]);
    let by_header = StaticRequest::new("GET", "/api/x").with_header("x-token", &cfg_token);
    let by_bearer = StaticRequest::new("GET", "/api/x").with_bearer(&cfg_token);
    let a = e.check(&by_header, now());
    let b = e.check(&by_bearer, now());
    assert_eq!(
        (a.verdict.clone(), b.verdict.clone()),
        (Verdict::Allow, Verdict::Allow)
    );
    assert_eq!(e.decision_stats().hits, 0, "{a:?} {b:?}");
    Ok(())
}

#[test]
fn decision_cache_bounds_are_checked() -> TestResult {
    let issuer = DevIssuer::generate()?;
    for (cache, message) in [
        (
            json!({"perToken": 65_537}),
            "decisionCache.perToken must be at most 65536",
        ),
        (
            json!({"anonymous": 1_000_001}),
            "decisionCache.anonymous must be at most 1000000",
        ),
        (json!({"perTokn": 1}), "unknown field"),
    ] {
        let err = engine_with(&issuer, json!({"decisionCache": cache}))
            .err()
            .ok_or("accepted")?;
        assert!(err.to_string().contains(message), "{err}");
    }
    Ok(())
}
