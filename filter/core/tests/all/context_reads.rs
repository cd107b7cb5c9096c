//! What a policy reads decides what the engine computes (`policy_reads`): the client address,
//! the time, the selected headers and query parameters are left out of the context and of the
//! decision cache's key when no policy can read them. Random bundles whose policies read them
//! in every spelling Cedar allows (escaped names, `has`, `context` used whole, in records and
//! `if` expressions) are decided by the engine and by the same engine made to build the whole
//! context; the decisions must be identical. A derivation from the policies' text (the words
//! `source` and `time`), run against the same bundles, must be caught.

use std::error::Error;

use harness::devkeys::{DevIssuer, now};
use portcullis_core::authz::authorizer::HttpRequest;
use portcullis_core::authz::policy_reads::{ContextInputs, PolicyReads};
use portcullis_core::{Engine, StaticRequest};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::authorization::engine_with;

type TestResult = Result<(), Box<dyn Error>>;

const BUNDLES: usize = 150;
const REQUESTS_PER_BUNDLE: usize = 30;

/// Conditions over the optional inputs; `{T}` is a moment inside the requests' time window.
const CONDITIONS: [&str; 22] = [
    // source
    "when { context.source.isLoopback() }",
    r#"when { context["\u{73}ource"].isLoopback() }"#,
    r#"when { context has "\u{73}ource" }"#,
    r#"unless { context has "sour\u{63}e" && context["sour\u{63}e"].isInRange(ip("10.0.0.0/8")) }"#,
    "when { {c: context}.c.source.isLoopback() }",
    r#"when { (if context has source then context else {source: ip("10.0.0.1")}).source.isLoopback() }"#,
    // time
    "when { context.time < {T} }",
    r#"when { context["\u{74}ime"] < {T} }"#,
    r#"unless { context["ti\u{6d}e"] >= {T} }"#,
    "when { (if true then context else {time: 0}).time < {T} }",
    "when { {now: context}.now.time >= {T} }",
    // headers
    r#"when { context.headers has "x-maintenance" }"#,
    r#"when { context["\u{68}eaders"]["x-maintenance"] == "on" }"#,
    r#"unless { context["hea\u{64}ers"] == {} }"#,
    // query
    "when { context.query has token }",
    r#"when { context["q\u{75}ery"].token == "open" }"#,
    r#"when { (if 1 < 2 then context else {}).query == {token: "closed"} }"#,
    // the whole context
    "when { context != {} }",
    "unless { [context].contains({}) }",
    // neither
    r#"when { context.method == "GET" }"#,
    r#"when { principal in Group::"admins" }"#,
    r#"when { "source time headers query" like "*source*" }"#,
];

/// A policy that never applies but reads the context whole: next to it, every input is
/// computed and every one is part of the decision's key. (It names `source` and `time` too, so
/// that an engine deriving its inputs from the text, as the filter once did, still builds the
/// whole context here: the comparison then shows what that derivation gets wrong.)
const READS_WHOLE: &str = r#"@id("reads-whole") forbid (principal, action, resource)
    when { false && (context == {} || context.source == context.time) };"#;

fn bundle(rng: &mut StdRng, moment: u64) -> Result<String, Box<dyn Error>> {
    let mut src = String::new();
    if rng.gen_bool(0.6) {
        src.push_str("@id(\"base\") permit (principal, action, resource);\n");
    }
    for i in 0..rng.gen_range(1..=4) {
        let effect = if rng.gen_bool(0.5) {
            "forbid"
        } else {
            "permit"
        };
        let c = CONDITIONS.choose(rng).ok_or("no condition")?;
        let c = c.replace("{T}", &moment.to_string());
        src.push_str(&format!(
            "@id(\"c{i}\") {effect} (principal, action, resource) {c};\n"
        ));
    }
    Ok(src)
}

struct Requests {
    tokens: Vec<Option<String>>,
    start: u64,
}

