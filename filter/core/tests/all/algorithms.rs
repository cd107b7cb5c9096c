//! ES384, HMAC issuers with shared secrets, and signature checks handed to the host.

use std::cell::Cell;
use std::error::Error;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use harness::devkeys::{DevIssuer, now};
use portcullis_core::{AuthError, Digest, Engine, HostCrypto, Snapshot, StaticRequest, Verdict};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn Error>>;

const HS_ISSUER: &str = "https://hmac.example";

fn verdict(e: &Engine, token: &str, t: u64) -> Verdict {
    e.check(&StaticRequest::new("GET", "/api").with_bearer(token), t)
        .verdict
}

fn refused(err: AuthError) -> Verdict {
    Verdict::Unauthenticated(err)
}

fn input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// es384_valid: {"alg":"ES384","kid":"fixed"}, signed with the harness's fixed P-384 key.
fn es384(claims: &Value) -> Result<(String, Value), Box<dyn Error>> {
    let (token, _, jwks) = harness::devkeys::sign_fixed("ES384", claims)?;
    Ok((token, jwks))
}

fn hs(alg: &str, secret: &[u8], claims: &Value) -> Result<String, Box<dyn Error>> {
    let input = input(&json!({"alg": alg, "kid": "s1"}), claims);
    let tag = harness::devkeys::hmac_tag(alg, secret, input.as_bytes())?;
    Ok(format!("{input}.{}", B64.encode(tag)))
}

#[test]
fn es384_fixture_tokens() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let t = now();
    // claims: {"iss":DEV_ISSUER,"aud":"portcullis-demo","sub":"bob","exp":now+600}
    let claims =
        json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 600});
    // es384_valid: {"alg":"ES384","kid":"fixed"}, signed with the fixed-seed P-384 key.
    let (token, jwks) = es384(&claims)?;
    let mut cfg = harness::demo::plugin_config(&issuer);
    cfg["issuers"][0]["jwks"] = jwks;
    cfg["tokenCache"] = json!({"capacity": 0});
    let e = Engine::from_json(cfg.to_string().as_bytes())?;
    assert_eq!(verdict(&e, &token, t), Verdict::Allow);
    let (head, rest) = token.split_once('.').ok_or("shape")?;
    let (payload, sig) = rest.split_once('.').ok_or("shape")?;
    // es384_tampered: payload with sub "eve", signature of the original.
    let eve = json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "eve", "exp": t + 600});
    let tampered = format!("{head}.{}.{sig}", B64.encode(eve.to_string()));
    assert_eq!(verdict(&e, &tampered, t), refused(AuthError::BadSignature));
    // es384_zero: r = s = 0.
    let zero = format!("{head}.{payload}.{}", B64.encode([0u8; 96]));
    assert_eq!(verdict(&e, &zero, t), refused(AuthError::BadSignature));
    // es384_short: the first 64 bytes of the signature (an ES256-sized r||s).
    let raw = B64.decode(sig)?;
    let short = format!(
        "{head}.{payload}.{}",
        B64.encode(raw.get(..64).ok_or("len")?)
    );
    assert_eq!(verdict(&e, &short, t), refused(AuthError::BadSignature));
    // es384_as_es256: the header claims ES256; the P-384 key does not fit it.
    let as256 = format!(
        "{}.{payload}.{sig}",
        B64.encode(r#"{"alg":"ES256","kid":"fixed"}"#)
    );
    assert_eq!(
        verdict(&e, &as256, t),
        refused(AuthError::NoKey {
            issuer: issuer.issuer.clone(),
            kid: Some("fixed".into()),
            alg: "ES256"
        })
    );
    Ok(())
}

/// The demo configuration plus an HMAC issuer with one 64-byte secret.
fn with_hmac_issuer(issuer: &DevIssuer, secret: &[u8]) -> Value {
    let mut cfg = harness::demo::plugin_config(issuer);
    if let Some(list) = cfg.get_mut("issuers").and_then(Value::as_array_mut) {
        list.push(json!({
            "issuer": HS_ISSUER,
            "sharedSecrets": {"keys": [{"kty": "oct", "kid": "s1", "k": B64.encode(secret)}]},
        }));
    }
    if let Some(o) = cfg.as_object_mut() {
        o.insert("tokenCache".into(), json!({"capacity": 0}));
    }
    cfg
}

