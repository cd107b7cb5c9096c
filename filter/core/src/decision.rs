//! What the filter decided, and the reply it sends when it stops a request.

pub use crate::auth::error::AuthError;

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Unauthenticated(AuthError),
    Forbidden,
}

/// Why the policies could not decide a request as they are written. An erroring policy is
/// skipped, as Cedar specifies; every other cause denies the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// A policy failed to evaluate (Cedar's message, which names it).
    #[error("{message}")]
    Policy { policy: String, message: String },
    /// The Cedar request could not be built (its principal, entities or context).
    #[error("{0}")]
    Request(String),
    /// The policy index met a residual it cannot evaluate.
    #[error("the policy index could not decide the request; denied")]
    Undecided,
    /// The token names a tenant that has no policy set.
    #[error("the token's tenant {0:?} has no policy set")]
    UnknownTenant(String),
    /// A host matched a tenant the configuration does not hold (a bug; denied).
    #[error("tenant index out of range")]
    TenantIndex,
}

/// A decision with what explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The Cedar principal, when the token verified (`User::"alice"`).
    pub principal: Option<String>,
    /// The policies that determined the decision.
    pub policies: Vec<String>,
    /// What kept the policies from deciding as written: policies that failed to evaluate
    /// (Cedar skips them), or why the request was denied undecided.
    pub errors: Vec<DecisionError>,
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

impl LocalReply {
    /// The headers as (name, value) pairs, as hosts take them.
    #[must_use]
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
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