impl Requests {
    fn request(&self, rng: &mut StdRng) -> Result<(StaticRequest, u64), Box<dyn Error>> {
        let path = [
            "/api/x",
            "/preview",
            "/preview?token=open",
            "/preview?token=closed",
        ]
        .choose(rng)
        .ok_or("no path")?;
        let method = ["GET", "POST"].choose(rng).ok_or("no method")?;
        let mut req = StaticRequest::new(method, path);
        if let Some(source) = [
            None,
            Some("127.0.0.1:5000"),
            Some("10.1.2.3:4000"),
            Some("203.0.113.9:4000"),
        ]
        .choose(rng)
        .ok_or("no source")?
        {
            req = req.with_source(source);
        }
        if let Some(m) = [None, Some("on"), Some("off")]
            .choose(rng)
            .ok_or("no header")?
        {
            req = req.with_header("x-maintenance", m);
        }
        if let Some(Some(token)) = self.tokens.choose(rng) {
            req = req.with_bearer(token);
        }
        Ok((req, self.start + rng.gen_range(0..10)))
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    allowed: usize,
    with_errors: usize,
    /// Bundles whose policies read no optional input, and bundles that read all of them.
    read_none: usize,
    read_all: usize,
    /// Requests the text-derived inputs decided otherwise than the whole context.
    text_caught: usize,
}

/// The engine's optional inputs as the filter used to find them: by the words `source` and
/// `time` in the policy text (headers and query were always computed).
fn text_inputs(policies: &str) -> ContextInputs {
    let word = |w: &str| {
        let text = policies.as_bytes();
        let ident = |b: Option<&u8>| b.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        policies.match_indices(w).any(|(at, m)| {
            !ident(at.checked_sub(1).and_then(|i| text.get(i))) && !ident(text.get(at + m.len()))
        })
    };
    ContextInputs {
        source: word("source"),
        time: word("time"),
        headers: true,
        query: true,
    }
}

/// Whether evaluating the default set with only `inputs` computed (as the engine does) can
/// give another decision than the whole context, for this request.
fn differs_with(
    engine: &Engine,
    inputs: ContextInputs,
    req: &StaticRequest,
    t: u64,
) -> Result<bool, Box<dyn Error>> {
    use portcullis_core::RequestView as _;
    let sets = engine.policy_sets();
    let policy = &sets.default_set().engine;
    let path = req.header(":path").unwrap_or_default();
    let headers: Vec<(&str, &str)> = req
        .header("x-maintenance")
        .map(|v| ("x-maintenance", v))
        .into_iter()
        .collect();
    let query: Vec<(String, String)> = portcullis_core::http::request::query_params(path)
        .into_iter()
        .filter(|(k, _)| k == "token")
        .collect();
    let source = req.source_address();
    let full = HttpRequest {
        method: req.header(":method").unwrap_or_default(),
        path,
        host: "",
        headers: &headers,
        query: &query,
        source: source
            .as_deref()
            .map(portcullis_core::http::request::address_ip),
        time: t,
    };
    let masked = HttpRequest {
        headers: if inputs.headers { &headers } else { &[] },
        query: if inputs.query { &query } else { &[] },
        source: full.source.filter(|_| inputs.source),
        ..full
    };
    let claims = serde_json::Map::new();
    let cedar = portcullis_core::authz::authorizer::claims_value(&claims);
    let expected = policy.decide(Some("bob"), &claims, &cedar, full);
    if policy.decide(Some("bob"), &claims, &cedar, masked) != expected {
        return Ok(true);
    }
    // An input left out of the key must not matter: a decision is reused at another time.
    let later = HttpRequest {
        time: t + 7,
        ..full
    };
    Ok(!inputs.time && policy.decide(Some("bob"), &claims, &cedar, later) != expected)
}

#[test]
fn decisions_equal_those_of_the_whole_context() -> TestResult {
    let seed: u64 = match std::env::var("PORTCULLIS_READS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => 0x5eed_c0de,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let issuer = DevIssuer::generate()?;
    let start = now();
    let requests = Requests {
        tokens: vec![
            None,
            Some(issuer.token("bob", &[])),
            Some(issuer.token("alice", &["admins"])),
        ],
        start,
    };
    let mut tally = Tally::default();
    for _ in 0..BUNDLES {
        let policies = bundle(&mut rng, start + 5)?;
        let config = |policies: &str| json!({"bundle": {"version": 3, "policies": policies}});
        let derived = engine_with(&issuer, config(&policies))?;
        let whole = engine_with(&issuer, config(&format!("{policies}{READS_WHOLE}")))?;
        assert_eq!(whole.policy_sets().inputs(), ContextInputs::ALL);
        let inputs = derived.policy_sets().inputs();
        tally.read_none += usize::from(inputs == ContextInputs::default());
        tally.read_all += usize::from(inputs == ContextInputs::ALL);
        let set: cedar_policy::PolicySet = policies.parse()?;
        assert_eq!(ContextInputs::from(&PolicyReads::of(&set).context), inputs);
        let text = text_inputs(&policies);
        for i in 0..REQUESTS_PER_BUNDLE {
            let (req, t) = requests.request(&mut rng)?;
            let (a, b) = (derived.check(&req, t), whole.check(&req, t));
            assert_eq!(
                a, b,
                "seed {seed}, request {i} at {t} ({req:?}); policies:\n{policies}"
            );
            tally.requests += 1;
            tally.allowed += usize::from(a.verdict == portcullis_core::Verdict::Allow);
            tally.with_errors += usize::from(!a.errors.is_empty());
            assert!(!differs_with(&derived, inputs, &req, t)?);
            tally.text_caught += usize::from(differs_with(&derived, text, &req, t)?);
        }
    }
    eprintln!("seed {seed}: {tally:?}");
    let r = tally.requests;
    assert!(
        tally.allowed > r / 10 && tally.allowed < r * 9 / 10,
        "{tally:?}"
    );
    assert!(tally.with_errors > r / 20, "{tally:?}");
    assert!(tally.read_none > 0 && tally.read_all > 0, "{tally:?}");
    // The old text search misses escaped names and whole uses: the comparison sees it.
    assert!(tally.text_caught > r / 50, "{tally:?}");
    Ok(())
}

/// The review's cases, one by one: a `forbid` that reads the address through an escaped name
/// applies, a `has` test through one sees the address, and a time read through one keeps a
/// decision to its second.
#[test]
fn escaped_names_are_read() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let token = issuer.token("bob", &[]);
    let t = now();
    let forbid = engine_with(
        &issuer,
        json!({"bundle": {"version": 1, "policies": r#"
            @id("all") permit (principal, action, resource);
            @id("loopback") forbid (principal, action, resource) when { context["\u{73}ource"].isLoopback() };
        "#}}),
    )?;
    let local = StaticRequest::new("GET", "/api/x")
        .with_bearer(&token)
        .with_source("127.0.0.1:4000");
    let out = forbid.check(&local, t);
    assert_eq!(out.verdict, portcullis_core::Verdict::Forbidden, "{out:?}");
    assert_eq!(out.policies, ["loopback"]);
    let has = engine_with(
        &issuer,
        json!({"bundle": {"version": 1, "policies": r#"
            @id("has") permit (principal, action, resource) when { context has "\u{73}ource" };
        "#}}),
    )?;
    let out = has.check(&local, t);
    assert_eq!(out.verdict, portcullis_core::Verdict::Allow, "{out:?}");
    assert_eq!(out.policies, ["has"]);
    let closes = t + 5;
    let timed = engine_with(
        &issuer,
        json!({"bundle": {"version": 1, "policies": format!(
            r#"@id("until") permit (principal, action, resource) when {{ context["ti\u{{6d}}e"] < {closes} }};"#
        )}}),
    )?;
    let req = StaticRequest::new("GET", "/api/x").with_bearer(&token);
    assert_eq!(
        timed.check(&req, closes - 1).verdict,
        portcullis_core::Verdict::Allow
    );
    assert_eq!(
        timed.check(&req, closes).verdict,
        portcullis_core::Verdict::Forbidden
    );
    Ok(())
}