#[test]
fn hmac_issuers_take_only_hmac_tokens() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let secret = [0x42u8; 64];
    let e = Engine::from_json(with_hmac_issuer(&issuer, &secret).to_string().as_bytes())?;
    let t = now();
    // claims: {"iss":"https://hmac.example","sub":"bob","exp":now+600}
    let claims = json!({"iss": HS_ISSUER, "sub": "bob", "exp": t + 600});
    for alg in ["HS256", "HS384", "HS512"] {
        // hs*_valid: {"alg":alg,"kid":"s1"} with the configured secret.
        assert_eq!(verdict(&e, &hs(alg, &secret, &claims)?, t), Verdict::Allow);
        // hs*_wrong_secret: the same token made with another 64-byte secret.
        assert_eq!(
            verdict(&e, &hs(alg, &[0x43u8; 64], &claims)?, t),
            refused(AuthError::BadSignature),
            "{alg}"
        );
    }
    // rs256_for_hmac_issuer: a correctly RS256-signed token naming the HMAC issuer.
    let rs = issuer.sign_alg("RS256", &claims)?;
    assert_eq!(
        verdict(&e, &rs, t),
        refused(AuthError::NoKey {
            issuer: HS_ISSUER.into(),
            kid: Some(issuer.kid.clone()),
            alg: "RS256"
        })
    );
    // hs256_for_rsa_issuer: HMAC over the RSA issuer's JWK text as the "secret" — the key
    // confusion attack; the RSA issuer has no shared secret, so no key is even tried.
    let confused = hs(
        "HS256",
        issuer.jwks().to_string().as_bytes(),
        &json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "eve", "exp": t + 600}),
    )?;
    assert_eq!(
        verdict(&e, &confused, t),
        refused(AuthError::NoKey {
            issuer: issuer.issuer.clone(),
            kid: Some("s1".into()),
            alg: "HS256"
        })
    );
    Ok(())
}

#[test]
fn hmac_secrets_are_checked_at_configuration() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let rsa = issuer.jwks()["keys"][0].clone();
    let oct = |n: usize, alg: Option<&str>| {
        let mut k = json!({"kty": "oct", "kid": "s", "k": B64.encode(vec![7u8; n])});
        if let Some(a) = alg {
            k["alg"] = json!(a);
        }
        k
    };
    let cases = [
        (
            json!({"issuer": HS_ISSUER}),
            "exactly one of `jwks` (public keys) and `sharedSecrets`",
        ),
        (
            json!({"issuer": HS_ISSUER, "jwks": {"keys": [rsa]}, "sharedSecrets": {"keys": [oct(64, None)]}}),
            "exactly one of",
        ),
        (
            json!({"issuer": HS_ISSUER, "jwks": {"keys": [oct(64, None)]}}),
            "shared secrets go in `sharedSecrets`",
        ),
        (
            json!({"issuer": HS_ISSUER, "sharedSecrets": {"keys": [rsa]}}),
            "holds `oct` keys only",
        ),
        (
            json!({"issuer": HS_ISSUER, "sharedSecrets": {"keys": [oct(64, None), rsa]}}),
            "cannot be mixed",
        ),
        (
            json!({"issuer": HS_ISSUER, "sharedSecrets": {"keys": [oct(31, None)]}}),
            "31 bytes is shorter than the 32 bytes HS256 needs",
        ),
        (
            json!({"issuer": HS_ISSUER, "sharedSecrets": {"keys": [oct(48, Some("HS512"))]}}),
            "48 bytes is shorter than the 64 bytes HS512 needs",
        ),
        (
            json!({"issuer": HS_ISSUER, "sharedSecrets": {"keys": [oct(64, Some("RS256"))]}}),
            "does not fit the key type",
        ),
    ];
    for (issuer_cfg, want) in cases {
        let mut cfg = harness::demo::plugin_config(&issuer);
        if let Some(list) = cfg["issuers"].as_array_mut() {
            list.push(issuer_cfg.clone());
        }
        let err = Engine::from_json(cfg.to_string().as_bytes())
            .err()
            .ok_or_else(|| format!("accepted: {issuer_cfg}"))?;
        assert!(err.to_string().contains(want), "{issuer_cfg}: {err}");
        // The secret never appears in the error.
        assert!(!err.to_string().contains(&B64.encode([7u8; 31])), "{err}");
    }
    Ok(())
}

/// A host double that verifies like Envoy's `verify_signature` (SPKI DER key, PKCS#1 v1.5 or
/// DER ECDSA signature), with independent decoders, and counts its calls.
#[derive(Debug, Default)]
struct RecordingHost {
    calls: Rc<Cell<u32>>,
    /// Answer `None` (as a host without the function).
    absent: bool,
}

impl HostCrypto for RecordingHost {
    fn verify(&self, digest: Digest, spki: &[u8], sig: &[u8], msg: &[u8]) -> Option<bool> {
        use p256::ecdsa::signature::Verifier as _;
        use p256::pkcs8::DecodePublicKey as _;
        use sha2::Digest as _;
        self.calls.set(self.calls.get() + 1);
        if self.absent {
            return None;
        }
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(spki) {
            let ok = match digest {
                Digest::Sha256 => k.verify(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                    &sha2::Sha256::digest(msg),
                    sig,
                ),
                Digest::Sha384 => k.verify(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    &sha2::Sha384::digest(msg),
                    sig,
                ),
                Digest::Sha512 => k.verify(
                    rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                    &sha2::Sha512::digest(msg),
                    sig,
                ),
            };
            return Some(ok.is_ok());
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
            let sig = p256::ecdsa::Signature::from_der(sig).ok()?;
            return Some(digest == Digest::Sha256 && k.verify(msg, &sig).is_ok());
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
            let sig = p384::ecdsa::Signature::from_der(sig).ok()?;
            return Some(digest == Digest::Sha384 && k.verify(msg, &sig).is_ok());
        }
        Some(false)
    }
}

