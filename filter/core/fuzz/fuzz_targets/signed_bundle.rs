//! The signed document a filter receives: arbitrary bytes as the signed envelope (verified
//! against a fixed key: never accepted unless really signed), and the same bytes as the payload
//! of a valid signature, so that the document parser and the bundle compiler behind a good
//! signature see arbitrary input. Nothing may panic.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use portcullis_core::bundle::Bundle;
use portcullis_core::bundle::signed::{SignedBundle, SignedBundleError, key_id};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    if let Ok(envelope) = serde_json::from_slice::<SignedBundle>(data) {
        let _ = envelope.verify(&public);
    }
    let payload = String::from_utf8_lossy(data).into_owned();
    let signed = SignedBundle {
        signature: URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes()),
        key_id: key_id(&public),
        payload,
    };
    match signed.verify(&public) {
        Ok(doc) => {
            let _ = Bundle::try_from(&doc.bundle);
        }
        Err(e) => assert!(matches!(e, SignedBundleError::Document(_)), "{e}"),
    }
});
