//! What the filter decided, and the reply it sends when it stops a request.

use crate::token::TokenError;

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

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Unauthenticated(AuthError),
    Forbidden,
}

/// A decision with what explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The Cedar principal, when the token verified (`User::"alice"`).
    pub principal: Option<String>,
    /// The policies that determined the decision.
    pub policies: Vec<String>,
    /// Policy evaluation errors (Cedar skips erroring policies).
    pub errors: Vec<String>,
    /// Version of the bundle that decided.
    pub bundle_version: u64,
    /// The policy set that decided (`default` or a tenant id).
    pub policy_set: String,
    /// In dry run: whether the policies would have allowed the request (the verdict is then
    /// Allow whatever they say). `None` when the set enforces.
    pub dry_run: Option<bool>,
    /// The shadow bundle's decision (allow, determining policies), when the set has one.
    pub shadow: Option<(bool, Vec<String>)>,
    /// Request headers to remove before the upstream (client copies of headers the filter
    /// writes, and the token when it is not forwarded).
    pub remove_headers: Vec<String>,
    /// Request headers to set for the upstream (claims), when allowed.
    pub set_headers: Vec<(String, String)>,
}

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Realm named in `WWW-Authenticate`.
pub const REALM: &str = "portcullis";
/// Response header naming the determining policies, sent only when debug headers are on.
pub const POLICIES_HEADER: &str = "x-portcullis-policies";
/// Header naming the policy set and bundle version that decided (`default@17`), only when
/// debug headers are on: on the filter's own replies, and on allowed requests to the upstream.
pub const BUNDLE_HEADER: &str = "x-portcullis-bundle";

impl Outcome {
    /// The policy set and bundle version that decided, as [`BUNDLE_HEADER`] spells them.
    #[must_use]
    pub fn bundle_label(&self) -> String {
        format!("{}@{}", self.policy_set, self.bundle_version)
    }

    /// The local reply for a denied request, or `None` when the request goes on.
    #[must_use]
    pub fn local_reply(&self, debug_headers: bool) -> Option<LocalReply> {
        let mut reply = match &self.verdict {
            Verdict::Allow => return None,
            Verdict::Unauthenticated(e) => {
                let challenge = match e.code() {
                    None => format!("Bearer realm=\"{REALM}\""),
                    Some(code) => format!(
                        "Bearer realm=\"{REALM}\", error=\"{code}\", error_description=\"{}\"",
                        e.description()
                    ),
                };
                LocalReply {
                    status: 401,
                    headers: vec![("www-authenticate", challenge)],
                    body: format!("{}\n", e.description()),
                }
            }
            Verdict::Forbidden => LocalReply {
                status: 403,
                headers: Vec::new(),
                body: "access denied\n".to_owned(),
            },
        };
        reply
            .headers
            .push(("content-type", "text/plain".to_owned()));
        if debug_headers {
            if matches!(self.verdict, Verdict::Forbidden) {
                reply
                    .headers
                    .push((POLICIES_HEADER, self.policies.join(",")));
            }
            reply.headers.push((BUNDLE_HEADER, self.bundle_label()));
        }
        Some(reply)
    }
}
