//! The native module's signature checks (`auth::native_crypto`, ring) inside the engine and on
//! their own: ring confirms what is valid, and anything it does not confirm is left to the
//! core's Rust check, which decides.

use std::cell::Cell;
use std::error::Error;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use harness::devkeys::{DevIssuer, now};
use portcullis_core::auth::native_crypto::{RingCrypto, ring_verify};
use portcullis_core::{AuthError, Digest, Engine, StaticRequest, Verdict};
use serde_json::{Value, json};

use crate::algorithms::{any_rsa_alg_setup, engine_with_crypto};

type TestResult = Result<(), Box<dyn Error>>;

/// Checks counted: (ring's, the core's).
type Counts = Rc<Cell<(u32, u32)>>;

/// An engine over `cfg` with ring's checks, and the count of its checks.
fn ring_engine(cfg: &Value) -> Result<(Engine, Counts), Box<dyn Error>> {
    let counts = Rc::new(Cell::new((0, 0)));
    let seen = counts.clone();
    let crypto = RingCrypto::new(Box::new(move |ring| {
        let (r, c) = seen.get();
        seen.set(if ring { (r + 1, c) } else { (r, c + 1) });
    }));
    Ok((engine_with_crypto(cfg, Box::new(crypto))?, counts))
}

fn verdict(e: &Engine, token: &str, t: u64) -> Verdict {
    e.check(&StaticRequest::new("GET", "/api").with_bearer(token), t)
        .verdict
}

#[test]
fn ring_confirms_rsa_and_ecdsa_and_never_refuses_alone() -> TestResult {
    let issuer = DevIssuer::generate()?;
    let t = now();
    let (claims, mut cfg) = any_rsa_alg_setup(&issuer, t);
    let (e, counts) = ring_engine(&cfg)?;
    assert!(e.host_crypto_in_use());
    // PKCS #1 v1.5 goes to ring; PSS stays with the core (HostCrypto takes no PSS).
    for (alg, by_ring) in [("RS256", 1), ("RS384", 1), ("RS512", 1), ("PS256", 0)] {
        counts.set((0, 0));
        let token = issuer.sign_alg(alg, &claims)?;
        assert_eq!(verdict(&e, &token, t), Verdict::Allow, "{alg}");
        assert_eq!(counts.get(), (by_ring, 0), "{alg}");
    }
    // forged: bob's signing input with the signature of a token for eve. ring does not
    // confirm it, the core checks it and refuses.
    let eve = json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "eve", "exp": t + 600});
    let (token, other) = (
        issuer.sign_alg("RS256", &claims)?,
        issuer.sign_alg("RS256", &eve)?,
    );
    let forged = format!(
        "{}.{}",
        token.rsplit_once('.').ok_or("shape")?.0,
        other.rsplit_once('.').ok_or("shape")?.1
    );
    counts.set((0, 0));
    assert_eq!(
        verdict(&e, &forged, t),
        Verdict::Unauthenticated(AuthError::BadSignature)
    );
    assert_eq!(counts.get(), (0, 1));

    // ES256 and ES384: the core hands ring DER signatures.
    for alg in ["ES256", "ES384"] {
        let (token, _, jwks) = harness::devkeys::sign_fixed(alg, &claims)?;
        cfg["issuers"][0]["jwks"] = jwks;
        let (e, counts) = ring_engine(&cfg)?;
        assert_eq!(verdict(&e, &token, t), Verdict::Allow, "{alg}");
        assert_eq!(counts.get(), (1, 0), "{alg}");
        // One flipped bit in the signature: ring declines, the core refuses.
        let (head, sig) = token.rsplit_once('.').ok_or("shape")?;
        let mut sig = B64.decode(sig)?;
        if let Some(b) = sig.first_mut() {
            *b ^= 1;
        }
        let bad = format!("{head}.{}", B64.encode(&sig));
        assert_eq!(
            verdict(&e, &bad, t),
            Verdict::Unauthenticated(AuthError::BadSignature),
            "{alg}"
        );
        assert_eq!(counts.get(), (1, 1), "{alg}");
    }
    Ok(())
}

#[test]
fn ring_declines_what_it_does_not_take() -> TestResult {
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;
    use sha2::Digest as _;
    let msg = b"header.payload";

    // P-256 with SHA-256: confirmed; the same signature under SHA-384, or over other bytes,
    // or as anything but DER: not confirmed.
    let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32])?;
    let spki = p256::PublicKey::from(sk.verifying_key()).to_public_key_der()?;
    let sig: p256::ecdsa::Signature = sk.sign(msg);
    let der = sig.to_der();
    assert_eq!(
        ring_verify(Digest::Sha256, spki.as_bytes(), der.as_bytes(), msg),
        Some(true)
    );
    assert_eq!(
        ring_verify(Digest::Sha384, spki.as_bytes(), der.as_bytes(), msg),
        None
    );
    assert_eq!(
        ring_verify(Digest::Sha256, spki.as_bytes(), der.as_bytes(), b"other"),
        None
    );
    assert_eq!(
        ring_verify(Digest::Sha256, spki.as_bytes(), &sig.to_bytes(), msg),
        None
    );

    // RSA under 2,048 bits: ring refuses such keys, so it leaves even a valid signature to
    // the core; a key that is not SubjectPublicKeyInfo DER likewise.
    let mut rng = rand::thread_rng();
    let small = rsa::RsaPrivateKey::new(&mut rng, 1024)?;
    let small_spki = small.to_public_key().to_public_key_der()?;
    let small_sig = small.sign(
        rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        &sha2::Sha256::digest(msg),
    )?;
    assert_eq!(
        ring_verify(Digest::Sha256, small_spki.as_bytes(), &small_sig, msg),
        None
    );
    assert_eq!(
        ring_verify(Digest::Sha256, b"not a key", &small_sig, msg),
        None
    );

    let key = rsa::RsaPrivateKey::new(&mut rng, 2048)?;
    let spki = key.to_public_key().to_public_key_der()?;
    let sig = key.sign(
        rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        &sha2::Sha256::digest(msg),
    )?;
    assert_eq!(
        ring_verify(Digest::Sha256, spki.as_bytes(), &sig, msg),
        Some(true)
    );
    assert_eq!(
        ring_verify(Digest::Sha512, spki.as_bytes(), &sig, msg),
        None
    );
    Ok(())
}
