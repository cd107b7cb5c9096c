//! Engine behaviour across modules: token cache, claim headers, token forwarding.

use std::error::Error;

use harness::devkeys::{DevIssuer, now};
use portcullis_core::{Engine, StaticRequest, Verdict};
use serde_json::json;

type TestResult = Result<(), Box<dyn Error>>;

fn engine(issuer: &DevIssuer, extra: serde_json::Value) -> Result<Engine, Box<dyn Error>> {
    let mut cfg = harness::demo::plugin_config(issuer);
    if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            cfg.insert(k.clone(), v.clone());
        }
    }
    Ok(Engine::from_json(cfg.to_string().as_bytes())?)
}

#[test]
fn repeat_tokens_hit_the_cache_until_they_expire() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine(&issuer, json!({}))?;
    let t = now();
    // short: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","exp":now+10}
    let short = issuer
        .sign(&json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 10}));
    let req = StaticRequest::new("GET", "/api").with_bearer(&short);
    assert_eq!(e.check(&req, t).verdict, Verdict::Allow);
    assert_eq!(e.check(&req, t + 1).verdict, Verdict::Allow);
    let s = e.cache_stats();
    assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    // The second request was also answered from the decision cache...
    assert_eq!(e.decision_stats().hits, 1);
    // exp + 60 s leeway has passed: neither the cached entry nor its decisions may keep the
    // token alive.
    let late = e.check(&req, t + 71);
    assert!(
        matches!(late.verdict, Verdict::Unauthenticated(_)),
        "{late:?}"
    );
    assert_eq!(e.cache_stats().entries, 0);
    // A tampered copy of a cached token is verified (and refused), never a cache hit.
    let tampered = format!("{short}x");
    let bad = e.check(&StaticRequest::new("GET", "/api").with_bearer(&tampered), t);
    assert!(matches!(bad.verdict, Verdict::Unauthenticated(_)));
    Ok(())
}

#[test]
fn cache_can_be_turned_off() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine(&issuer, json!({"tokenCache": {"capacity": 0}}))?;
    let req = StaticRequest::new("GET", "/api").with_bearer(&issuer.token("bob", &[]));
    for _ in 0..3 {
        assert_eq!(e.check(&req, now()).verdict, Verdict::Allow);
    }
    assert_eq!(e.cache_stats().hits, 0);
    Ok(())
}

#[test]
fn claims_become_headers_and_spoofed_copies_go() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = harness::demo::plugin_config(&issuer);
    cfg["issuers"][0]["claimToHeaders"] = json!([
        {"claim": "sub", "header": "x-user"},
        {"claim": "groups", "header": "x-groups"},
    ]);
    cfg["issuers"][0]["payloadHeader"] = json!("x-jwt-payload");
    cfg["issuers"][0]["forward"] = json!(false);
    let e = Engine::from_json(cfg.to_string().as_bytes())?;
    let token = issuer.token("alice", &["admins", "ops"]);
    let req = StaticRequest::new("GET", "/api")
        .with_bearer(&token)
        .with_header("x-user", "mallory");
    let out = e.check(&req, now());
    assert_eq!(out.verdict, Verdict::Allow);
    let mut removed = out.remove_headers.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["authorization", "x-groups", "x-jwt-payload", "x-user"]
    );
    let payload = token.split('.').nth(1).ok_or("no payload")?;
    assert_eq!(
        out.set_headers,
        [
            ("x-user".to_owned(), "alice".to_owned()),
            ("x-groups".to_owned(), "admins,ops".to_owned()),
            ("x-jwt-payload".to_owned(), payload.to_owned()),
        ]
    );
    // Denied or unauthenticated requests set nothing.
    let anon = e.check(
        &StaticRequest::new("GET", "/api").with_header("x-user", "mallory"),
        now(),
    );
    assert!(anon.set_headers.is_empty());
    Ok(())
}

#[test]
fn bad_output_headers_are_refused() -> TestResult {
    let issuer = DevIssuer::generate()?;
    for header in ["Host", "host", ":path", "x user", "authorization"] {
        let mut cfg = harness::demo::plugin_config(&issuer);
        cfg["issuers"][0]["claimToHeaders"] = json!([{"claim": "sub", "header": header}]);
        let err = Engine::from_json(cfg.to_string().as_bytes())
            .err()
            .ok_or(header)?;
        assert!(
            err.to_string().contains("cannot be an output header"),
            "{header}: {err}"
        );
    }
    Ok(())
}

