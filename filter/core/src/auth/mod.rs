//! Authentication: finding the token in a request, parsing and verifying it against the
//! issuers' keys, and which routes need one.
//!
//! - [`error`]: why a request is unauthenticated (its log text and the client's challenge).
//! - [`extractor`]: where the token is (headers, cookies, query parameters).
//! - [`token`]: a compact JWS split and decoded, before any signature check.
//! - [`jwks`]: JSON Web Key Sets parsed into verifying keys.
//! - [`verifier`]: signature and claim checks for one issuer.
//! - [`host_crypto`]: signature checks the host does natively, with the pure-Rust fallback.
//! - `native_crypto` (native builds only): [`host_crypto`]'s checks with ring, for the native
//!   Envoy module.
//! - [`issuer`]: an issuer's configuration and token settings.
//! - [`routes`]: which paths need a token (required, optional, public).

pub mod error;
pub mod extractor;
pub(crate) mod host_crypto;
pub mod issuer;
pub mod jwks;
#[cfg(not(target_arch = "wasm32"))]
pub mod native_crypto;
pub mod routes;
pub mod token;
pub(crate) mod verifier;
