//! [`FetchError`], and the limit on error text kept (in logs and `issuer_fetch_state`).

use super::RefreshOutcome;
use crate::db::DbError;

/// Longest `last_error` text recorded.
pub(super) const MAX_ERROR_CHARS: usize = 300;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No such issuer.
    #[error("unknown issuer {0:?}")]
    UnknownIssuer(String),
    /// The issuer has neither a `jwks_uri` nor a discovery URL (its keys are uploaded).
    #[error("issuer {0:?} has no jwks_uri or discovery URL; its keys are not fetched")]
    NotFetched(String),
    /// The request failed (connection, timeout, TLS, ...): what failed, and the error's text
    /// without the URL.
    #[error("HTTP request failed: {failure}: {detail}")]
    Http {
        failure: HttpFailure,
        detail: String,
    },
    /// The issuer answered with a status other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The response body exceeded [`FetchSettings::max_body_bytes`].
    #[error("response body exceeds the size limit")]
    TooLarge,
    /// The discovery document or the key set is not usable.
    #[error("invalid response: {0}")]
    Invalid(InvalidResponse),
    /// The discovery document names another issuer.
    #[error("discovery document names issuer {found:?}, not the configured one")]
    IssuerMismatch { found: String },
    /// Postgres failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<deadpool_postgres::PoolError> for FetchError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

impl From<tokio_postgres::Error> for FetchError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

impl FetchError {
    /// A copy for the callers that shared a coalesced fetch (Postgres errors become text).
    pub(super) fn duplicate(&self) -> Self {
        match self {
            Self::UnknownIssuer(s) => Self::UnknownIssuer(s.clone()),
            Self::NotFetched(s) => Self::NotFetched(s.clone()),
            Self::Http { failure, detail } => Self::Http {
                failure: *failure,
                detail: detail.clone(),
            },
            Self::Status(s) => Self::Status(*s),
            Self::TooLarge => Self::TooLarge,
            Self::Invalid(why) => Self::Invalid(why.clone()),
            Self::IssuerMismatch { found } => Self::IssuerMismatch {
                found: found.clone(),
            },
            Self::Db(DbError::Url(s)) => Self::Db(DbError::Url(s.clone())),
            Self::Db(DbError::Pool(s)) => Self::Db(DbError::Pool(s.clone())),
            Self::Db(DbError::Connect(s)) => Self::Db(DbError::Connect(s.clone())),
            Self::Db(e) => Self::Db(DbError::Connect(e.to_string())),
        }
    }

    /// Whether the issuer itself (not its configuration or Postgres) failed: these are
    /// recorded in `issuer_fetch_state` and counted.
    pub(super) fn is_fetch_failure(&self) -> bool {
        !matches!(self, Self::UnknownIssuer(_) | Self::NotFetched(_))
    }
}

/// What part of an HTTP exchange with an issuer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpFailure {
    #[error("cannot build the HTTP client")]
    Client,
    #[error("timed out")]
    Timeout,
    #[error("cannot connect")]
    Connect,
    #[error("too many redirects")]
    Redirects,
    #[error("cannot read the body")]
    Body,
    #[error("request failed")]
    Request,
}

/// What makes a discovery document or a key set unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    #[error("discovery document is not JSON")]
    DiscoveryNotJson,
    #[error("discovery document has no \"issuer\"")]
    NoIssuer,
    #[error("discovery document has no \"jwks_uri\"")]
    NoJwksUri,
    #[error("discovery document's jwks_uri is not an http(s) URL")]
    JwksUriScheme,
    #[error("the key set is not JSON")]
    KeySetNotJson,
    #[error("the key set has no \"keys\" array")]
    NoKeysArray,
    #[error("the key set holds more than {} keys", super::MAX_KEYS)]
    TooManyKeys,
    /// No key could be taken; why each member was not (shortened to the length kept).
    #[error("{}", truncate(&no_usable_key(.0), MAX_ERROR_CHARS))]
    NoUsableKey(Vec<String>),
    /// The keys taken do not make a key set the filter would build (its refusal).
    #[error("{0}")]
    KeySet(String),
}

fn no_usable_key(skipped: &[String]) -> String {
    if skipped.is_empty() {
        "no usable signing key".to_owned()
    } else {
        format!("no usable signing key: {}", skipped.join("; "))
    }
}

/// A shared result, for the callers that coalesced onto a fetch.
pub(super) fn duplicate(
    result: &Result<RefreshOutcome, FetchError>,
) -> Result<RefreshOutcome, FetchError> {
    match result {
        Ok(o) => Ok(o.clone()),
        Err(e) => Err(e.duplicate()),
    }
}

/// At most `max` characters of `s`.
pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", s.get(..at).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }
}
