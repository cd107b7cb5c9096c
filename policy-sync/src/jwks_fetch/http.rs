//! Talking to the issuer: the HTTP client, bounded GETs, OIDC discovery, and request errors
//! as short text without URLs.

use reqwest::header::{ACCEPT, HeaderMap};
use serde_json::Value;

use super::error::{FetchError, HttpFailure, InvalidResponse, MAX_ERROR_CHARS, truncate};
use super::{FetchSettings, Fetcher};

/// The client for every fetch: `settings.timeout` per request, at most 5 redirects.
pub(super) fn client(settings: &FetchSettings) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!(
            "portcullis-policy-sync/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| FetchError::Http {
            failure: HttpFailure::Client,
            detail: chain(&e),
        })
}

impl Fetcher {
    /// The `jwks_uri` of an OIDC discovery document whose `issuer` is `issuer`.
    pub(super) async fn discover(&self, issuer: &str, url: &str) -> Result<String, FetchError> {
        let (body, _) = self.get(url, "application/json").await?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| FetchError::Invalid(InvalidResponse::DiscoveryNotJson))?;
        let found = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or(FetchError::Invalid(InvalidResponse::NoIssuer))?;
        if found != issuer {
            return Err(FetchError::IssuerMismatch {
                found: truncate(found, 200),
            });
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or(FetchError::Invalid(InvalidResponse::NoJwksUri))?;
        if !(uri.starts_with("https://") || uri.starts_with("http://")) {
            return Err(FetchError::Invalid(InvalidResponse::JwksUriScheme));
        }
        Ok(uri.to_owned())
    }

    /// GETs `url`: a 2xx response's body (at most `max_body_bytes`) and headers.
    pub(super) async fn get(
        &self,
        url: &str,
        accept: &str,
    ) -> Result<(Vec<u8>, HeaderMap), FetchError> {
        let mut response = self
            .http
            .get(url)
            .header(ACCEPT, accept)
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let max = self.settings.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(FetchError::TooLarge);
        }
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len().saturating_add(chunk.len()) > max {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, headers))
    }
}

/// A request error as short text: what failed and why, without the URL (which may carry
/// credentials).
fn http_error(e: reqwest::Error) -> FetchError {
    let failure = if e.is_timeout() {
        HttpFailure::Timeout
    } else if e.is_connect() {
        HttpFailure::Connect
    } else if e.is_redirect() {
        HttpFailure::Redirects
    } else if e.is_body() || e.is_decode() {
        HttpFailure::Body
    } else {
        HttpFailure::Request
    };
    // The whole text is kept to the length recorded, as before the failure was typed.
    let kept = MAX_ERROR_CHARS.saturating_sub(failure.to_string().chars().count() + 2);
    FetchError::Http {
        failure,
        detail: truncate(&chain(&e.without_url()), kept),
    }
}

/// An error and its sources, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
