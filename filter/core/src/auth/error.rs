//! Why a request is unauthenticated, for logs and for the client's challenge.

use crate::auth::token::TokenError;

/// Why a request is unauthenticated. The `Display` text goes to logs; clients get only
/// [`AuthError::description`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("authorization header is not a bearer token")]
    WrongScheme,
    #[error("malformed token: {0}")]
    Malformed(#[from] TokenError),
    #[error("token has no string iss claim")]
    NoIssuer,
    #[error("issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("no key of issuer {issuer:?} matches kid {kid:?} and alg {alg}")]
    NoKey {
        /// The token's (trusted) issuer: with `sync`, its keys are refreshed.
        issuer: String,
        kid: Option<String>,
        alg: &'static str,
    },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has no numeric exp claim")]
    NoExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("token lifetime (exp - iat) is longer than allowed, or iat is missing")]
    Lifetime,
    #[error("token has no string {0:?} claim to name the principal")]
    NoSubject(String),
}

impl AuthError {
    /// RFC 6750 §3.1 `error` code, if any (none when no credentials were sent at all).
    #[must_use]
    pub fn code(&self) -> Option<&'static str> {
        match self {
            // No bearer credentials at all: a bare challenge (RFC 6750 §3.1).
            Self::Missing | Self::WrongScheme => None,
            _ => Some("invalid_token"),
        }
    }

    /// A short description safe to show to clients: no key ids, issuers or internals.
    #[must_use]
    pub fn description(&self) -> &'static str {
        match self {
            Self::Missing => "bearer token required",
            Self::WrongScheme => "authorization must use the Bearer scheme",
            Self::Expired => "the token has expired",
            Self::NotYetValid | Self::IssuedInFuture => "the token is not valid yet",
            Self::Audience => "the token is not meant for this service",
            _ => "the token is invalid",
        }
    }
}
