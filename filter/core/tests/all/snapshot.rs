//! Snapshots: a verified document replaces the snapshot in force whole, the worker's caches
//! keep only what is still valid under it, and `decide` says how each answer was reached.

use std::error::Error;
use std::rc::Rc;
use std::sync::Arc;

use harness::devkeys::{DevIssuer, now};
use portcullis_core::auth::jwks::JwkSetWire;
use portcullis_core::authz::tenants::SetError;
use portcullis_core::bundle::signed::{BundleDocument, IssuerKeys};
use portcullis_core::config::IssuerSettings;
use portcullis_core::{
    AuthError, BundleWire, CacheUse, Decided, DocumentError, Engine, Snapshot, StaticRequest,
    Verdict,
};
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

const ALLOW_ALL: &str = "@id(\"all\") permit (principal, action, resource);";
const DENY_ALL: &str = "@id(\"none\") forbid (principal, action, resource);";

fn engine(issuer: &DevIssuer) -> Result<Engine, Box<dyn Error>> {
    let mut cfg = harness::demo::plugin_config(issuer);
    let map = cfg
        .as_object_mut()
        .ok_or("the demo configuration is an object")?;
    map.insert(
        "bundle".into(),
        json!({"version": 1, "policies": ALLOW_ALL}),
    );
    map.insert(
        "tenants".into(),
        json!([{"id": "acme", "hosts": ["acme.example"],
                "bundle": {"version": 1, "policies": ALLOW_ALL}}]),
    );
    Ok(Engine::from_json(cfg.to_string().as_bytes())?)
}

fn keys(issuer: &DevIssuer) -> Result<IssuerKeys, Box<dyn Error>> {
    Ok(IssuerKeys {
        issuer: issuer.issuer.clone(),
        audiences: vec![issuer.audience.clone()],
        jwks: serde_json::from_value::<JwkSetWire>(issuer.jwks())?,
        settings: IssuerSettings::default(),
    })
}

fn document(
    tenant: &str,
    version: u64,
    policies: &str,
    issuers: Vec<IssuerKeys>,
) -> BundleDocument {
    BundleDocument {
        tenant: tenant.to_owned(),
        version,
        published_at: now(),
        bundle: BundleWire {
            version,
            policies: policies.to_owned(),
            ..BundleWire::default()
        },
        issuers,
    }
}

fn decide(e: &Engine, token: &str) -> Decided {
    e.decide(&StaticRequest::new("GET", "/api").with_bearer(token), now())
}

fn apply(e: &Engine, doc: &BundleDocument) -> Result<(), Box<dyn Error>> {
    e.swap(Arc::new(e.snapshot().with_document(doc)?));
    Ok(())
}

#[test]
fn decided_says_how_the_answer_was_reached() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine(&issuer)?;
    let token = issuer.token("bob", &[]);
    let first = decide(&e, &token);
    assert_eq!(first.outcome.verdict, Verdict::Allow);
    assert_eq!(
        (first.token_cache, first.decision_cache, first.evaluated),
        (CacheUse::Miss, CacheUse::Miss, true)
    );
    let again = decide(&e, &token);
    assert!(Rc::ptr_eq(&first.outcome, &again.outcome));
    assert_eq!(
        (again.token_cache, again.decision_cache, again.evaluated),
        (CacheUse::Hit, CacheUse::Hit, false)
    );
    let none = e.decide(&StaticRequest::new("GET", "/api"), now());
    assert_eq!(
        none.outcome.verdict,
        Verdict::Unauthenticated(AuthError::Missing)
    );
    assert_eq!(
        (none.token_cache, none.decision_cache, none.evaluated),
        (CacheUse::Unused, CacheUse::Unused, false)
    );
    let bad = decide(&e, &format!("{token}x"));
    assert!(matches!(bad.outcome.verdict, Verdict::Unauthenticated(_)));
    assert_eq!((bad.token_cache, bad.evaluated), (CacheUse::Miss, false));
    Ok(())
}