#[test]
fn rsa_algorithms_and_algorithm_confusion() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let t = now();
    let (claims, cfg) = crate::algorithms::any_rsa_alg_setup(&issuer, t);
    let e = Engine::from_json(cfg.to_string().as_bytes())?;
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let token = issuer.sign_alg(alg, &claims)?;
        let out = e.check(&StaticRequest::new("GET", "/api").with_bearer(&token), t);
        assert_eq!(out.verdict, Verdict::Allow, "{alg}");
        // The same signature under another algorithm name must not verify.
        let (_, rest) = token.split_once('.').ok_or("shape")?;
        let other = if alg.starts_with("RS") {
            alg.replace("RS", "PS")
        } else {
            alg.replace("PS", "RS")
        };
        let header = base64url(&format!(r#"{{"alg":"{other}","kid":"{}"}}"#, issuer.kid));
        let swapped = format!("{header}.{rest}");
        let out = e.check(&StaticRequest::new("GET", "/api").with_bearer(&swapped), t);
        assert!(
            matches!(out.verdict, Verdict::Unauthenticated(_)),
            "{alg} as {other}"
        );
    }
    // hs256_confusion: {"alg":"HS256"} "signed" with the RSA public key as an HMAC secret is
    // refused before any key is used: HS* is not accepted for an issuer with public keys.
    let rs = issuer.sign_alg("RS256", &claims)?;
    let (_, rest) = rs.split_once('.').ok_or("shape")?;
    let hs = format!("{}.{rest}", base64url(r#"{"alg":"HS256"}"#));
    let out = e.check(&StaticRequest::new("GET", "/api").with_bearer(&hs), t);
    assert!(
        matches!(&out.verdict, Verdict::Unauthenticated(err) if err.to_string().contains("HS256")),
        "{out:?}"
    );
    // es256_on_rsa_key: ES256 named for an RSA-only issuer finds no key.
    let es = format!(
        "{}.{rest}",
        base64url(&format!(r#"{{"alg":"ES256","kid":"{}"}}"#, issuer.kid))
    );
    let out = e.check(&StaticRequest::new("GET", "/api").with_bearer(&es), t);
    assert!(
        matches!(&out.verdict, Verdict::Unauthenticated(err) if err.to_string().contains("no key")),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn duplicate_claims_are_refused() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let e = engine(&issuer, json!({}))?;
    let t = now();
    // duplicated_sub: payload text {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","sub":"alice","exp":now+600},
    // correctly signed: a parser keeping the last "sub" would see alice.
    let payload = format!(
        r#"{{"iss":"{}","aud":"{}","sub":"bob","sub":"alice","exp":{}}}"#,
        issuer.issuer,
        issuer.audience,
        t + 600
    );
    let token = issuer.sign_raw_payload(&payload);
    let out = e.check(&StaticRequest::new("GET", "/api").with_bearer(&token), t);
    assert!(
        matches!(&out.verdict, Verdict::Unauthenticated(err) if err.to_string().contains("duplicate")),
        "{out:?}"
    );
    Ok(())
}

fn base64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// Signs `claims` with a fixed-seed P-256 (ES256) or Ed25519 (EdDSA) key; returns the token
/// and the issuer's JWK Set.
fn ec_token(
    alg: &str,
    claims: &serde_json::Value,
) -> Result<(String, serde_json::Value), Box<dyn Error>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use p256::ecdsa::signature::Signer as _;
    let input = format!(
        "{}.{}",
        base64url(&json!({"alg": alg, "kid": "k1"}).to_string()),
        base64url(&claims.to_string())
    );
    match alg {
        "ES256" => {
            let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32])?;
            let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
            let point = sk.verifying_key().to_encoded_point(false);
            let (x, y) = (point.x().ok_or("x")?, point.y().ok_or("y")?);
            let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": B64.encode(x), "y": B64.encode(y)}]});
            Ok((format!("{input}.{}", B64.encode(sig.to_bytes())), jwks))
        }
        _ => {
            let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
            let sig = sk.sign(input.as_bytes());
            let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": B64.encode(sk.verifying_key().as_bytes())}]});
            Ok((format!("{input}.{}", B64.encode(sig.to_bytes())), jwks))
        }
    }
}

#[test]
fn es256_and_eddsa() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let t = now();
    // claims: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","exp":now+600}
    let claims =
        json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 600});
    for alg in ["ES256", "EdDSA"] {
        let (token, jwks) = ec_token(alg, &claims)?;
        let mut cfg = harness::demo::plugin_config(&issuer);
        cfg["issuers"][0]["jwks"] = jwks;
        let e = Engine::from_json(cfg.to_string().as_bytes())?;
        let check = |tok: &str| {
            e.check(&StaticRequest::new("GET", "/api").with_bearer(tok), t)
                .verdict
        };
        assert_eq!(check(&token), Verdict::Allow, "{alg}");
        // tampered: one payload character changed, signature kept.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = base64url(
            &json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "eve", "exp": t + 600})
                .to_string(),
        );
        assert!(
            matches!(check(&parts.join(".")), Verdict::Unauthenticated(_)),
            "{alg} tampered"
        );
        // zero_signature: r = s = 0 (the "psychic signature") or an all-zero Ed25519 signature.
        parts[1] = token.split('.').nth(1).unwrap_or_default().to_owned();
        parts[2] = base64url_bytes(&[0u8; 64]);
        assert!(
            matches!(check(&parts.join(".")), Verdict::Unauthenticated(_)),
            "{alg} zero signature"
        );
    }
    // der_signature: an ES256 signature in DER form instead of raw r||s is refused.
    let (token, jwks) = ec_token("ES256", &claims)?;
    let (input, sig) = token.rsplit_once('.').ok_or("shape")?;
    let raw = base64url_decode(sig)?;
    let der = p256::ecdsa::Signature::from_slice(&raw)?.to_der();
    let mut cfg = harness::demo::plugin_config(&issuer);
    cfg["issuers"][0]["jwks"] = jwks;
    let e = Engine::from_json(cfg.to_string().as_bytes())?;
    let der_token = format!("{input}.{}", base64url_bytes(der.as_bytes()));
    let out = e.check(
        &StaticRequest::new("GET", "/api").with_bearer(&der_token),
        t,
    );
    assert!(
        matches!(out.verdict, Verdict::Unauthenticated(_)),
        "DER accepted"
    );
    Ok(())
}