/// An engine over `cfg` whose signature checks may go to `host`.
fn with_host(cfg: &Value, host: RecordingHost) -> Result<Engine, Box<dyn Error>> {
    engine_with_crypto(cfg, Box::new(host))
}

/// An engine over `cfg` whose signature checks may go to `crypto` (also the native module's).
pub fn engine_with_crypto(
    cfg: &Value,
    crypto: Box<dyn HostCrypto>,
) -> Result<Engine, Box<dyn Error>> {
    let snapshot = Snapshot::from_json(cfg.to_string().as_bytes())?;
    Ok(Engine::new(std::sync::Arc::new(snapshot), Some(crypto)))
}

/// Bob's claims valid from `t` for 10 minutes, and the demo configuration with `issuer`'s key
/// for every RSA algorithm and no token cache (every token's signature is checked).
#[expect(
    clippy::indexing_slicing,
    reason = "test setup: the demo configuration has an issuer, and serde_json indexes by path"
)]
pub fn any_rsa_alg_setup(issuer: &DevIssuer, t: u64) -> (Value, Value) {
    let claims =
        json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "bob", "exp": t + 600});
    let mut cfg = harness::demo::plugin_config(issuer);
    cfg["issuers"][0]["jwks"] = issuer.jwks_any_rsa_alg();
    cfg["tokenCache"] = json!({"capacity": 0});
    (claims, cfg)
}

#[test]
fn the_host_checks_rsa_and_ecdsa_when_it_can() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let t = now();
    let (claims, mut cfg) = any_rsa_alg_setup(&issuer, t);
    let host = RecordingHost::default();
    let calls = host.calls.clone();
    let e = with_host(&cfg, host)?;
    assert!(e.host_crypto_in_use());
    for (alg, by_host) in [
        ("RS256", 1),
        ("RS384", 1),
        ("RS512", 1),
        ("PS256", 0),
        ("PS512", 0),
    ] {
        calls.set(0);
        let token = issuer.sign_alg(alg, &claims)?;
        assert_eq!(verdict(&e, &token, t), Verdict::Allow, "{alg}");
        assert_eq!(calls.get(), by_host, "{alg}");
    }
    // A bad signature: the host says no, the Rust check confirms, the token is refused.
    calls.set(0);
    // forged: bob's signing input with the signature of a token for eve.
    let token = issuer.sign_alg("RS256", &claims)?;
    let eve = json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "eve", "exp": t + 600});
    let other = issuer.sign_alg("RS256", &eve)?;
    let bad = format!(
        "{}.{}",
        token.rsplit_once('.').ok_or("shape")?.0,
        other.rsplit_once('.').ok_or("shape")?.1
    );
    assert_eq!(verdict(&e, &bad, t), refused(AuthError::BadSignature));
    assert_eq!(calls.get(), 1);

    // ES384 through the host: the core re-encodes r||s as DER for it.
    let (token, jwks) = es384(&claims)?;
    cfg["issuers"][0]["jwks"] = jwks;
    let host = RecordingHost::default();
    let calls = host.calls.clone();
    let e = with_host(&cfg, host)?;
    assert_eq!(verdict(&e, &token, t), Verdict::Allow);
    assert_eq!(calls.get(), 1);
    // A zero signature never reaches the host.
    let (head, rest) = token.rsplit_once('.').ok_or("shape")?;
    let _ = rest;
    let zero = format!("{head}.{}", B64.encode([0u8; 96]));
    assert_eq!(verdict(&e, &zero, t), refused(AuthError::BadSignature));
    assert_eq!(calls.get(), 1);

    // A host without the function: the Rust path decides.
    let host = RecordingHost {
        absent: true,
        ..RecordingHost::default()
    };
    let e = with_host(&cfg, host)?;
    assert_eq!(verdict(&e, &token, t), Verdict::Allow);

    // `hostCrypto: false` keeps every check in the filter.
    cfg["hostCrypto"] = json!(false);
    let host = RecordingHost::default();
    let calls = host.calls.clone();
    let e = with_host(&cfg, host)?;
    assert!(!e.host_crypto_in_use());
    assert_eq!(verdict(&e, &token, t), Verdict::Allow);
    assert_eq!(calls.get(), 0);
    Ok(())
}