#[test]
fn a_new_bundle_keeps_verified_tokens_and_drops_decisions() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine(&issuer)?;
    let token = issuer.token("bob", &[]);
    assert_eq!(decide(&e, &token).outcome.verdict, Verdict::Allow);
    assert_eq!(decide(&e, &token).decision_cache, CacheUse::Hit);
    // Same issuers as configured: the tokens verified under them stay verified.
    apply(&e, &document("default", 2, DENY_ALL, vec![keys(&issuer)?]))?;
    let after = decide(&e, &token);
    assert_eq!(after.outcome.verdict, Verdict::Forbidden);
    assert_eq!(after.outcome.policies, ["none"]);
    assert_eq!(after.outcome.bundle_version, 2);
    assert_eq!(
        (after.token_cache, after.decision_cache, after.evaluated),
        (CacheUse::Hit, CacheUse::Miss, true),
        "the decision taken under version 1 must not be served under version 2"
    );
    assert_eq!(e.bundle_version(), 2);
    // A tenant's document replaces that tenant's set only.
    apply(&e, &document("acme", 5, DENY_ALL, Vec::new()))?;
    let acme = StaticRequest::new("GET", "/api")
        .with_header(":authority", "acme.example")
        .with_bearer(&token);
    let d = e.decide(&acme, now());
    assert_eq!(
        (d.outcome.verdict.clone(), d.outcome.bundle_version),
        (Verdict::Forbidden, 5)
    );
    assert_eq!(e.bundle_version(), 2);
    Ok(())
}

#[test]
fn the_documents_keys_replace_the_configured_ones() -> TestResult {
    let old = DevIssuer::generate()?;
    let rotated = DevIssuer::generate()?;
    let e = engine(&old)?;
    let old_token = old.token("bob", &[]);
    let new_token = rotated.token("bob", &[]);
    assert_eq!(decide(&e, &old_token).outcome.verdict, Verdict::Allow);
    assert!(matches!(
        decide(&e, &new_token).outcome.verdict,
        Verdict::Unauthenticated(_)
    ));
    apply(
        &e,
        &document("default", 2, ALLOW_ALL, vec![keys(&rotated)?]),
    )?;
    // The old token was cached as verified; under the new keys it is checked again and refused.
    let d = decide(&e, &old_token);
    assert!(
        matches!(d.outcome.verdict, Verdict::Unauthenticated(_)),
        "{d:?}"
    );
    assert_eq!(d.token_cache, CacheUse::Miss);
    assert_eq!(decide(&e, &new_token).outcome.verdict, Verdict::Allow);
    // Settings travel with the keys: a required claim the token lacks refuses it.
    let mut strict = keys(&rotated)?;
    strict.settings.required_claims = vec!["email".into()];
    apply(&e, &document("default", 3, ALLOW_ALL, vec![strict]))?;
    assert_eq!(
        decide(&e, &new_token).outcome.verdict,
        Verdict::Unauthenticated(AuthError::MissingClaim("email".into()))
    );
    Ok(())
}

#[test]
fn a_refused_document_changes_nothing() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine(&issuer)?;
    let token = issuer.token("bob", &[]);
    let before = e.snapshot();
    let mut weak = keys(&issuer)?;
    weak.jwks
        .keys
        .iter_mut()
        .for_each(|k| k.n = Some("AQAB".into()));
    let cases = [
        document("nobody", 2, DENY_ALL, Vec::new()),
        document(
            "default",
            2,
            "forbid (principal, action, resource) when {",
            Vec::new(),
        ),
        document("default", 2, DENY_ALL, vec![weak]),
    ];
    for doc in &cases {
        let refused = before.with_document(doc);
        match (doc.tenant.as_str(), &refused) {
            ("nobody", Err(DocumentError::Bundle(SetError::Unknown(t)))) => assert_eq!(t, "nobody"),
            (
                _,
                Err(DocumentError::Bundle(SetError::Bundle { .. }) | DocumentError::Issuers(_)),
            ) => {}
            other => return Err(format!("{other:?} should have been refused").into()),
        }
        assert_eq!(decide(&e, &token).outcome.verdict, Verdict::Allow);
        assert!(Arc::ptr_eq(&before, &e.snapshot()));
    }
    // No issuers in the document: the configured ones stay.
    let kept = before.with_document(&document("default", 2, ALLOW_ALL, Vec::new()))?;
    assert!(kept.same_issuers(&before));
    // Equal issuers in the document: kept as they are, not recompiled.
    let same = before.with_document(&document("default", 3, ALLOW_ALL, vec![keys(&issuer)?]))?;
    assert!(same.same_issuers(&before));
    let other = DevIssuer::generate()?;
    let changed = Snapshot::with_document(
        &before,
        &document("default", 3, ALLOW_ALL, vec![keys(&other)?]),
    )?;
    assert!(!changed.same_issuers(&before));
    Ok(())
}