fn base64url_bytes(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn base64url_decode(s: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s)?)
}

#[test]
fn required_claims_and_max_lifetime() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = harness::demo::plugin_config(&issuer);
    cfg["issuers"][0]["requiredClaims"] = json!(["email"]);
    cfg["issuers"][0]["maxLifetime"] = json!("1h");
    let e = Engine::from_json(cfg.to_string().as_bytes())?;
    let t = now();
    let base = json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob"});
    let with = |extra: serde_json::Value| {
        let mut c = base.clone();
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        issuer.sign(&c)
    };
    let verdict = |tok: &str| {
        e.check(&StaticRequest::new("GET", "/api").with_bearer(tok), t)
            .verdict
    };
    let refused_because = |tok: &str, why: &str| matches!(verdict(tok), Verdict::Unauthenticated(err) if err.to_string().contains(why));
    // ok: {..., "email":"b@x","iat":now,"exp":now+3600}
    assert_eq!(
        verdict(&with(json!({"email": "b@x", "iat": t, "exp": t + 3600}))),
        Verdict::Allow
    );
    // no_email: {..., "iat":now,"exp":now+600}
    assert!(refused_because(
        &with(json!({"iat": t, "exp": t + 600})),
        "required claim \"email\""
    ));
    // null_email: {..., "email":null,"iat":now,"exp":now+600}
    assert!(refused_because(
        &with(json!({"email": null, "iat": t, "exp": t + 600})),
        "required claim"
    ));
    // too_long: {..., "email":"b@x","iat":now,"exp":now+3601}
    assert!(refused_because(
        &with(json!({"email": "b@x", "iat": t, "exp": t + 3601})),
        "lifetime"
    ));
    // no_iat: {..., "email":"b@x","exp":now+600}
    assert!(refused_because(
        &with(json!({"email": "b@x", "exp": t + 600})),
        "lifetime"
    ));
    Ok(())
}

#[test]
fn public_and_optional_routes_use_the_anonymous_principal() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let mut cfg = harness::demo::plugin_config(&issuer);
    cfg["routes"] = json!([
        {"path": "/healthz", "auth": "public"},
        {"prefix": "/docs/", "auth": "optional"},
    ]);
    cfg["bundle"]["policies"] = json!(
        r#"@id("users-read") permit (principal is User, action == Action::"GET", resource);
           @id("anonymous-health") permit (principal == Anonymous::"anonymous", action == Action::"GET", resource == Path::"/healthz");
           @id("anonymous-docs") permit (principal == Anonymous::"anonymous", action == Action::"GET", resource) when { context.path like "/docs/*" };"#
    );
    let e = Engine::from_json(cfg.to_string().as_bytes())?;
    let t = now();
    let bob = issuer.token("bob", &[]);
    let run = |method: &str, path: &str, token: Option<&str>| {
        let r = StaticRequest::new(method, path);
        e.check(
            &match token {
                Some(tok) => r.with_bearer(tok),
                None => r,
            },
            t,
        )
    };
    let anon = Some(r#"Anonymous::"anonymous""#.to_owned());

    let o = run("GET", "/healthz", None);
    assert_eq!(
        (o.verdict, o.policies, o.principal.clone()),
        (
            Verdict::Allow,
            vec!["anonymous-health".to_owned()],
            anon.clone()
        )
    );
    // Public routes do not look at tokens at all, not even broken ones.
    assert_eq!(
        run("GET", "/healthz?probe=1", Some("garbage")).verdict,
        Verdict::Allow
    );
    assert_eq!(run("POST", "/healthz", None).verdict, Verdict::Forbidden);

    let o = run("GET", "/docs/intro", None);
    assert_eq!(
        (o.verdict, o.policies, o.principal),
        (Verdict::Allow, vec!["anonymous-docs".to_owned()], anon)
    );
    let o = run("GET", "/docs/intro", Some(&bob));
    assert_eq!(
        (o.verdict, o.policies, o.principal),
        (
            Verdict::Allow,
            vec!["users-read".to_owned()],
            Some(r#"User::"bob""#.to_owned())
        )
    );
    // Optional routes verify a token that is present.
    assert!(matches!(
        run("GET", "/docs/intro", Some("garbage")).verdict,
        Verdict::Unauthenticated(_)
    ));

    // Everything else still requires a token.
    assert!(matches!(
        run("GET", "/api", None).verdict,
        Verdict::Unauthenticated(_)
    ));
    assert_eq!(run("GET", "/api", Some(&bob)).verdict, Verdict::Allow);
    Ok(())
}
