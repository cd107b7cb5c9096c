//! A small HTTP client for tests and the demo (ureq, no TLS).

use std::time::Duration;

/// An agent that returns every status as a response (no error for 4xx/5xx).
#[must_use]
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The body of a response as text (empty when unreadable).
#[must_use]
pub fn text(mut resp: ureq::http::Response<ureq::Body>) -> String {
    resp.body_mut().read_to_string().unwrap_or_default()
}
